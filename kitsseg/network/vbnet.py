"""VB-Net: a V-Net whose residual units are bottlenecks (1x1x1 to C/4, 3x3x3, 1x1x1 back to C).

Stem conv, down blocks (2x2x2 stride-2 conv, residual units), up blocks (2x2x2
transposed conv, skip concatenation, residual units), a 1x1x1 head that returns
logits. Units narrower than `bottleneck_min_channels` are plain (two 3x3x3 convs).
The published topology (the default `NetworkConfig`) has 2.01 M parameters (8.06 MB in float32).
"""
from __future__ import annotations

import torch
from torch import nn

from kitsseg.planning import NetworkConfig


NARROW_CHANNELS = 16


class _ChangeLayout(torch.autograd.Function):
    """x in memory format `forward_format`; its gradient back in `backward_format`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, forward_format: torch.memory_format, backward_format: torch.memory_format):
        ctx.backward_format = backward_format
        return x.contiguous(memory_format=forward_format)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.backward_format), None, None


class BatchNorm3d(nn.BatchNorm3d):
    """nn.BatchNorm3d that trains narrow channels_last_3d inputs on the CPU in contiguous layout.

    PyTorch's CPU batch norm backward is slow for channels_last_3d tensors under 16 channels, and the
    CPU presets run 8 channels at full resolution (torch 2.13, 2-core Xeon, batch 2 of 64^3, 8 channels,
    bfloat16: 49 ms forward + backward, 15 ms with the layout changes, values and gradients in both
    directions included). Same parameters and state dict; evaluation and other devices are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = torch.channels_last_3d
        if (self.training and x.device.type == "cpu" and x.shape[1] < NARROW_CHANNELS and not x.is_contiguous()
                and x.is_contiguous(memory_format=channels_last)):
            y = super().forward(_ChangeLayout.apply(x, torch.contiguous_format, channels_last))
            return _ChangeLayout.apply(y, channels_last, torch.contiguous_format)
        return super().forward(x)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel, stride, padding=kernel // 2 if stride == 1 else 0,
                                   bias=False),
                         BatchNorm3d(out_channels), nn.ReLU(inplace=True))


class ResidualUnit(nn.Module):
    """x -> relu(x + body(x)); the body is a bottleneck or two 3x3x3 convs."""

    def __init__(self, channels: int, bottleneck: bool):
        super().__init__()
        if bottleneck:
            mid = channels // 4
            layers = [conv_bn_relu(channels, mid, 1), conv_bn_relu(mid, mid, 3),
                      nn.Conv3d(mid, channels, 1, bias=False)]
        else:
            layers = [conv_bn_relu(channels, channels, 3), nn.Conv3d(channels, channels, 3, padding=1, bias=False)]
        self.body = nn.Sequential(*layers, BatchNorm3d(channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x).add_(x))  # in place: no third full-width tensor


def residual_stack(channels: int, count: int, config: NetworkConfig) -> nn.Sequential:
    bottleneck = channels >= config.bottleneck_min_channels
    return nn.Sequential(*[ResidualUnit(channels, bottleneck) for _ in range(count)])


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, units: int, config: NetworkConfig):
        super().__init__()
        self.down = conv_bn_relu(in_channels, out_channels, 2, stride=2)
        self.units = residual_stack(out_channels, units, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(self.down(x))


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, units: int,
                 config: NetworkConfig):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose3d(in_channels, out_channels - skip_channels, 2, 2, bias=False),
                                BatchNorm3d(out_channels - skip_channels), nn.ReLU(inplace=True))
        self.units = residual_stack(out_channels, units, config)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Upsample `x`, concatenate the deepest skip, run the units. The skip is popped from `skips`
        here so that nothing holds it once concatenated (at full resolution: 16 floats per voxel)."""
        return self.units(torch.cat([self.up(x), skips.pop()], dim=1))


class VBNet(nn.Module):
    """VB-Net built from a `NetworkConfig`; input sides must be multiples of `config.stride`."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        if len(config.down_channels) != len(config.up_channels):
            raise ValueError("down_channels and up_channels must have the same length")
        self.config = config
        self.stem = conv_bn_relu(config.in_channels, config.stem_channels, 3)
        widths = [config.stem_channels, *config.down_channels]
        self.downs = nn.ModuleList(DownBlock(widths[i], widths[i + 1], n, config)
                                   for i, n in enumerate(config.down_blocks))
        skips = widths[-2::-1]
        ins = [widths[-1], *config.up_channels[:-1]]
        self.ups = nn.ModuleList(UpBlock(i, s, o, n, config)
                                 for i, s, o, n in zip(ins, skips, config.up_channels, config.up_blocks))
        self.head = nn.Conv3d(config.up_channels[-1], config.num_classes, 1)
        levels = config.deep_supervision_levels
        if not 0 <= levels < len(config.up_channels):
            raise ValueError(f"deep_supervision_levels must be 0-{len(config.up_channels) - 1}, got {levels}")
        self.aux_heads = nn.ModuleList(nn.Conv3d(config.up_channels[-2 - i], config.num_classes, 1)
                                       for i in range(levels))  # aux_heads[i]: 1 / 2^(i+1) resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits; in training with deep supervision, [full, 1/2, 1/4, ...] resolution logits."""
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        x = features.pop()
        supervised = self.training and len(self.aux_heads) > 0
        decoded = []  # each up block's output, kept only for the aux heads
        for up in self.ups:
            x = up(x, features)
            if supervised:
                decoded.append(x)
        logits = self.head(x)
        if not supervised:
            return logits
        return [logits, *(head(f) for head, f in zip(self.aux_heads, reversed(decoded[:-1])))]


def build_network(config: NetworkConfig) -> VBNet:
    return VBNet(config)


def parameter_megabytes(network: nn.Module) -> float:
    """Size of the parameters in float32, in MB (10^6 bytes)."""
    return sum(p.numel() for p in network.parameters()) * 4 / 1e6

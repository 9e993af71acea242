import pytest
import torch

from kitsseg.network.vbnet import VBNet, parameter_megabytes
from kitsseg.planning import NetworkConfig


@pytest.mark.parametrize("num_classes", [2, 4])
def test_default_topology_is_under_9_mb(num_classes):
    network = VBNet(NetworkConfig(num_classes=num_classes))
    params = sum(p.numel() for p in network.parameters())
    assert 2.0e6 < params < 2.3e6  # the published VB-Net: about 2.17 M
    assert parameter_megabytes(network) <= 9.0


def test_residual_units_are_bottlenecks_from_64_channels():
    network = VBNet(NetworkConfig())
    deep_unit = network.downs[2].units[0]  # 128 channels
    convs = [m for m in deep_unit.body.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [tuple(c.kernel_size) for c in convs] == [(1, 1, 1), (3, 3, 3), (1, 1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(128, 32), (32, 32), (32, 128)]
    shallow = network.downs[0].units[0]  # 32 channels: plain
    assert [tuple(c.kernel_size) for c in shallow.body.modules() if isinstance(c, torch.nn.Conv3d)] == [(3, 3, 3)] * 2


@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 48, 16)])
def test_any_multiple_of_the_stride_works(shape):
    network = VBNet(NetworkConfig(num_classes=3, stem_channels=4, down_channels=(8, 16, 32, 64),
                                  up_channels=(64, 32, 16, 8), bottleneck_min_channels=16)).eval()
    with torch.no_grad():
        out = network(torch.zeros(1, 1, *shape))
    assert out.shape == (1, 3, *shape)


@pytest.mark.slow
def test_forward_backward_of_a_paper_batch_on_cpu():
    network = VBNet(NetworkConfig(num_classes=3))
    out = network(torch.randn(2, 1, 96, 96, 96))
    out.mean().backward()
    assert out.shape == (2, 3, 96, 96, 96)
    assert all(p.grad is not None for p in network.parameters())

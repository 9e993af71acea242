import pytest
import torch

from kitsseg.fingerprint import Fingerprint
from kitsseg.network.vbnet import VBNet, parameter_megabytes
from kitsseg.planning import COARSE, DEFAULT_PRESET, FINE, NetworkConfig, load_preset, plan_experiment


@pytest.mark.parametrize("labels", [{"background": 0, "kidney": 1, "tumor": 2},
                                    {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}])
def test_paper_preset_networks_have_the_exact_parameter_count(labels):
    """By hand: stem 464, down blocks 963,904, up blocks 1,049,440, head 33 per class."""
    fingerprint = Fingerprint(cases={}, median_spacing_mm=(3.0, 0.8, 0.8), median_shape=(80, 512, 512),
                              foreground_intensity={"mean": 0.0, "std": 1.0, "percentile_00_5": 0.0,
                                                    "percentile_99_5": 1.0},
                              kidney_size_mm={"median": [110.0, 80.0, 75.0], "percentile_95": [140.0, 95.0, 95.0]},
                              label_values=(0, 1, 2))
    plans = plan_experiment(fingerprint, "K", labels, load_preset(DEFAULT_PRESET))
    for stage in (COARSE, FINE):
        network = VBNet(plans.stage(stage).network)
        num_classes = plans.stage(stage).num_classes
        assert sum(p.numel() for p in network.parameters()) == 2_013_808 + 33 * num_classes
        assert parameter_megabytes(network) < 9.0  # 8.06 MB (7.68 MiB)


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


@pytest.mark.parametrize("channels", [8, 16])
def test_batch_norm_matches_torch_in_channels_last_with_gradients_in_the_input_layout(channels):
    """Narrow inputs train in contiguous layout on the CPU (a speed path): values, running statistics and
    gradients must equal nn.BatchNorm3d's, and the input's gradient must keep the input's layout."""
    from kitsseg.network.vbnet import BatchNorm3d
    torch.manual_seed(0)
    x = (torch.randn(2, channels, 6, 8, 10) * 3 + 1).contiguous(memory_format=torch.channels_last_3d)
    upstream = torch.randn(2, channels, 6, 8, 10).contiguous(memory_format=torch.channels_last_3d)
    results = []
    for norm in (torch.nn.BatchNorm3d(channels), BatchNorm3d(channels)):
        with torch.no_grad():
            norm.weight.copy_(torch.linspace(0.5, 2.0, channels))
            norm.bias.copy_(torch.linspace(-1.0, 1.0, channels))
        leaf = x.clone().requires_grad_()
        inp = leaf * 1.0  # not a leaf: its hook sees the gradient in the layout the backward produced
        input_grads = []
        inp.register_hook(input_grads.append)
        out = norm(inp)
        out.backward(upstream)
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        assert input_grads[0].is_contiguous(memory_format=torch.channels_last_3d)
        results.append((out, leaf.grad, norm.weight.grad, norm.bias.grad, norm.running_mean, norm.running_var))
    for reference, ours in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_deep_supervision_returns_half_and_quarter_resolution_logits_in_training_only():
    config = NetworkConfig(num_classes=3, stem_channels=4, down_channels=(8, 16, 32, 64),
                           up_channels=(64, 32, 16, 8), bottleneck_min_channels=16, deep_supervision_levels=2)
    network = VBNet(config)
    plain = VBNet(NetworkConfig(**{**config.__dict__, "deep_supervision_levels": 0}))
    # two 1x1x1 heads on the 16- and 32-channel up blocks: (16 + 1) * 3 + (32 + 1) * 3 parameters more
    assert sum(p.numel() for p in network.parameters()) - sum(p.numel() for p in plain.parameters()) == 150
    outputs = network.train()(torch.zeros(2, 1, 32, 48, 16))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 48, 16), (2, 3, 16, 24, 8), (2, 3, 8, 12, 4)]
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="deep_supervision_levels"):
        VBNet(NetworkConfig(**{**config.__dict__, "deep_supervision_levels": 4}))

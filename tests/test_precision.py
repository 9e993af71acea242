"""Mixed precision where the device runs it natively: the policy, and that it keeps the passes' results."""
import numpy as np
import pytest
import torch

from kitsseg import device as device_module
from kitsseg.device import autocast_dtype, native_cpu_bfloat16, precision_name
from kitsseg.errors import KitssegError
from kitsseg.inference.torch_engine import TorchEngine, for_inference
from kitsseg.network.vbnet import VBNet
from kitsseg.planning import NetworkConfig


def test_policy_per_device(monkeypatch):
    assert autocast_dtype(torch.device("cuda")) == torch.float16
    assert autocast_dtype(torch.device("cuda"), "float32") is None
    monkeypatch.setattr(device_module, "native_cpu_bfloat16", lambda: True)
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "float32") is None
    monkeypatch.setattr(device_module, "native_cpu_bfloat16", lambda: False)
    assert autocast_dtype(torch.device("cpu")) is None  # emulated bfloat16 would be slower than float32
    assert [precision_name(d) for d in (None, torch.bfloat16)] == ["float32", "mixed bfloat16"]
    with pytest.raises(KitssegError, match="precision 'half'"):
        autocast_dtype(torch.device("cpu"), "half")


def _engines_on_a_trained_like_net():
    torch.manual_seed(0)
    network = VBNet(NetworkConfig(num_classes=3, stem_channels=8, down_channels=(16, 32), down_blocks=(1, 1),
                                  up_channels=(32, 16), up_blocks=(1, 1), bottleneck_min_channels=16))
    for module in network.modules():  # running statistics away from the identity, as after training
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    network = for_inference(network.eval())
    x = np.random.default_rng(1).normal(size=(1, 1, 24, 32, 32)).astype(np.float32)
    return network, x


def test_channels_last_float32_passes_equal_the_plain_layout():
    network, x = _engines_on_a_trained_like_net()
    got = TorchEngine("cpu", "float32").ensemble([network], tta=False)(x)
    with torch.no_grad():
        plain = torch.softmax(network.to(memory_format=torch.contiguous_format)(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(got, plain, atol=1e-5)


@pytest.mark.skipif(not native_cpu_bfloat16(), reason="this CPU has no native bfloat16 (AMX or AVX512-BF16)")
def test_bfloat16_passes_stay_close_to_float32():
    network, x = _engines_on_a_trained_like_net()
    full = TorchEngine("cpu", "float32").ensemble([network], tta=False)(x)
    mixed = TorchEngine("cpu", "auto").ensemble([network], tta=False)(x)
    assert TorchEngine("cpu", "auto").precision == "mixed bfloat16"
    assert mixed.dtype == np.float32 and 0 < np.abs(mixed - full).max() < 0.05
    assert (mixed.argmax(1) == full.argmax(1)).mean() > 0.98

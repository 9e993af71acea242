"""The ONNX Runtime engine: same labels as PyTorch, mirroring and fold averaging as PyTorch does them,
export verified, and a prediction that runs with torch unimportable."""
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from kitsseg.deploy.bundle import predictor_from_bundle
from kitsseg.deploy.onnx_engine import OnnxEngine
from kitsseg.errors import KitssegError
from kitsseg.inference.torch_engine import TorchEngine
from tests.conftest import REPO


class FakeSession:
    """An ONNX Runtime session stand-in running a numpy function."""

    def __init__(self, fn):
        self.fn = fn

    def get_inputs(self):
        return [type("Input", (), {"name": "image"})()]

    def run(self, outputs, feeds):
        return [self.fn(feeds["image"])]


def test_tta_and_fold_averaging_match_the_torch_engine():
    x = np.random.default_rng(0).normal(size=(1, 1, 4, 6, 8)).astype(np.float32)
    ramp = np.arange(8, dtype=np.float32)

    def numpy_fold(scale):
        return lambda a: np.concatenate([a * scale, np.broadcast_to(ramp, a.shape) + a], 1)

    def torch_fold(scale):
        return lambda t: torch.cat([t * scale, torch.from_numpy(ramp).expand_as(t) + t], 1)
    for tta in (False, True):
        got = OnnxEngine().ensemble([FakeSession(numpy_fold(1.0)), FakeSession(numpy_fold(3.0))], tta)(x)
        expected = TorchEngine("cpu", "float32").ensemble([torch_fold(1.0), torch_fold(3.0)], tta)(x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(OnnxEngine().ensemble([FakeSession(numpy_fold(1.0))], True)(x),
                           OnnxEngine().ensemble([FakeSession(numpy_fold(1.0))], False)(x))  # mirroring matters


def test_onnx_engine_gives_the_torch_engine_labels(tiny_bundle, phantom_raw):
    for case in ("case_00000", "case_00001"):
        image = sitk.ReadImage(str(phantom_raw / "imagesTr" / f"{case}_0000.nii.gz"))
        expected = sitk.GetArrayFromImage(
            predictor_from_bundle(tiny_bundle, "torch", device="cpu", precision="float32").predict(image))
        got = sitk.GetArrayFromImage(predictor_from_bundle(tiny_bundle, "onnxruntime").predict(image))
        assert expected.any() and (got == expected).mean() >= 0.999


def test_export_refuses_a_graph_that_differs_from_pytorch(monkeypatch, tiny_bundle):
    from kitsseg.deploy import onnx_export
    from kitsseg.deploy.bundle import open_bundle
    from kitsseg.network.vbnet import VBNet

    stage = open_bundle(tiny_bundle).plans("3d_coarse", "0").stage("3d_coarse")
    network, other = VBNet(stage.network).eval(), VBNet(stage.network).eval()
    exported = onnx_export.network_to_onnx(other, stage.network.stride)  # another network's weights
    monkeypatch.setattr(onnx_export, "network_to_onnx", lambda net, stride: exported)
    monkeypatch.setattr(onnx_export, "verification_shapes", lambda s: [(16, 32, 48)])
    with pytest.raises(KitssegError, match="the ONNX export differs from PyTorch"):
        onnx_export.export_verified(network, stage, "checkpoint")


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from kitsseg.cli import predict_main
code = predict_main(sys.argv[1:])
assert not any(name == "torch" or name.startswith("torch.") for name, m in sys.modules.items() if m is not None)
sys.exit(code)
"""


def test_onnx_prediction_runs_without_torch(tiny_bundle, phantom_raw, tmp_path):
    image = phantom_raw / "imagesTr" / "case_00002_0000.nii.gz"
    result = subprocess.run([sys.executable, "-c", NO_TORCH, "-i", str(image), "-o", str(tmp_path / "onnx"),
                             "-m", str(tiny_bundle), "--engine", "onnxruntime", "--quiet"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "onnx" / "case_00002.nii.gz")))
    expected = sitk.GetArrayFromImage(predictor_from_bundle(tiny_bundle, "torch", device="cpu",
                                                            precision="float32").predict(sitk.ReadImage(str(image))))
    assert np.array_equal(got, expected)
    blocked = subprocess.run([sys.executable, "-c", NO_TORCH, "-i", str(image), "-o", str(tmp_path / "torch"),
                              "-m", str(tiny_bundle), "--engine", "torch", "--quiet"],
                             capture_output=True, text=True, cwd=REPO)
    assert blocked.returncode == 1 and "--engine torch needs PyTorch" in blocked.stderr  # the block works

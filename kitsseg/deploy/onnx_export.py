"""A VB-Net as ONNX (needs torch): dynamic spatial axes, verified against PyTorch at export.

Opset 17 is run by every ONNX Runtime CPU release since 1.13 (2022). Batch norms are folded
into the convolutions before export, as the PyTorch engine runs them. Exported with
torch's TorchScript-based exporter, which needs the onnx package; verified with ONNX Runtime
(both in the `export` extra).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from kitsseg.deploy.onnx_engine import OnnxEngine
from kitsseg.errors import KitssegError
from kitsseg.planning import StagePlan

OPSET = 17
INPUT, OUTPUT = "image", "logits"
SPATIAL = {2: "z", 3: "y", 4: "x"}
# largest allowed |ONNX - PyTorch| logit difference, relative to the largest logit (at least 1)
TOLERANCE = 1e-3


def network_to_onnx(network: nn.Module, stride: int) -> bytes:
    """The ONNX bytes of an eval-mode network taking (1, 1, z, y, x) inputs, sides multiples of `stride`."""
    example = torch.zeros(1, 1, 2 * stride, 2 * stride, 2 * stride)
    buffer = io.BytesIO()
    try:
        import onnx  # noqa: F401 (the exporter needs it)
    except ImportError:
        raise KitssegError("kits_export needs the onnx package: pip install 'kitsseg[export]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(network, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: SPATIAL, OUTPUT: SPATIAL})
    return buffer.getvalue()


def verification_shapes(stage: StagePlan) -> list[tuple[int, ...]]:
    """The patch, and a non-cubic shape (so a wrongly fixed axis shows)."""
    s = stage.network.stride
    return [tuple(stage.patch_size), (2 * s, 3 * s, 4 * s)]


@torch.no_grad()
def largest_logit_difference(network: nn.Module, model: bytes, shapes, seed: int = 0) -> tuple[float, float]:
    """(largest |ONNX Runtime - PyTorch| logit, largest |logit|) over random normal inputs of `shapes`."""
    session, rng = OnnxEngine().session(model, "exported network"), np.random.default_rng(seed)
    difference = scale = 0.0
    for shape in shapes:
        x = rng.standard_normal((1, 1, *shape)).astype(np.float32)
        expected = network(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT: x})[0]
        difference = max(difference, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    return difference, scale


def export_verified(network: nn.Module, stage: StagePlan, source: str) -> tuple[bytes, float]:
    """ONNX bytes of a (folded, eval-mode) network and its largest logit difference to PyTorch;
    an error when the difference exceeds `TOLERANCE`."""
    model = network_to_onnx(network, stage.network.stride)
    difference, scale = largest_logit_difference(network, model, verification_shapes(stage))
    if difference > TOLERANCE * max(1.0, scale):
        raise KitssegError(f"{source}: the ONNX export differs from PyTorch by {difference:.3g} "
                           f"(largest logit {scale:.3g})")
    return model, difference

"""The ONNX Runtime engine (CPU): each stage's networks as ONNX graphs, run without torch.

Softmax, fold averaging and test-time mirroring happen in numpy, as the PyTorch engine
does them in torch (`kitsseg.inference.engine`). The CPU memory arena is off: a pass's
buffers go back when it ends instead of staying with the process for the next stage.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kitsseg.errors import KitssegError
from kitsseg.inference.engine import ArrayFn, mirrorings, softmax


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise KitssegError("--engine onnxruntime needs ONNX Runtime: pip install 'kitsseg[deploy]'") from None
    return onnxruntime


class OnnxEngine:
    """Runs `onnxruntime.InferenceSession`s from (1, 1, z, y, x) float32 arrays to logits."""

    name, precision = "onnxruntime", "float32"

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def session(self, model: bytes, source: str):
        """An inference session on the CPU provider for an ONNX model's bytes; one line when it cannot load."""
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False  # input shapes vary from pass to pass
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for invalid or too new graphs
            raise KitssegError(f"{source}: ONNX Runtime {ort.__version__} cannot load it "
                               f"({str(exc).strip().splitlines()[0][:200]})") from None

    def free_device_bytes(self) -> int | None:
        return None

    def ensemble(self, models: Sequence, tta: bool) -> ArrayFn:
        flips = mirrorings(tta)

        def run(batch: np.ndarray) -> np.ndarray:
            total = None
            for session in models:
                name = session.get_inputs()[0].name
                for axes in flips:
                    x = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
                    probabilities = softmax(session.run(None, {name: x})[0])
                    if axes:
                        probabilities = np.flip(probabilities, axes)
                    total = probabilities.copy() if total is None else np.add(total, probabilities, out=total)
            total /= len(models) * len(flips)
            return total
        return run

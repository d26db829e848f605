"""`model.onnx` of an export: the backbone and the head as one graph (input `images` N x 3 x S x S, outputs
`outputs` and `logits`), written atomically only after onnxruntime has reproduced PyTorch's outputs on a batch.
onnx, onnxruntime and onnxscript (torch's exporter) are the optional extra `.[onnx]`."""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import torch

from shard_tools.errors import UserError
from shard_tools.layout import atomic_path

PACKAGES = ("onnx", "onnxruntime", "onnxscript")
TOLERANCE = 1e-3   # largest |onnxruntime - PyTorch| accepted, on the head's outputs and on the logits
CHECK_BATCH = 4


class OnnxError(UserError, RuntimeError):
    """ONNX export that cannot run or does not reproduce the model."""


def check_available():
    """Refuses --onnx, before anything is written, when its packages are not installed."""
    missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise OnnxError(f"--onnx needs the {', '.join(missing)} package(s): pip install -e '.[onnx]' "
                        f"(or pip install {' '.join(PACKAGES)}), or export without --onnx")


class BackboneAndHead(torch.nn.Module):
    """GZ2Model's forward, also returning the logits the head was applied to."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        logits = self.model.backbone(images).float()
        return self.model.head(logits), logits


def largest_difference(path: Path, module: torch.nn.Module, images: torch.Tensor) -> float:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["outputs", "logits"], {"images": images.numpy()})
    with torch.no_grad():
        want = module(images)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))


def export_onnx(model: torch.nn.Module, path: Path, image_size: int, seed: int = 0) -> float:
    """Writes `path` (the model in eval mode on the CPU, float32) and returns the largest difference from
    PyTorch on a random batch; OnnxError, and no file, if it exceeds TOLERANCE or the export fails."""
    module = BackboneAndHead(model).eval()
    images = torch.randn(CHECK_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines are not ours to print
                torch.onnx.export(module, (images[:2],), str(tmp), input_names=["images"], output_names=["outputs", "logits"],
                                  dynamo=True, external_data=False, dynamic_shapes=({0: batch},))
        except Exception as exc:  # noqa: BLE001 - torch.export and onnxscript raise many kinds
            raise OnnxError(f"{path}: torch.onnx.export failed for this model ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); export without --onnx") from None
        worst = largest_difference(tmp, module, images)
        if not worst <= TOLERANCE:
            raise OnnxError(f"{path}: onnxruntime differs from PyTorch by {worst:.2e} (more than {TOLERANCE:g}) on a "
                            f"batch of {CHECK_BATCH}; not written. Export without --onnx")
    return worst

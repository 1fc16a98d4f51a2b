"""The window encoder as an ONNX model, tied to the weights and settings it was exported with.

The exported graph is what every runtime runs (:mod:`.runtimes`): a batch of windows in, as RGB pixels 0..255
(``windows``, ``(B, 3, S, S)``, float32 or float16, B dynamic; the input normalisation is folded into the patch
embedding), and two outputs: ``pooled`` ``(B, D)``, the unchanged CLIP image embedding (what naming crops are
scored with), and ``patches`` ``(B, S/p, S/p, D)``, the dense method's per-patch features, neither normalised.

Everything is inside the graph, SC-CLIP's local outlier factor included (matmul, TopK and a sorted quantile). Every
block's attention is written as matmul and softmax, never a fused attention operator, and in an fp16 export the
softmax runs in fp32 and LayerNorm casts to fp32 (open_clip's fp16 LayerNorm) - TensorRT has computed wrong results
for exported fused attention (NVIDIA/TensorRT #4333, #4328) and fp16 LayerNorm overflows (#2564, #2709).

The ONNX metadata (``clipomaly.*``) records the model, a hash of the visual weights, the dense method, the window,
the patch and the pixel convention; :func:`check_exported_graph` refuses an engine whose record does not match.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .backend import ModelLoadError
from .dense import DenseVisionEncoder

LOG = logging.getLogger(__name__)

OPSET = 18
PIXELS = "RGB, 0..255 per channel as float, (B, 3, S, S), normalisation inside the model"
FORMAT = "1"
ONNX_EXTRA_HINT = "pip install 'clipomaly_ros[onnx]' (on a GPU machine also onnxruntime-gpu)"


@dataclass(frozen=True)
class ExportedGraph:
    """What an exported window encoder was made from (recorded in its ONNX metadata); a graph runs only where all of
    it matches the configuration."""

    model: str
    weights: str
    """sha256 (first 16 hex digits) of the visual tower's weights cast to fp16, so fp32 and fp16 loads agree."""
    dense_method: str
    window: int
    patch: int
    pixels: str = PIXELS
    format: str = FORMAT

    def metadata(self) -> dict[str, str]:
        return {f"clipomaly.{key}": str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "ExportedGraph | None":
        """The spec an ONNX model's metadata records, or None when it has no clipomaly record."""
        values = {f.name: metadata.get(f"clipomaly.{f.name}") for f in fields(cls)}
        if any(value is None for value in values.values()):
            return None
        return cls(**{**values, "window": int(values["window"]), "patch": int(values["patch"])})


def weights_digest(module: nn.Module) -> str:
    """sha256 (16 hex digits) of ``module``'s parameters and buffers in name order, each cast to fp16."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_graph(model_name: str, encoder: DenseVisionEncoder, window: int) -> ExportedGraph:
    """The spec of ``encoder`` (its method and weights) at ``window`` pixels."""
    return ExportedGraph(model_name, weights_digest(encoder.visual), encoder.method, window, encoder.patch_size[0])


def check_exported_graph(path: Path, recorded: ExportedGraph | None, expected: ExportedGraph) -> None:
    """Raise :class:`ModelLoadError` with a one-line reason unless ``recorded`` (an engine's metadata) is
    ``expected`` (the configuration's)."""
    if recorded is None:
        raise ModelLoadError(f"engine {path} has no clipomaly metadata: write it with 'clipomaly export'")
    wrong = [f"{f.name} {getattr(recorded, f.name)!r} (configured: {getattr(expected, f.name)!r})"
             for f in fields(ExportedGraph) if getattr(recorded, f.name) != getattr(expected, f.name)]
    if wrong:
        raise ModelLoadError(f"engine {path} does not match the configuration: it was exported with "
                             f"{'; '.join(wrong)}. Export it again with 'clipomaly export' for this configuration, "
                             "or clear 'onnx_model' to have it exported on start")


class WindowEncoder(nn.Module):
    """The exported graph: windows of pixels in, ``(pooled, patches)`` out (see the module's docstring)."""

    def __init__(self, encoder: DenseVisionEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.forward_pixels(windows, clip_embedding=True)


def require_export_packages() -> None:
    """Raise :class:`ModelLoadError` naming the missing package unless ``onnx`` and ``onnxscript`` (what
    ``torch.onnx.export`` needs) are installed."""
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise ModelLoadError(f"exporting ONNX needs the '{module}' package: {ONNX_EXTRA_HINT}") from None


def export_onnx(encoder: DenseVisionEncoder, spec: ExportedGraph, path: str | Path, max_batch: int = 1024) -> Path:
    """Write ``encoder`` (already told its pixel normalisation) as ONNX to ``path`` with ``spec`` in its metadata.

    The graph is traced in the encoder's own dtype (fp16 weights give an fp16 engine) on its device, with the
    attention written out; the encoder is left as it was. Needs ``onnx`` and ``onnxscript`` (the ``[onnx]``
    extra)."""
    require_export_packages()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype, device = encoder.weight.dtype, encoder.weight.device
    windows = torch.rand(2, 3, spec.window, spec.window, device=device, dtype=dtype) * 255
    explicit = encoder.explicit_attention
    encoder.explicit_attention = True
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                WindowEncoder(encoder).eval(), (windows,), dynamo=True, opset_version=OPSET, verbose=False,
                input_names=["windows"], output_names=["pooled", "patches"],
                dynamic_shapes={"windows": {0: torch.export.Dim("batch", min=1, max=max_batch)}})
    finally:
        encoder.explicit_attention = explicit
    program.model.metadata_props.update(spec.metadata())
    temporary = path.with_suffix(".partial")
    program.save(str(temporary))
    temporary.replace(path)  # a crash mid-write never leaves a half engine under the real name
    LOG.info("exported %s (%s, %s, window %d) to %s", spec.model, spec.dense_method, dtype, spec.window, path)
    return path


__all__ = ["require_export_packages", "ExportedGraph", "weights_digest", "describe_graph", "check_exported_graph",
           "export_onnx", "WindowEncoder", "OPSET"]

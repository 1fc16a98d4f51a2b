"""``clipomaly export``: the dense image encoder, or the RAM++ tagger, as ONNX, checked against eager PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="write the dense image encoder as ONNX (for runtime: onnx, TensorRT or a Jetson)",
        description="Writes the configured dense method's window encoder (windows of RGB pixels in; CLIP's pooled "
                    "embedding and the per-patch features out; batch size dynamic; opset 18; attention as matmul "
                    "and softmax) with metadata that ties it to the model, its weights, the dense method and the "
                    "window. An fp32 export is checked against eager PyTorch with ONNX Runtime when installed.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision of the weights and the input (fp16 for TensorRT on a GPU; LayerNorm and "
                             "softmax stay fp32 inside)")
    parser.add_argument("--tagger", action="store_true",
                        help="write the RAM++ tagger of --tagger-weights instead (normalised 384 x 384 images and "
                             "open-set name embeddings in, tag probabilities out; checked against eager PyTorch)")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ...core.model.export import describe_graph, export_onnx
    from ...core.model.open_clip_backend import OpenClipBackend

    if args.tagger:
        return run_tagger(args)
    config = config_from_args(args, runtime="torch")  # the export itself traces the eager graph
    if config.backend != "open_clip":
        raise ValueError("export needs the open_clip backend (--backend open_clip): the toy backend has no network")
    backend = OpenClipBackend(config, precision=args.dtype)
    spec = describe_graph(config.model, backend.encoder, backend.window)
    path = export_onnx(backend.encoder, spec, args.output)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB): {spec.model}, weights {spec.weights}, dense method "
          f"{spec.dense_method}, window {spec.window}, {args.dtype}. Run it with runtime: onnx, onnx_model: {path}")
    if args.dtype == "fp32":
        from ...core.model.runtimes import OnnxGraphRuntime

        if not onnxruntime_installed():
            return 0
        engine = OnnxGraphRuntime(path, spec, torch.device("cpu"), config.cache_path)
        windows = torch.rand(2, 3, spec.window, spec.window, generator=torch.Generator().manual_seed(0)) * 255
        with torch.inference_mode():
            eager = backend.encoder.forward_pixels(windows.to(backend.device))[1].float().cpu()
        cosine = torch.nn.functional.cosine_similarity(engine.dense(windows), eager, dim=-1).min()
        print(f"check: ONNX Runtime (CPU) against eager PyTorch on 2 random windows, per-patch cosine >= "
              f"{float(cosine):.6f}")
    return 0


def run_tagger(args: argparse.Namespace) -> int:
    """``clipomaly export --tagger``: the RAM++ tagger as ONNX, checked against eager PyTorch on the CPU."""
    import torch

    from ...core.model.tagger import OnnxTagger, export_tagger, load_tagger, tagger_digest

    if not args.tagger_weights:
        raise ValueError("export --tagger needs --tagger-weights (the RAM++ checkpoint)")
    if args.dtype != "fp32":
        raise ValueError("export --tagger writes fp32 only (ONNX Runtime's GPU provider runs it as it is)")
    model = load_tagger(args.tagger_weights)
    path = export_tagger(model, args.output)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB): RAM++ with {len(model.tags.names)} tags, weights "
          f"{tagger_digest(model)}. Run it with runtime: onnx, tagger_onnx_model: {path}")
    if not onnxruntime_installed():
        return 0
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size, generator=generator)
    open_set = torch.nn.functional.normalize(torch.randn(1, model.architecture.width, generator=generator), dim=-1)
    with torch.inference_mode():
        eager = model.probabilities(images, open_set)
    worst = float((OnnxTagger(path, model, torch.device("cpu"))(images, open_set) - eager).abs().max())
    print(f"check: ONNX Runtime (CPU) against eager PyTorch on 2 random inputs, max |dp| {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


def onnxruntime_installed() -> bool:
    """Whether ONNX Runtime can be imported; when not, says that the export is not checked."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        print("not checked against eager PyTorch: onnxruntime is not installed")
        return False
    return True

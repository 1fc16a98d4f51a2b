"""How the window encoder runs: eager PyTorch, ``torch.compile`` or an exported ONNX model (setting ``runtime``).

Every runtime takes windows as RGB pixels 0..255 ``(B, 3, S, S)`` on the backend's device and answers the two
questions the pipeline asks: :meth:`WindowRuntime.dense` (the dense method's per-patch features ``(B, S/p, S/p,
D)``) and :meth:`WindowRuntime.embed` (CLIP's image embedding ``(B, D)`` of whole crops). Neither output is
normalised. They all run the same graph (:class:`.dense.DenseVisionEncoder`), so they agree up to float rounding.

======== =======================================================================================================
torch    eager PyTorch, the encoder for the dense pass and the unchanged network for crops
compile  ``torch.compile`` of the same two; on CUDA with CUDA graphs. The batch axis is compiled as dynamic and
         batches are padded to a power of two, so a new number of cameras or regions records one more CUDA graph
         instead of compiling again; :meth:`warm_up` runs the expected sizes at start, so the first frame is not
         slow
onnx     ONNX Runtime on an exported model (:mod:`.export`): TensorRT (strongly typed, engines cached), then CUDA,
         then CPU, whichever the installed build has; one graph answers both questions
======== =======================================================================================================
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch

from .backend import ModelLoadError
from .dense import DenseVisionEncoder
from .export import ONNX_EXTRA_HINT, ExportedGraph, check_exported_graph, export_onnx

LOG = logging.getLogger(__name__)


class WindowRuntime(Protocol):
    name: str
    description: str

    def dense(self, windows: torch.Tensor) -> torch.Tensor:
        """Per-patch features ``(B, S/p, S/p, D)`` of windows ``(B, 3, S, S)`` (pixels 0..255)."""

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """CLIP's image embeddings ``(B, D)`` of crops ``(B, 3, S, S)`` (pixels 0..255)."""

    def warm_up(self, dense_batches: Iterable[int], crop_batches: Iterable[int], window: int, crop: int) -> None:
        """Run (and so compile or build) the batch sizes expected: windows of ``window`` pixels, crops of
        ``crop``."""

    def health(self) -> dict[str, str | int]:
        """What the runtime has had to give up on so far, for ``/diagnostics`` (empty when nothing)."""

    def close(self) -> None:
        """Release what the runtime holds beside the model (compiled graphs, sessions)."""


class EagerRuntime:
    """Eager PyTorch (``runtime: torch``)."""

    name = "torch"

    def __init__(self, encoder: DenseVisionEncoder, image_encoder: DenseVisionEncoder):
        self.encoder, self.image_encoder = encoder, image_encoder
        self.description = "eager PyTorch"

    def dense(self, windows: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_pixels(windows)[1]

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.forward_pixels(crops)[0]

    def warm_up(self, dense_batches: Iterable[int], crop_batches: Iterable[int], window: int, crop: int) -> None:
        pass

    def health(self) -> dict[str, str | int]:
        return {}

    def close(self) -> None:
        pass


def bucket(count: int) -> int:
    """The batch size ``count`` windows are padded to: the next power of two."""
    return 1 << max(0, count - 1).bit_length()


MIN_TORCH_FOR_COMPILE = "2.7"
"""The first torch release with dynamo's ``recompile_limit`` and ``FailOnRecompileLimitHit`` (renamed from the
cache-size limit in 2.7), which :class:`CompiledRuntime` sets and catches."""


def compile_features_missing() -> str:
    """Why ``runtime: compile`` cannot run with this torch (one line naming the version to install), or ""."""
    dynamo = getattr(torch, "_dynamo", None)
    config, exc = getattr(dynamo, "config", None), getattr(dynamo, "exc", None)
    if (hasattr(config, "recompile_limit") and hasattr(config, "fail_on_recompile_limit_hit")
            and hasattr(exc, "FailOnRecompileLimitHit")):
        return ""
    return (f"runtime 'compile' needs torch {MIN_TORCH_FOR_COMPILE} or newer (its recompile limit and "
            f"FailOnRecompileLimitHit); this is torch {torch.__version__}: install torch>={MIN_TORCH_FOR_COMPILE}, "
            "or set runtime to torch")


class CompiledRuntime:
    """``torch.compile`` of the eager graphs (``runtime: compile``): CUDA graphs on a GPU (mode
    ``reduce-overhead``), a dynamic batch axis, batches padded to :func:`bucket` sizes (a CUDA graph is recorded
    per bucket)."""

    name = "compile"
    CUDA_GRAPH_WARM_UP_RUNS = 2
    """Calls per batch size under CUDA graph trees: the first runs eagerly (warm-up), the second records."""

    def __init__(self, encoder: DenseVisionEncoder, image_encoder: DenseVisionEncoder, device: torch.device):
        missing = compile_features_missing()
        if missing:
            raise ModelLoadError(missing)
        self.encoder = encoder
        self.cuda_graphs = device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self._eager = EagerRuntime(encoder, image_encoder)
        self._dense = torch.compile(self._eager.dense, mode=mode)
        self._embed = torch.compile(self._eager.embed, mode=mode)
        self.description = "torch.compile" + (" with CUDA graphs" if self.cuda_graphs else " (inductor, CPU)")
        # every bucket of both graphs may be compiled once; dynamo's default limit of 8 would fall back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        # past the limit dynamo would run eager without a word: raise instead, so that it is counted and reported
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        self.ran_eager = 0
        """Batches run eagerly because dynamo's recompile limit was hit (reported in ``/diagnostics``)."""
        self.last_eager_reason = ""

    def health(self) -> dict[str, str | int]:
        if not self.ran_eager:
            return {}
        return {"batches run eager (recompile limit hit)": self.ran_eager, "last recompile": self.last_eager_reason}

    def close(self) -> None:
        """Drop the compiled graphs: dynamo's caches hold the model's weights until reset (process-wide)."""
        self._dense = self._embed = None
        torch._dynamo.reset()

    def _padded(self, compiled, batch: torch.Tensor) -> torch.Tensor:
        count = batch.shape[0]
        size = bucket(count)
        if size != count:
            batch = torch.cat([batch, batch.new_zeros(size - count, *batch.shape[1:])])
        if size > 1:  # one graph for every batch size above 1 (size 1 is always specialised): compiled twice, not
            torch._dynamo.mark_dynamic(batch, 0)  # once per bucket; CUDA graphs are still recorded per bucket
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # a CUDA graph's output is overwritten by its next replay: keep a copy of the rows asked for
        return compiled(batch)[:count].clone()

    def _run(self, compiled, eager, batch: torch.Tensor) -> torch.Tensor:
        try:
            return self._padded(compiled, batch)
        except torch._dynamo.exc.FailOnRecompileLimitHit as error:
            self.ran_eager += 1
            self.last_eager_reason = f"{tuple(batch.shape)}: {str(error).splitlines()[0][:160]}"
            if self.ran_eager == 1:
                LOG.error("torch.compile hit its recompile limit on a batch of shape %s: it runs eagerly (slower) "
                          "and /diagnostics counts it; warm up with the cameras and sizes you run", tuple(batch.shape))
            return eager(batch)

    def dense(self, windows: torch.Tensor) -> torch.Tensor:
        return self._run(self._dense, self._eager.dense, windows)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self._run(self._embed, self._eager.embed, crops)

    def warm_up(self, dense_batches: Iterable[int], crop_batches: Iterable[int], window: int, crop: int) -> None:
        """Each bucket of each graph run on this thread: once on a CPU (compiled), twice with CUDA graphs, whose
        first call at a size is an eager warm-up run and whose second records the graph (otherwise the first
        served frame would record it)."""
        device = self.encoder.weight.device
        runs = self.CUDA_GRAPH_WARM_UP_RUNS if self.cuda_graphs else 1
        for run, sizes, side in ((self.dense, dense_batches, window), (self.embed, crop_batches, crop)):
            for size in sorted({bucket(n) for n in sizes if n > 0}):
                for _ in range(runs):
                    run(torch.zeros(size, 3, side, side, device=device))


def onnx_unavailable(device: str) -> str:
    """Why ``runtime: onnx`` cannot run on ``device`` here (ONNX Runtime or the exporter missing, or no GPU provider
    for a CUDA device), or "" when it can."""
    import importlib.util

    if any(importlib.util.find_spec(module) is None for module in ("onnxruntime", "onnx", "onnxscript")):
        return "onnxruntime, onnx or onnxscript is not installed here"
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if str(device).startswith("cuda") and not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(providers):
        return f"this onnxruntime has no GPU provider (only {', '.join(providers)}): install onnxruntime-gpu"
    return ""


def import_onnxruntime():
    """``onnxruntime``, or a one-line :class:`ModelLoadError` naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(f"runtime 'onnx' needs ONNX Runtime, which is not installed: {ONNX_EXTRA_HINT}; or "
                             "set runtime to torch") from None
    return onnxruntime


def tensorrt_cache_dir(cache_dir: Path, engine: Path) -> Path:
    """Where TensorRT engines built from ``engine`` are cached: keyed by GPU, TensorRT version and ONNX hash (an
    engine is valid for one GPU model and one TensorRT version only)."""
    digest = hashlib.sha256()
    with open(engine, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    try:
        import tensorrt

        version = f"trt{tensorrt.__version__}"
    except ImportError:
        import onnxruntime

        version = f"ort{onnxruntime.__version__}"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "nogpu"
    key = "-".join(part.replace(" ", "_").replace("/", "_") for part in (gpu, version, digest.hexdigest()[:16]))
    return cache_dir / "tensorrt" / key


CUDA_PROVIDER_OPTIONS: dict[str, object] = {}
"""Options added to ONNX Runtime's CUDA provider in this process, like torch's TF32 flags a process-wide choice:
the GPU check sets ``use_tf32`` to 0 so that its fp32 rows compute in fp32 (the provider's default allows TF32)."""


def choose_providers(available: list[str], device: torch.device, trt_cache: Path | None, max_batch: int,
                     side: int) -> list:
    """ONNX Runtime's providers in order of preference, TensorRT, CUDA, CPU, among ``available``; on a CPU device
    the CPU only."""
    chosen: list = []
    if device.type == "cuda":
        device_id = device.index or 0
        if "TensorrtExecutionProvider" in available and trt_cache is not None:
            trt_cache.mkdir(parents=True, exist_ok=True)
            chosen.append(("TensorrtExecutionProvider", {
                # Strongly typed: with its fp16 flag off, ONNX Runtime's TensorRT provider builds a strongly typed
                # network (TensorRT 10 and later; onnxruntime#18707), so every layer runs in the type the export
                # gave it: an fp16 export's matmuls in fp16, its LayerNorm and softmax in fp32. The weakly typed
                # fp16 flag lets TensorRT choose fp16 for LayerNormalization, which overflows in a ViT
                # (TensorRT #2564); its layer-norm fallback only covers LayerNorm written as Pow + ReduceMean.
                "device_id": device_id, "trt_fp16_enable": False,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_cache), "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(trt_cache),
                "trt_profile_min_shapes": f"windows:1x3x{side}x{side}",
                "trt_profile_opt_shapes": f"windows:{min(max_batch, 32)}x3x{side}x{side}",  # one camera's
                "trt_profile_max_shapes": f"windows:{max_batch}x3x{side}x{side}"}))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": device_id, **CUDA_PROVIDER_OPTIONS}))
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxGraphRuntime:
    """Our adapter that runs one exported graph (:mod:`.export`) in an ONNX Runtime session (``runtime: onnx``).

    On CUDA with a GPU provider, windows and outputs stay on the GPU (I/O binding to the torch tensors); otherwise
    they pass through host memory."""

    name = "onnx"

    def __init__(self, engine: Path, expected: ExportedGraph, device: torch.device, cache_dir: Path,
                 max_batch: int = 64):
        ort = import_onnxruntime()
        self.device = device
        self.max_batch = max_batch
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused providers are not the user's business
        trt_cache = tensorrt_cache_dir(cache_dir, engine) if device.type == "cuda" else None
        self.tensorrt_cache = trt_cache
        """Where TensorRT's engines for this graph are cached (None off CUDA)."""
        providers = choose_providers(ort.get_available_providers(), device, trt_cache, max_batch, expected.window)
        try:
            self.session = ort.InferenceSession(str(engine), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise ModelLoadError(f"engine {engine} could not be loaded by ONNX Runtime "
                                 f"({str(error).splitlines()[0][:200]}): export it again with 'clipomaly "
                                 "export'") from None
        recorded = ExportedGraph.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        check_exported_graph(engine, recorded, expected)
        self.patch = expected.patch
        self.side = expected.window
        self.engine_name = engine.name
        self.depth = int(self.session.get_outputs()[0].shape[1])
        self.providers = self.session.get_providers()
        self.input_dtype = torch.float16 if "float16" in self.session.get_inputs()[0].type else torch.float32
        self.on_gpu = device.type == "cuda" and self.providers[0] != "CPUExecutionProvider"
        self.description = f"ONNX Runtime {ort.__version__} ({self.providers[0]}) on {engine.name}"

    def _run(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if windows.shape[0] > self.max_batch:  # beyond the TensorRT profile: in parts
            parts = [self._run(part) for part in windows.split(self.max_batch)]
            return torch.cat([pooled for pooled, _ in parts]), torch.cat([patches for _, patches in parts])
        windows = windows.to(self.input_dtype).contiguous()
        if not self.on_gpu:
            pooled, patches = self.session.run(["pooled", "patches"], {"windows": windows.cpu().numpy()})
            return torch.from_numpy(pooled).to(self.device), torch.from_numpy(patches).to(self.device)
        return self._run_bound(windows)

    def _run_bound(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, grid = windows.shape[0], windows.shape[-1] // self.patch
        pooled = torch.empty(batch, self.depth, device=self.device, dtype=self.input_dtype)
        patches = torch.empty(batch, grid, grid, self.depth, device=self.device, dtype=self.input_dtype)
        element = np.float16 if self.input_dtype == torch.float16 else np.float32
        binding = self.session.io_binding()
        device_id = self.device.index or 0
        binding.bind_input("windows", "cuda", device_id, element, tuple(windows.shape), windows.data_ptr())
        binding.bind_output("pooled", "cuda", device_id, element, tuple(pooled.shape), pooled.data_ptr())
        binding.bind_output("patches", "cuda", device_id, element, tuple(patches.shape), patches.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # the windows are written before ONNX Runtime reads
        self.session.run_with_iobinding(binding)
        return pooled, patches

    def dense(self, windows: torch.Tensor) -> torch.Tensor:
        return self._run(windows)[1]

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self._run(crops)[0]

    def warm_up(self, dense_batches: Iterable[int], crop_batches: Iterable[int], window: int, crop: int) -> None:
        for size in sorted({min(n, self.max_batch) for n in (*dense_batches, *crop_batches) if n > 0}):
            self._run(torch.zeros(size, 3, self.side, self.side, device=self.device))

    def health(self) -> dict[str, str | int]:
        return {}

    def close(self) -> None:
        self.session = None


class OnnxGraphPair:
    """``runtime: onnx`` as the backend runs it: the dense graph for windows, and CLIP's own image encoder exported
    at its native size for the naming crops, so a crop is scored at the size eager PyTorch scores it (one graph
    for both would resize every crop to the window)."""

    name = "onnx"

    def __init__(self, windows: OnnxGraphRuntime, crops: OnnxGraphRuntime):
        self.windows, self.crops = windows, crops
        self.description = windows.description + f", crops on {crops.engine_name}"

    def dense(self, windows: torch.Tensor) -> torch.Tensor:
        return self.windows.dense(windows)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.crops.embed(crops)

    def warm_up(self, dense_batches: Iterable[int], crop_batches: Iterable[int], window: int, crop: int) -> None:
        self.windows.warm_up(dense_batches, (), window, crop)
        self.crops.warm_up((), crop_batches, window, crop)

    def health(self) -> dict[str, str | int]:
        return {}

    def close(self) -> None:
        self.windows.close()
        self.crops.close()


def default_export_path(cache_dir: Path, spec: ExportedGraph, dtype: torch.dtype) -> Path:
    """Where ``runtime: onnx`` with an empty ``onnx_model`` keeps the model it exported."""
    precision = "fp16" if dtype == torch.float16 else "fp32"
    name = f"{spec.model.replace('/', '_').replace(':', '_')}-{spec.dense_method}-w{spec.window}-{spec.weights}"
    return cache_dir / "engines" / f"{name}-{precision}.onnx"


def create_runtime(name: str, encoder: DenseVisionEncoder, image_encoder: DenseVisionEncoder,
                   device: torch.device, spec_of=None, onnx_model: str = "", cache_dir: Path | None = None,
                   max_batch: int = 64, crop_spec_of=None) -> WindowRuntime:
    """The runtime called ``name``. For ``onnx``: ``spec_of()`` gives the configuration's
    :class:`~.export.ExportedGraph`; ``onnx_model`` is the ONNX file, or empty to export one into ``cache_dir/engines``
    (once; later starts reuse it). ``crop_spec_of()``, when given, is the spec of ``image_encoder`` at the crops'
    size: the crops then run on a second graph, exported into ``cache_dir/engines`` once (:class:`OnnxGraphPair`)."""
    if name == "torch":
        return EagerRuntime(encoder, image_encoder)
    if name == "compile":
        return CompiledRuntime(encoder, image_encoder, device)
    if name != "onnx":
        raise ValueError(f"unknown runtime {name!r}")
    import_onnxruntime()  # the one-line error before any export work
    spec = spec_of()
    if onnx_model:
        path = Path(onnx_model).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"engine {path} does not exist: write it with 'clipomaly export -o {path}', or "
                                 "clear 'onnx_model' to have one exported on start")
    else:
        path = cached_export(encoder, spec, cache_dir, "the window encoder")
    windows = OnnxGraphRuntime(path, spec, device, cache_dir, max_batch)
    if crop_spec_of is None:
        return windows
    crop_spec = crop_spec_of()
    crops = OnnxGraphRuntime(cached_export(image_encoder, crop_spec, cache_dir, "the crop encoder"), crop_spec, device,
                        cache_dir, max_batch)
    return OnnxGraphPair(windows, crops)


def cached_export(encoder: DenseVisionEncoder, spec: ExportedGraph, cache_dir: Path, what: str) -> Path:
    """``encoder`` exported under ``cache_dir/engines`` (:func:`default_export_path`), once."""
    path = default_export_path(cache_dir, spec, encoder.weight.dtype)
    if not path.is_file():
        LOG.warning("exporting %s to %s (once; later starts reuse it)", what, path)
        export_onnx(encoder, spec, path)
    return path


__all__ = ["WindowRuntime", "EagerRuntime", "CompiledRuntime", "OnnxGraphRuntime", "OnnxGraphPair", "create_runtime",
           "bucket", "choose_providers", "tensorrt_cache_dir", "import_onnxruntime", "onnx_unavailable",
           "compile_features_missing", "MIN_TORCH_FOR_COMPILE"]

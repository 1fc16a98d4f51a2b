"""The real backend: an open_clip CLIP model with training-free dense features (:mod:`.dense`).

Weights come from an open_clip pretrained tag, a local checkpoint file or a ``local-dir:`` folder; CUDA and fp16
are used when present. Load errors name the setting to change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import warnings
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ClipomalyConfig
from .backend import BackboneClock, DenseFeatures, ModelLoadError, resolve_device
from .dense import (DenseVisionEncoder, LayoutCost, WindowLayout, layout_cost, native_window, plan_windows,
                    sliding_window_features)
from .export import describe_graph
from .runtimes import create_runtime
from .staging import CudaCopyEngine, PinnedStaging

LOG = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def encode_text_truncated(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed only up to the longest prompt's end-of-text token.

    CLIP's text transformer is causal and pools at the end-of-text token, so the padding after it cannot change
    the result; prompts of a few words then cost a fraction of the full 77-token context. Models without that
    structure (other pooling, no causal mask, HF text towers) take the plain path.
    """
    structured = (getattr(model, "text_pool_type", None) == "argmax" and getattr(model, "attn_mask", None) is not None
                  and hasattr(model, "token_embedding") and getattr(model.transformer, "batch_first", False))
    if not structured:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def register_bundled_models() -> None:
    """Make the package's own architecture configs (``data/model_configs``: ``clipomaly-tiny-vit``, a tiny ViT
    without pretrained weights for smoke tests and memory soaks) known to open_clip (idempotent)."""
    import open_clip

    open_clip.add_model_config(Path(str(resources.files("clipomaly_ros").joinpath("data/model_configs"))))


WEIGHTS_HINT = ("give a local weights file ({checkpoint=PATH}), or run without weights: {backend=toy} (the demo "
                "model) or {random_weights=true} (a smoke test)")


def pretrained_is_cached(model_name: str, tag: str) -> bool:
    """Whether open_clip would find the weights of ``tag`` for ``model_name`` without downloading them."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, tag)
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename or "open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
        return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def model_hub_reachable(timeout: float = 2.0) -> bool:
    """A quick look for the model hub: ``False`` at once when HF_HUB_OFFLINE is set, else a TCP connection
    attempt of at most ``timeout`` seconds (instead of a minute of download retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except Exception:  # noqa: BLE001 - DNS, refusal, timeout, a sandbox: all mean "not reachable"
        return False


def checkpoint_fingerprint(path: Path, head_bytes: int = 4 * 2**20) -> str:
    """Size, modification time and a hash of the first megabytes of a weights file: cached text embeddings
    are keyed by it, so a new file at the same path does not reuse the old file's embeddings."""
    stat = path.stat()
    with open(path, "rb") as stream:
        digest = hashlib.sha256(stream.read(head_bytes)).hexdigest()[:16]
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{digest}"


def _weights_error(model_name: str, source: str, error: Exception) -> ModelLoadError:
    text = f"{type(error).__name__}: {error}"
    if source.startswith("checkpoint"):
        if any(marker in text for marker in ("state_dict", "Missing key", "Unexpected key", "size mismatch")):
            return ModelLoadError(f"{source} holds weights for another architecture than {model_name} "
                                  f"({text.splitlines()[0][:300]}): set 'model' to the architecture the weights "
                                  "were trained with")
        return ModelLoadError(f"{source} could not be read as weights ({text.splitlines()[0][:200]}): it must be "
                              "an open_clip or PyTorch state dict (.pt, .bin) or a .safetensors file")
    return ModelLoadError(f"could not load {model_name} with {source}: {text.splitlines()[0][:300]}. "
                          f"{WEIGHTS_HINT}")


def _load_open_clip_model(config: ClipomalyConfig, device: torch.device, precision: str | None = None):
    import open_clip

    register_bundled_models()
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    model_name = config.model
    if model_name not in open_clip.list_models() and not model_name.startswith(("local-dir:", "hf-hub:")):
        raise ModelLoadError(f"model {model_name!r} is not an open_clip architecture: set 'model' to one of "
                             "open_clip.list_models() (for example ViT-B-16) or a 'local-dir:' folder")
    if model_name.startswith("local-dir:"):
        source, pretrained, load_weights = f"local-dir folder {model_name[10:]}", None, not config.random_weights
    elif config.checkpoint:
        path = Path(config.checkpoint).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint {path} does not exist: set 'checkpoint' to a local weights file "
                                 "(or leave it empty to use 'pretrained')")
        source, pretrained, load_weights = f"checkpoint {path}", str(path), True
    elif config.random_weights:
        source, pretrained, load_weights = "RANDOM WEIGHTS", None, False
    else:
        source, pretrained, load_weights = f"pretrained tag '{config.pretrained}'", config.pretrained, True
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if config.pretrained not in tags:
            raise ModelLoadError(f"open_clip has no pretrained tag {config.pretrained!r} for {model_name}; its tags: "
                                 f"{', '.join(tags) or 'none'}. Otherwise {WEIGHTS_HINT}")
        if not pretrained_is_cached(model_name, config.pretrained) and not model_hub_reachable():
            raise ModelLoadError(f"the {model_name} weights '{config.pretrained}' are not in the local cache and the "
                                 f"model hub cannot be reached (no network): {WEIGHTS_HINT}")
    if config.random_weights:
        message = (f"clipomaly: {model_name} runs with RANDOM WEIGHTS (random_weights is set). Its output means "
                   "nothing: use it for smoke tests only.")
        warnings.warn(message, stacklevel=3)
        LOG.warning(message)
        torch.manual_seed(0)  # same random model every time, so cached text embeddings stay valid
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, load_weights=load_weights,
                                       precision=precision, device=device, require_pretrained=load_weights)
    except Exception as error:  # open_clip raises many types; each means "these weights could not be had"
        raise _weights_error(model_name, source, error) from error
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, tokenizer, source


class OpenClipBackend:
    """An open_clip model with training-free dense features (see :mod:`.dense`), run by the configured runtime
    (:mod:`.runtimes`). Dense features take numpy images or uint8 tensors on the device
    (``accepts_device_images``).

    ``precision``: open_clip's weight precision; by default fp16 on CUDA and fp32 on the CPU (training asks for
    fp32 and uses autocast instead)."""

    accepts_device_images = True

    def __init__(self, config: ClipomalyConfig, precision: str | None = None):
        self.device = resolve_device(config.device)
        self.model_name = config.model
        self.model, self.tokenizer, self.weights_source = _load_open_clip_model(config, self.device, precision)
        self.dtype = next(self.model.parameters()).dtype
        self.embed_dim = int(self.model.visual.output_dim)
        self.encoder = DenseVisionEncoder(self.model.visual, config.dense_method)
        preprocess = getattr(self.model.visual, "preprocess_cfg", {})
        self.mean = torch.tensor(preprocess.get("mean", OPENAI_MEAN), device=self.device).view(3, 1, 1)
        self.std = torch.tensor(preprocess.get("std", OPENAI_STD), device=self.device).view(3, 1, 1)
        self.window = config.window_size or native_window(self.encoder)
        patch = self.encoder.patch_size[0]
        if self.window % patch:
            raise ModelLoadError(f"window_size {self.window} must be a multiple of the patch size {patch}")
        self.stride = config.stride_for(self.window)
        self.inference_size = config.working_short_side
        self.window_batch_size = config.window_batch_size
        weights = (checkpoint_fingerprint(Path(config.checkpoint).expanduser()) if config.checkpoint
                   else "random" if config.random_weights else config.pretrained)
        self.identity = f"open_clip:{config.model}:{weights}"
        self._text_lock = threading.Lock()
        self.clock = BackboneClock()
        self.encoder.normalise_pixels(self.mean, self.std)
        self.image_encoder = DenseVisionEncoder(self.model.visual, "none")  # whole-image embeddings (crops)
        self.image_encoder.normalise_pixels(self.mean, self.std)
        # naming crops at the model's native size under every runtime (onnx: on a second graph of that size)
        self.crop_size = native_window(self.encoder)
        self.runtime = create_runtime(config.runtime, self.encoder, self.image_encoder, self.device,
                                      spec_of=lambda: describe_graph(config.model, self.encoder, self.window),
                                      onnx_model=config.onnx_model, cache_dir=config.cache_path,
                                      max_batch=config.window_batch_size or 256,
                                      crop_spec_of=lambda: describe_graph(config.model, self.image_encoder,
                                                                       self.crop_size))
        self.max_regions = config.max_regions
        self.description = (f"{config.model} ({self.weights_source}, dense {config.dense_method}, "
                            f"{self.runtime.description}) on {self.device}")
        # uploads through pinned buffers, each refilled only after its last copy is done (crops and the frames of
        # several cameras are staged back to back, faster than the copies complete)
        self.staging = PinnedStaging(CudaCopyEngine(self.device)) if self.device.type == "cuda" else None

    @property
    def mean_colour(self) -> tuple[int, int, int]:
        """The normalisation mean as an RGB uint8 colour: what a blank pixel looks like to the model."""
        return tuple(int(round(255 * float(m))) for m in self.mean.flatten())

    def _pixels(self, image: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """An RGB uint8 ``(H, W, 3)`` image (array, or tensor such as a frame decoded on the GPU) on the device,
        resized to ``size`` (height, width): ``(3, h, w)`` float 0..255.

        On CUDA the uint8 pixels go up through :class:`.staging.PinnedStaging` without blocking and are resized on
        the GPU; on the CPU OpenCV resizes, bilinear as the published dense-CLIP pipelines do (mmseg's Resize)."""
        resize = size is not None and tuple(size) != tuple(image.shape[:2])
        if isinstance(image, torch.Tensor) and self.device.type != "cuda":
            image = image.cpu().numpy()
        if self.device.type == "cuda":
            tensor = self._upload(image)
        else:
            if resize:
                import cv2  # only here: the model side imports on a GPU machine without opencv

                image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        tensor = tensor.permute(2, 0, 1)[None].float()
        if resize:
            tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        return tensor[0]

    def _upload(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An RGB uint8 ``(H, W, 3)`` image on the CUDA device (through the pinned staging; a tensor decoded there
        already stays), without waiting for the copy."""
        if isinstance(image, torch.Tensor):
            return image.to(self.device, non_blocking=True)
        return self.staging.upload(image)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        chunks = []
        with self._text_lock:
            for start in range(0, len(prompts), batch_size):
                tokens = self.tokenizer(list(prompts[start:start + batch_size])).to(self.device)
                chunks.append(encode_text_truncated(self.model, tokens).float())
        return F.normalize(torch.cat(chunks), dim=-1)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        side = self.crop_size
        return self.encode_crops(torch.stack([self._pixels(image, (side, side)) for image in images]))

    @torch.inference_mode()
    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        with self.clock.measure(self.device):
            # CLIP's own image embedding (the unchanged network), on 0..255 pixels like the dense pass
            embeddings = self.runtime.embed(crops.to(self.device))
        return F.normalize(embeddings.float(), dim=-1)

    def layout_for(self, image_size: tuple[int, int]) -> WindowLayout:
        return plan_windows(image_size, self.inference_size, self.window, self.stride, self.encoder.patch_size[0])

    def layout_cost(self, image_size: tuple[int, int]) -> LayoutCost:
        """What the vision transformer does per frame of ``image_size`` (height, width): windows, tokens, GFLOP."""
        return layout_cost(self.encoder, self.layout_for(image_size))

    @torch.inference_mode()
    def warm_up(self, image_size: tuple[int, int] = (720, 1280), cameras: int = 1) -> None:
        """Run the runtime once at every batch size that ``cameras`` frames of ``image_size`` and their naming
        crops need, so that compiling (``compile``) or building engines (``onnx`` with TensorRT) happens now,
        not on the first frame."""
        windows = len(self.layout_for(image_size).origins) * cameras
        chunk = self.window_batch_size or windows
        dense = {min(chunk, windows), windows % chunk}
        self.runtime.warm_up(dense, range(1, self.max_regions + 1), self.window, self.crop_size)

    def dense_features(self, image: np.ndarray) -> DenseFeatures:
        return self.dense_features_batch([image])[0]

    @torch.inference_mode()
    def dense_features_batch(self, images: Sequence[np.ndarray]) -> list[DenseFeatures]:
        layouts = [self.layout_for(tuple(image.shape[:2])) for image in images]
        # raw pixels: the normalisation is folded into the patch embedding, no pass over the image for it
        # on CUDA each frame goes up once: the dense pass resizes it there, and naming crops are cut from it
        frames = [self._upload(image) if self.device.type == "cuda" else None for image in images]
        tensors = [self._pixels(image if frame is None else frame, layout.resized)
                   for image, frame, layout in zip(images, frames, layouts)]
        with self.clock.measure(self.device):
            grids = sliding_window_features(self.runtime.dense, tensors, layouts, self.window_batch_size)
        return [DenseFeatures(grid, layout.resized, tensor, frame)
                for grid, layout, tensor, frame in zip(grids, layouts, tensors, frames)]

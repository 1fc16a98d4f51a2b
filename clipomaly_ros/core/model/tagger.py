"""RAM++ (Recognize Anything Plus), the image tagger whose tags name anomalies in the paper's best variant.

Our own inference code for the released ``ram_plus_swin_large_14m.pth``: a timm Swin transformer and a small
plain-PyTorch head, nothing from the authors' repository, transformers or a tokenizer.

- The Swin at 384 x 384 gives 144 image tokens of width 1536 and their mean; ``image_proj`` maps all 145 to 512.
- Each tag has 51 description embeddings (``label_embed``); the image's (mean-token) embedding reweights them by a
  softmax (``reweight_scale``) into one 512-d embedding per tag, mapped to 768 by ``wordvec_proj`` and a ReLU.
- Those tag queries attend to the image tokens in two cross-attention-only BERT layers (hidden 768, 4 heads,
  FFN 3072, LayerNorm after each residual, eps 1e-12); ``fc`` and a sigmoid give one probability per tag.
- A tag fires above its own threshold (the released list, :class:`TagList`).

Open set: names the release does not know get one query each from a CLIP text embedding (the pipeline's template
ensemble), as the authors' open-set mode does; the queries do not see each other, so they leave the released tags'
probabilities unchanged.

Loading is strict (:func:`load_tagger`): every tensor of the file is used, every parameter filled, with the two
differences of the released file from the authors' ``state_dict`` (:data:`UNUSED_RELEASE_KEYS`,
:data:`INITIAL_REWEIGHT_SCALE`) each recognised by name.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backend import ModelLoadError

LOG = logging.getLogger(__name__)
TAGGER_IMAGE_SIZE = 384
"""The released model's input side in pixels."""
HEAD_ATTENTION_HEADS = 4
HEAD_LAYER_NORM_EPS = 1e-12
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWIN_LARGE = "swin_large_patch4_window12_384"
"""The timm architecture the release's image encoder is (checked against the file's shapes when loading)."""
INITIAL_REWEIGHT_SCALE = math.log(1 / 0.07)
"""The authors' model's initial ``reweight_scale`` (a softmax temperature of 1/0.07, about 14.3 once exponentiated).
The released file does not hold the parameter: their loader (``strict=False``) leaves it at this value, which is
what the release's published tags were made with. A fine-tuned file holds its own, which is used."""
UNUSED_RELEASE_KEYS = ("logit_scale",)
"""Scalars the released file holds that RAM++'s inference never reads (the temperature is ``reweight_scale``):
recognised by name and dropped, whatever their value."""


class TaggerLoadError(ModelLoadError):
    """The tagger's weights file cannot be used; the message is one line that says what to do."""


@dataclass(frozen=True)
class TagList:
    """The tagger's vocabulary: ``names`` in the model's output order and each one's firing ``thresholds``
    ``(T,)`` (probabilities)."""

    names: tuple[str, ...]
    thresholds: np.ndarray

    def __post_init__(self):
        if len(self.names) != len(self.thresholds):
            raise ValueError(f"{len(self.names)} tag names but {len(self.thresholds)} thresholds")

    @classmethod
    def released(cls) -> "TagList":
        """RAM++'s 4,585 tags and per-tag thresholds, as released by the Recognize Anything authors (Apache-2.0;
        package data in ``clipomaly_ros/data/ram_plus``)."""
        folder = resources.files("clipomaly_ros") / "data" / "ram_plus"
        names = tuple((folder / "tag_list.txt").read_text(encoding="utf-8").splitlines())
        thresholds = np.array([float(line) for line in (folder / "tag_thresholds.txt").read_text().split()],
                              dtype=np.float32)
        return cls(names, thresholds)

    def head(self, count: int) -> "TagList":
        """The first ``count`` tags (a small test model's vocabulary)."""
        return TagList(self.names[:count], self.thresholds[:count])


@dataclass(frozen=True)
class TaggerArchitecture:
    """The sizes of a RAM++ model, read off a checkpoint's shapes (:meth:`from_state_dict`).

    Swin: ``embed_dim`` channels after the patch embedding, ``depths`` and ``heads`` per stage, ``window`` in
    tokens; ``tags`` x ``descriptions`` embeddings of width ``width`` (512, CLIP's); the head's ``hidden`` width,
    ``ffn`` width and ``layers``."""

    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    window: int
    tags: int
    descriptions: int
    width: int
    hidden: int
    ffn: int
    layers: int

    @property
    def vision_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], tags: int) -> "TaggerArchitecture":
        """The architecture of a state dict in our key layout (see :func:`release_to_ours`) for ``tags`` tags."""
        try:
            stages = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"swin\.layers\.(\d+)\.", k)))
            depths = tuple(1 + max(int(m.group(1)) for k in state
                                   if (m := re.match(rf"swin\.layers\.{stage}\.blocks\.(\d+)\.", k)))
                           for stage in range(stages))
            heads = tuple(int(state[f"swin.layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape[1])
                          for stage in range(stages))
            table = state["swin.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
            layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"head\.layers\.(\d+)\.", k)))
            label_rows, width = state["label_embed"].shape
            return cls(embed_dim=int(state["swin.patch_embed.proj.weight"].shape[0]), depths=depths, heads=heads,
                       window=(math.isqrt(int(table)) + 1) // 2, tags=tags, descriptions=int(label_rows) // tags,
                       width=int(width), hidden=int(state["wordvec_proj.weight"].shape[0]),
                       ffn=int(state["head.layers.0.ffn_in.weight"].shape[0]), layers=layers)
        except (KeyError, ValueError, IndexError) as error:
            raise TaggerLoadError(f"not a RAM++ checkpoint: {type(error).__name__} {error} while reading its "
                                  "shapes") from None


class CrossAttentionLayer(nn.Module):
    """One layer of the tagging head: the tag queries attend to the image tokens (no self-attention among the
    queries), then a feed-forward block; LayerNorm after each residual sum, as in BERT."""

    def __init__(self, hidden: int, image_width: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(image_width, hidden)
        self.value = nn.Linear(image_width, hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=HEAD_LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=HEAD_LAYER_NORM_EPS)

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``queries`` (B, T, hidden), ``image`` (B, L, image_width) -> (B, T, hidden)."""
        batch, count, hidden = queries.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, self.heads, hidden // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.query(queries)), split(self.key(image)),
                                                  split(self.value(image)))
        attended = attended.transpose(1, 2).reshape(batch, count, hidden)
        queries = self.attention_norm(self.attention_out(attended) + queries)
        return self.ffn_norm(self.ffn_out(F.gelu(self.ffn_in(queries))) + queries)


class RamPlus(nn.Module):
    """The RAM++ tagger: ``model(images)`` with ``images`` (B, 3, S, S) float, ImageNet-normalised
    (:func:`tagger_input`), gives (B, T + K) sigmoid probabilities: the released tags, then the ``K`` open-set
    names (:meth:`set_open_set`)."""

    def __init__(self, architecture: TaggerArchitecture, tags: TagList, image_size: int = TAGGER_IMAGE_SIZE):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        if len(tags.names) != architecture.tags:
            raise ValueError(f"{architecture.tags} tags in the model, {len(tags.names)} in the tag list")
        self.architecture = architecture
        self.tags = tags
        self.image_size = image_size
        self.swin = SwinTransformer(img_size=image_size, patch_size=4, window_size=architecture.window,
                                    embed_dim=architecture.embed_dim, depths=architecture.depths,
                                    num_heads=architecture.heads, num_classes=0)
        self.image_proj = nn.Linear(architecture.vision_width, architecture.width)
        self.label_embed = nn.Parameter(torch.zeros(architecture.tags * architecture.descriptions,
                                                    architecture.width))
        self.reweight_scale = nn.Parameter(torch.tensor(INITIAL_REWEIGHT_SCALE))
        self.wordvec_proj = nn.Linear(architecture.width, architecture.hidden)
        self.head = nn.Module()
        self.head.layers = nn.ModuleList(
            CrossAttentionLayer(architecture.hidden, architecture.width, HEAD_ATTENTION_HEADS, architecture.ffn)
            for _ in range(architecture.layers))
        self.fc = nn.Linear(architecture.hidden, 1)
        self.register_buffer("open_set_embed", torch.zeros(0, architecture.width), persistent=False)
        self.open_set_names: tuple[str, ...] = ()
        self.load_notes: tuple[str, ...] = ()
        """What :func:`load_tagger` did with the file's differences from the authors' ``state_dict`` (logged too)."""

    def set_open_set(self, names: tuple[str, ...], embeddings: torch.Tensor) -> None:
        """Tag ``names`` too, each by its (K, width) text embedding (unit vectors of the CLIP space that the
        release's descriptions come from). Replaces the previous open-set names."""
        if embeddings.shape != (len(names), self.architecture.width):
            raise ValueError(f"open-set names need ({len(names)}, {self.architecture.width}) embeddings, got "
                             f"{tuple(embeddings.shape)}: the text model's width must be the tagger's "
                             f"{self.architecture.width} (CLIP ViT-B/16's)")
        self.open_set_embed = embeddings.to(self.label_embed)
        self.open_set_names = tuple(names)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1 + L, width): the projected mean token, then the L Swin tokens."""
        tokens = self.swin.forward_features(images).flatten(1, 2)  # timm's Swin is (B, H, W, C)
        return self.image_proj(torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.probabilities(images, self.open_set_embed)

    def probabilities(self, images: torch.Tensor, open_set: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images and (K, width) open-set embeddings (K may be 0) -> (B, T + K) probabilities: what
        an exported graph computes, with the open-set names as an input."""
        image = self.image_tokens(images)
        batch = image.shape[0]
        width, descriptions = self.architecture.width, self.architecture.descriptions
        cls = F.normalize(image[:, 0], dim=-1)
        descriptions_embed = self.label_embed.view(-1, descriptions, width)
        weights = torch.softmax(self.reweight_scale.exp() * (cls @ self.label_embed.t()).view(batch, -1, descriptions),
                                dim=2)
        queries = torch.einsum("btd,tdw->btw", weights, descriptions_embed)
        # one embedding per open-set name: its softmax over one description is 1
        queries = torch.cat([queries, open_set.to(queries.dtype).expand(batch, -1, -1)], dim=1)
        queries = F.relu(self.wordvec_proj(queries))
        for layer in self.head.layers:
            queries = layer(queries, image)
        return torch.sigmoid(self.fc(queries).squeeze(-1))


def tagger_input(frames: torch.Tensor | np.ndarray | Sequence[np.ndarray], size: int = TAGGER_IMAGE_SIZE,
                 device: str | torch.device | None = None) -> torch.Tensor:
    """RGB uint8 frames -> (B, 3, size, size) float32 on ``device`` (default: the frames'), resized and
    ImageNet-normalised as the release's own preprocessing does.

    ``frames``: (B, H, W, 3) or (H, W, 3) arrays or tensors, or a sequence of (H, W, 3) arrays (sizes may differ).
    Frames on the host are resized by PIL's bilinear filter on 8-bit pixels, exactly what the authors' code runs
    (PyTorch's own 8-bit resize leaves about 1 % of the pixels one grey level off, enough to move a tag across its
    threshold); frames on a GPU by PyTorch's antialiased bilinear resize rounded to whole grey levels (about 12 % of
    the pixels one level off PIL's), as no GPU library has PIL's arithmetic."""
    from PIL import Image

    if isinstance(frames, torch.Tensor) and frames.device.type != "cpu":
        batch = frames if frames.dim() == 4 else frames[None]
        resized = F.interpolate(batch.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                                align_corners=False, antialias=True).round_().clamp_(0.0, 255.0)
    else:
        if isinstance(frames, torch.Tensor):
            frames = frames.numpy()
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        pictures = [np.asarray(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).resize(
            (size, size), Image.BILINEAR)) for frame in frames]
        resized = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).to(
            torch.float32, memory_format=torch.contiguous_format)  # channels-last strides would recompile a graph
    if device is not None:
        resized = resized.to(device)
    images = resized.div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


RELEASE_HEAD_NAMES = {
    "crossattention.self.query": "query", "crossattention.self.key": "key", "crossattention.self.value": "value",
    "crossattention.output.dense": "attention_out", "crossattention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm",
}
"""The release's BERT module of a head layer -> ours (:class:`CrossAttentionLayer`)."""
RELEASE_HEAD_KEY = re.compile(r"^(?:tagging_head|vision_multi)\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
"""A head key of the release (also saved as ``vision_multi``): layer, module, tensor."""


DERIVED_BUFFERS = re.compile(r"\.(relative_position_index|attn_mask)$")
"""Swin buffers the release saved that timm computes itself: checked equal to timm's, not loaded."""


def release_to_ours(key: str) -> str:
    """A release key (the authors' module names) in our layout; a key no rule matches is returned unchanged."""
    if match := re.match(r"^visual_encoder\.layers\.(\d+)\.downsample\.(.*)$", key):
        # the release downsamples at the end of a stage, timm at the start of the next
        return f"swin.layers.{int(match.group(1)) + 1}.downsample.{match.group(2)}"
    if key.startswith("visual_encoder."):
        return "swin." + key[len("visual_encoder."):]
    if (match := RELEASE_HEAD_KEY.match(key)) and match.group(2) in RELEASE_HEAD_NAMES:
        return f"head.layers.{match.group(1)}.{RELEASE_HEAD_NAMES[match.group(2)]}.{match.group(3)}"
    return key


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a RAM++ file (``{"model": state}`` as released, or the state itself), loaded with
    ``weights_only=True``; any failure is one :class:`TaggerLoadError` line."""
    path = Path(path)
    if not path.is_file():
        raise TaggerLoadError(f"tagger weights {path} not found: download ram_plus_swin_large_14m.pth on a connected "
                              "machine (see the README's tagger section) and give its path as {tagger_weights=PATH}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file and the safe unpickler's refusals come as many types
        if not zipfile.is_zipfile(path):
            raise TaggerLoadError(f"tagger weights {path} cannot be read: not a PyTorch checkpoint (truncated, or "
                                  "another kind of file); download it again") from None
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TaggerLoadError(f"tagger weights {path} refused by the safe loader (weights_only): "
                              f"{type(error).__name__}: {first[:160]}; it holds more than tensors or is damaged: "
                              "use the released file") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TaggerLoadError(f"tagger weights {path} hold no state dict of tensors (a dict with 'model' or the "
                              "state itself): not a RAM++ checkpoint")
    return state


def load_tagger(path: str | Path, tags: TagList | None = None, device: str | torch.device = "cpu") -> RamPlus:
    """The RAM++ model of ``path``, strictly: every tensor of the file fills a parameter of ours (or equals a
    buffer timm computes), every parameter is filled, every shape agrees; otherwise one
    :class:`TaggerLoadError` line names the first offending key. The release's two differences from that are
    recognised by name (:func:`settle_release_differences`), logged in one line and kept as the model's
    ``load_notes``. ``tags``: the tag list (default the released 4,585)."""
    tags = tags or TagList.released()
    release, notes = settle_release_differences(read_checkpoint(path), path)
    state = {release_to_ours(key): value for key, value in release.items()}
    derived = {key: value for key, value in state.items() if DERIVED_BUFFERS.search(key)}
    state = {key: value for key, value in state.items() if key not in derived}
    if "label_embed" in state and state["label_embed"].shape[0] % len(tags.names):
        raise TaggerLoadError(f"label_embed has {state['label_embed'].shape[0]} rows, not a multiple of the "
                              f"{len(tags.names)} tags of the tag list: the file is for another tag list")
    model = RamPlus(TaggerArchitecture.from_state_dict(state, len(tags.names)), tags)
    ours = model.state_dict()
    for key in sorted(set(state) - set(ours)):
        raise TaggerLoadError(f"unexpected key {_release_name(key, release)} in {path}: not a RAM++ "
                              f"{SWIN_LARGE} checkpoint of this layout")
    for key in sorted(set(ours) - set(state)):
        raise TaggerLoadError(f"missing key {key} in {path}: the file is incomplete or of another model")
    for key, value in state.items():
        if value.shape != ours[key].shape:
            raise TaggerLoadError(f"key {_release_name(key, release)} in {path} has shape {tuple(value.shape)}, "
                                  f"the model needs {tuple(ours[key].shape)}")
    buffers = dict(model.named_buffers())
    for key, value in derived.items():
        if key not in buffers or buffers[key] is None:
            raise TaggerLoadError(f"unexpected key {_release_name(key, release)} in {path}: no such buffer in "
                                  f"a Swin of this layout")
        if value.shape != buffers[key].shape or not torch.equal(value.to(buffers[key].dtype), buffers[key]):
            raise TaggerLoadError(f"buffer {_release_name(key, release)} in {path} differs from the Swin's own: "
                                  "another window arrangement or input size")
    model.load_state_dict(state, strict=True)
    model.load_notes = tuple(notes)
    LOG.info("tagger weights %s: %s", path, "; ".join(notes))
    return model.eval().requires_grad_(False).to(device)


def settle_release_differences(release: dict[str, torch.Tensor], path: str | Path
                               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``release`` (a file's state, the authors' key names) with the released file's differences from the authors'
    ``state_dict`` settled, and one note on each for the log line:

    - :data:`UNUSED_RELEASE_KEYS` (``logit_scale``) dropped, whatever its value: never the temperature. Only a
      scalar is taken for it; another shape is refused.
    - a missing ``reweight_scale`` set to :data:`INITIAL_REWEIGHT_SCALE`, as the authors' loader leaves it; a
      present one (a fine-tuned file) kept, checked like every other key.
    """
    state, notes = dict(release), []
    for key in UNUSED_RELEASE_KEYS:
        if key not in state:
            continue
        value = state.pop(key)
        if value.numel() != 1:
            raise TaggerLoadError(f"key {key} in {path} has shape {tuple(value.shape)}, the release's is a scalar: "
                                  "not a RAM++ checkpoint of the released layout")
        notes.append(f"{key} {float(value):.4g} ignored (the release's unused scalar; the temperature is "
                     "reweight_scale)")
    if "reweight_scale" in state:
        scale = state["reweight_scale"]
        notes.append(f"reweight_scale {float(scale):.4g} from the file (a fine-tuned file's format)"
                     if scale.numel() == 1 else "reweight_scale from the file")
    else:
        state["reweight_scale"] = torch.tensor(INITIAL_REWEIGHT_SCALE)
        notes.append(f"reweight_scale absent (as released): the authors' initial log(1/0.07) = "
                     f"{INITIAL_REWEIGHT_SCALE:.4f} taken")
    return state, notes


def _release_name(key: str, release: dict) -> str:
    """The release's own name of one of our keys (for messages)."""
    return next((name for name in release if release_to_ours(name) == key), key)


# --- the tagger as an ONNX graph (runtime: onnx) ---------------------------------------------------------------------
TAGGER_GRAPH_FORMAT = "1"


class TaggerGraph(nn.Module):
    """What is exported: ``images`` (B, 3, S, S) normalised and ``open_set`` (K >= 1, width) in, ``probabilities``
    (B, T + K) out (:meth:`RamPlus.probabilities`)."""

    def __init__(self, model: RamPlus):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, open_set: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(images, open_set)


def tagger_digest(model: RamPlus) -> str:
    """sha256 (16 hex digits) of the tagger's weights: what ties an exported graph to them."""
    from .export import weights_digest

    return weights_digest(model)


def default_tagger_graph_path(cache_dir: Path, model: RamPlus) -> Path:
    """Where ``runtime: onnx`` with an empty ``tagger_onnx_model`` keeps the tagger graph it exported."""
    return Path(cache_dir) / "engines" / f"ram_plus-{len(model.tags.names)}tags-{tagger_digest(model)}-fp32.onnx"


def export_tagger(model: RamPlus, path: str | Path, max_batch: int = 64) -> Path:
    """Write ``model`` as an ONNX graph (:class:`TaggerGraph`; batch and open-set names dynamic, opset 18) with its
    weights' digest in the metadata. Needs the ``[onnx]`` extra."""
    from .export import OPSET, require_export_packages

    require_export_packages()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    images = torch.zeros(2, 3, model.image_size, model.image_size, device=device)
    open_set = F.normalize(torch.ones(2, model.architecture.width, device=device), dim=-1)
    with torch.no_grad():
        program = torch.onnx.export(
            TaggerGraph(model).eval(), (images, open_set), dynamo=True, opset_version=OPSET, verbose=False,
            input_names=["images", "open_set"], output_names=["probabilities"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=max_batch)},
                            "open_set": {0: torch.export.Dim("names", min=1, max=4096)}})
    program.model.metadata_props.update({"clipomaly.tagger_weights": tagger_digest(model),
                                         "clipomaly.tagger_tags": str(len(model.tags.names)),
                                         "clipomaly.tagger_format": TAGGER_GRAPH_FORMAT})
    temporary = path.with_suffix(".partial")
    program.save(str(temporary))
    temporary.replace(path)
    return path


class OnnxTagger:
    """The exported tagger in an ONNX Runtime session: ``tagger(images, open_set)`` as
    :meth:`RamPlus.probabilities`, on ``device`` (through the host where the session runs on the CPU). Refuses a
    graph whose recorded weights are not ``model``'s."""

    def __init__(self, path: Path, model: RamPlus, device: torch.device):
        from .runtimes import choose_providers, import_onnxruntime

        ort = import_onnxruntime()
        self.device = device
        self.width = model.architecture.width
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = [p for p in choose_providers(ort.get_available_providers(), device, None, 64, model.image_size)
                     if p != "TensorrtExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise ModelLoadError(f"tagger graph {path} could not be loaded by ONNX Runtime "
                                 f"({str(error).splitlines()[0][:200]}): write it again with 'clipomaly export "
                                 "--tagger'") from None
        recorded = self.session.get_modelmeta().custom_metadata_map.get("clipomaly.tagger_weights")
        if recorded != tagger_digest(model):
            raise ModelLoadError(f"tagger graph {path} was exported from other weights ({recorded}, these are "
                                 f"{tagger_digest(model)}): write it again with 'clipomaly export --tagger', or clear "
                                 "tagger_onnx_model to have it exported on start")
        self.description = f"ONNX Runtime ({self.session.get_providers()[0]}) on {Path(path).name}"

    def __call__(self, images: torch.Tensor, open_set: torch.Tensor) -> torch.Tensor:
        padded = open_set.shape[0] == 0  # the graph takes at least one open-set name: a blank one, dropped after
        names = torch.zeros(1, self.width) if padded else open_set
        (probabilities,) = self.session.run(["probabilities"], {
            "images": images.float().cpu().numpy(), "open_set": names.float().cpu().numpy()})
        probabilities = torch.from_numpy(probabilities).to(self.device)
        return probabilities[:, :-1] if padded else probabilities


class CompiledTagger:
    """``runtime: compile``: the tagger's :meth:`RamPlus.probabilities` under ``torch.compile``, called as
    ``tagger(images, open_set)``. One graph for a single frame and one with a dynamic batch for several cameras;
    :meth:`warm_up` compiles them before the first frames. A call past dynamo's recompile limit runs eagerly and is
    counted (:meth:`health`)."""

    def __init__(self, model: RamPlus):
        self.model = model
        self._compiled = torch.compile(model.probabilities)
        self.ran_eager = 0
        self.description = "torch.compile"

    def __call__(self, images: torch.Tensor, open_set: torch.Tensor) -> torch.Tensor:
        if images.shape[0] > 1:  # every batch size above 1 shares one graph
            torch._dynamo.mark_dynamic(images, 0)
        try:
            return self._compiled(images, open_set)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            self.ran_eager += 1
            return self.model.probabilities(images, open_set)

    def warm_up(self, cameras: int) -> None:
        """Compile for one frame and for ``cameras`` frames at once (the open-set names in force now)."""
        device = next(self.model.parameters()).device
        size = self.model.image_size
        with torch.inference_mode():
            for batch in sorted({1, cameras}):
                self(torch.zeros(batch, 3, size, size, device=device), self.model.open_set_embed)

    def health(self) -> dict[str, int]:
        return {"tagger calls run eager (recompile limit hit)": self.ran_eager} if self.ran_eager else {}

"""What a result depends on, written down so that a later run can tell whether it would compute the same thing:
the settings that change it, with every file a setting names (weights, an exported graph, a dictionary) taken by
the hash of its bytes, not by its path (a checkpoint overwritten in place is other weights; one moved is not)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from .config import CORE_SETTINGS, ClipomalyConfig

FILE_SETTINGS = ("checkpoint", "onnx_model", "naming_dictionary", "tagger_weights", "tagger_onnx_model")
"""Settings whose value is a file: the fingerprint holds the hash of its bytes."""
WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".json", ".onnx")
"""The files of a ``local-dir:`` folder or an ``hf-hub:`` snapshot that make the model: weights and configuration."""
HF_WEIGHT_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""The files open_clip loads for an ``hf-hub:`` model, looked up in the Hugging Face cache."""

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the file's bytes (remembered per path, size and modification time, so that a big
    checkpoint is read once a process). A missing or unreadable file raises ``FileNotFoundError``/``OSError``."""
    path = Path(path).expanduser()
    status = path.stat()
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = f"sha256:{digest.hexdigest()}"
    return _DIGESTS[key]


def settings_fingerprint(config: ClipomalyConfig, leave_out: Iterable[str] = ()) -> dict[str, object]:
    """Every core setting but ``leave_out``, as plain JSON values, with the :data:`FILE_SETTINGS` that are set
    replaced by their :func:`file_digest`."""
    left_out = set(leave_out)
    values = config.as_dict()
    fingerprint = {}
    for name in CORE_SETTINGS:
        if name in left_out:
            continue
        value = values[name]
        if name in FILE_SETTINGS and value:
            try:
                value = file_digest(value)
            except OSError as error:
                raise FileNotFoundError(f"{name} {value}: {error.strerror or error}: give a file that exists") \
                    from None
        fingerprint[name] = value
    if "model" in fingerprint:
        fingerprint["model"] = model_fingerprint(values["model"])
    return fingerprint


def model_fingerprint(model: str) -> str:
    """``model`` as the fingerprint holds it: an architecture name as it is; a ``local-dir:`` folder or an
    ``hf-hub:`` repository by the hashes of its weight and configuration files (:data:`WEIGHT_SUFFIXES`; for
    ``hf-hub:``, those of :data:`HF_WEIGHT_FILES` in the local Hugging Face cache), so that other weights under the
    same name are another model. A ``local-dir:`` folder that does not exist, or an ``hf-hub:`` model not in the
    cache, raises ``FileNotFoundError``."""
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"model {model}: no such folder: give a folder that exists")
        files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*"))
                 if path.is_file() and path.suffix in WEIGHT_SUFFIXES}
    elif model.startswith("hf-hub:"):
        files = _hf_cached_files(model[len("hf-hub:"):])
        if not files:  # unhashed, other weights under this name later would resume into this run's rows
            raise FileNotFoundError(f"model {model}: not in the local Hugging Face cache, so its weights cannot be "
                                    f"fingerprinted: download it first (huggingface-cli download "
                                    f"{model[len('hf-hub:'):]})")
    else:
        return model
    digests = ",".join(f"{name}={file_digest(path)}" for name, path in sorted(files.items()))
    return f"{model} [{digests or 'no weight files found'}]"


def _hf_cached_files(repository: str) -> dict[str, Path]:
    """The files of :data:`HF_WEIGHT_FILES` of ``repository`` in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return {}
    found = {}
    for name in HF_WEIGHT_FILES:
        cached = try_to_load_from_cache(repository, name)
        if isinstance(cached, str):
            found[name] = Path(cached)
    return found


def numeric_precision(device: str, cuda: bool) -> str:
    """The weights' precision a run on ``device`` gets: fp16 on CUDA (``auto`` where ``cuda`` is available), fp32
    on the CPU."""
    return "fp16" if device.startswith("cuda") or (device == "auto" and cuda) else "fp32"


def differences(earlier: dict, now: dict) -> list[str]:
    """The names whose values differ between two fingerprints (also those only one of them has)."""
    return sorted(name for name in set(earlier) | set(now) if earlier.get(name) != now.get(name))


def files_differing(config: ClipomalyConfig, fingerprint: dict) -> list[str]:
    """The :data:`FILE_SETTINGS` (and ``model``) of ``config`` whose files, here, do not hash to what
    ``fingerprint`` (a :func:`settings_fingerprint` made elsewhere) holds: a machine with other files at the same
    paths. A file missing here differs too."""
    values = config.as_dict()
    differing = []
    for name in (*FILE_SETTINGS, "model"):
        if name not in fingerprint:
            continue
        try:
            here = model_fingerprint(values[name]) if name == "model" else (
                file_digest(values[name]) if values[name] else values[name])
        except OSError:
            here = None
        if here != fingerprint[name]:
            differing.append(name)
    return differing

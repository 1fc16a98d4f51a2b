"""What this machine has: versions of torch, CUDA, cuDNN, ONNX Runtime and TensorRT, the GPU and its memory; and,
where ONNX Runtime's TensorRT provider did not load, the library it missed."""

from __future__ import annotations

import ctypes
import importlib.util
import platform
from pathlib import Path

NVINFER_SONAMES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")


def versions(device: str) -> dict[str, str]:
    """The versions that head the table (each "none" or the reason where it is missing)."""
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "CUDA": torch.version.cuda or "none (a CPU build of torch)"}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    found["cuDNN"] = str(cudnn) if cudnn else "none"
    found["ONNX Runtime"] = onnxruntime_version()
    found["TensorRT"] = tensorrt_version() or "none"
    if device.startswith("cuda") and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(torch.device(device))
        found["GPU"] = f"{properties.name}, {properties.total_memory / 2**30:.1f} GiB"
    else:
        found["GPU"] = f"none ({platform.processor() or platform.machine()} CPU)"
    return found


def onnxruntime_version() -> str:
    if importlib.util.find_spec("onnxruntime") is None:
        return "none (onnxruntime is not installed)"
    import onnxruntime

    return f"{onnxruntime.__version__} (providers available: {', '.join(onnxruntime.get_available_providers())})"


def tensorrt_version() -> str:
    """TensorRT's version as the loaded library reports it (``getInferLibVersion``), else the Python package's;
    "" when neither is here."""
    for soname in NVINFER_SONAMES:
        try:
            library = ctypes.CDLL(soname)
        except OSError:
            continue
        code = int(library.getInferLibVersion())
        # TensorRT 10 encodes major * 10000 + minor * 100 + patch, TensorRT 8 major * 1000 + minor * 100 + patch
        major, rest = (code // 10000, code % 10000) if code >= 10000 else (code // 1000, code % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        return tensorrt.__version__
    return ""


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def tensorrt_load_error() -> str:
    """Why ONNX Runtime's TensorRT provider library does not load here (the loader's message names the missing
    library, e.g. ``libnvinfer.so.10: cannot open shared object file``), or "" when it loads."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    providers = sorted(capi.glob("libonnxruntime_providers_tensorrt*.so"))
    if not providers:
        return f"this onnxruntime ({onnxruntime.__version__}) has no TensorRT provider: install onnxruntime-gpu"
    try:
        ctypes.CDLL(str(providers[0]))
    except OSError as error:
        return str(error).splitlines()[0]
    return ""


__all__ = ["versions", "tensorrt_version", "tensorrt_major", "tensorrt_load_error", "onnxruntime_version"]

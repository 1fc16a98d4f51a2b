#!/usr/bin/env bash
# Fill .gpu-wheels (git-ignored) on a connected machine with what `make gpu-check` needs on a bare CUDA machine
# that has Python and PyTorch 2.7 or newer (and torchvision) but no network, for the device's Python
# (GPU_PY, default 3.12).
# Torch, numpy and the NVIDIA libraries are the device's own and are left out. Kept under 60 MB: the model side
# always; then, each only if it still fits, the ONNX exporter and scipy (the pipeline's host side also needs
# opencv, about 56 MB, which never fits: where the device lacks it, the check times the dense pass alone).
# onnxruntime-gpu (about 250 MB) never fits either: runtime onnx runs there only if the device has it.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_PY=${GPU_PY:-3.12}
PIP=${PIP:-.venv/bin/pip}
LIMIT_MB=60
out=.gpu-wheels
rm -rf "$out" && mkdir -p "$out"
download() {  # download DIR PACKAGE...: binary wheels for the device's Python, without dependencies
  local dir=$1 && shift
  "$PIP" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$GPU_PY" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "$@"
}
size_mb() { du -sm "$1" | cut -f1; }
add_if_it_fits() {  # add_if_it_fits NAME PACKAGE...
  local name=$1 && shift
  local staging="$out.$name"
  rm -rf "$staging" && mkdir -p "$staging"
  if download "$staging" "$@" && [ $(( $(size_mb "$out") + $(size_mb "$staging") )) -lt "$LIMIT_MB" ]; then
    mv "$staging"/*.whl "$out"/ && echo "gpu wheels: $name added"
  else
    echo "gpu wheels: $name left out (would pass ${LIMIT_MB} MB)"
  fi
  rm -rf "$staging"
}
# open_clip and what it imports beyond torch and torchvision (huggingface_hub is optional to it: no downloads there),
# and pytest for the CUDA test cases
download "$out" open_clip_torch ftfy wcwidth regex safetensors timm tqdm pyyaml filelock fsspec packaging \
  pytest pluggy iniconfig pygments \
  typing_extensions
add_if_it_fits onnx-export onnx onnxscript onnx_ir ml_dtypes protobuf
add_if_it_fits scipy scipy
echo "gpu wheels: $(ls "$out" | wc -l) files, $(size_mb "$out") MB in $out (limit ${LIMIT_MB} MB)"
[ "$(size_mb "$out")" -lt "$LIMIT_MB" ]

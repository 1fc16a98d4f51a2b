#!/usr/bin/env bash
# Set up the project in ./.venv: torch, open_clip and this package with its test tools and the ONNX, mining and review
# extras; Debian's chromium and chromium-driver, which the review page's browser test drives (a missing browser
# fails the set-up here, so that the test never skips for want of it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,onnx,mine,review]'
if { ! command -v chromium || ! command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null \
        && [ "$(id -u)" = 0 ]; then
    apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium chromium-driver \
             >/dev/null 2>&1; } || true
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "set-up failed: Debian's chromium and chromium-driver are needed by the review page's browser test;" \
         "install them (apt-get install chromium chromium-driver, as root) and run this again" >&2
    exit 1
fi
echo "set up: $(.venv/bin/python -c 'import torch, open_clip; print("torch", torch.__version__, "open_clip", open_clip.__version__)')"

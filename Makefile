# Two commands on a fresh machine (Python 3.11, no ROS, no GPU); each sets up only what is missing:
#   make demo   the ROS 2 node on a synthetic drive: prints its anomalies, writes demo_out/drive.gif
#   make test   the whole test suite (what CI runs)
# Real weights for the demo: make demo DEMO_ARGS="--checkpoint /opt/models/vit_b16.safetensors"
# On a bare CUDA machine (Python + PyTorch >= 2.7, no network): make gpu-check, or python3 scripts/gpu_check.py for
# its own exit code; its wheels come from make gpu-wheels (run on a connected machine). It runs 11 rows in 8 minutes,
# each under its own limit, and appends each row to gpu-check.jsonl ($OUT, else gpu_check_out/) as it ends.
# make gpu-check DEVICE=cpu rehearses the same plan here (docs/engine.md#on-a-gpu).
PYTHON ?= python3.11
VENV := .venv
CORE_READY := $(VENV)/.core-ready
ROS_READY := $(VENV)/.ros-ready
DEMO_ARGS ?=
TEST_ARGS ?=
# pytest-xdist workers, a test file each at a time (its module fixtures, such as running nodes, stay in one); three on
# 2 cores, as much of the suite waits on other processes (nodes, Ray workers, DDS discovery, a browser)
TEST_WORKERS ?= 3
DEVICE ?= cuda
GPU_CHECK_ARGS ?=
# the device machine has no .venv: its own python3 with PyTorch
GPU_PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)

.PHONY: demo test setup gpu-check gpu-wheels
.DEFAULT_GOAL := demo

demo: $(ROS_READY)
	$(VENV)/bin/clipomaly demo $(DEMO_ARGS)

test: $(ROS_READY)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 test $(TEST_ARGS)

setup: $(ROS_READY)

# The stamps are newer than the files that describe the set-up, so a second run starts at once; editing one of
# those files runs its step again.
$(CORE_READY): setup.py scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $@

$(ROS_READY): $(CORE_READY) scripts/setup_ros.sh
	bash scripts/setup_ros.sh
	touch $@

# exit 0 only if every planned row passed; the CPU rehearsal's 3 ("rows not run: no CUDA", and no failure) is
# accepted for DEVICE=cpu alone; any other code is passed on
gpu-check:
	@$(GPU_PYTHON) scripts/gpu_check.py --device $(DEVICE) $(GPU_CHECK_ARGS); code=$$?; \
	if [ "$(DEVICE)" = cpu ] && [ $$code -eq 3 ]; then exit 0; fi; exit $$code

gpu-wheels: $(CORE_READY)
	bash scripts/gpu_wheels.sh

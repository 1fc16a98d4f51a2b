"""`make gpu-check`: the script a bare GPU machine runs in one call, proven here with DEVICE=cpu."""

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_gpu_check_on_the_cpu_measures_every_runtime_and_layout(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    arguments = f"--out {out} --frames 2 --cameras 1,2 --wheels {tmp_path / 'no-wheels'}"
    completed = subprocess.run(["make", "-s", "gpu-check", "DEVICE=cpu", f"GPU_CHECK_ARGS={arguments}",
                                f"GPU_PYTHON={sys.executable}"], cwd=REPO, capture_output=True, text=True,
                               timeout=1200)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {(row["layout"], row["runtime"]): row for row in report["results"]}
    assert set(rows) == {(layout, runtime) for layout in ("official", "light")
                         for runtime in ("torch", "compile", "onnx")}
    for (layout, runtime), row in rows.items():
        assert "error" not in row, row
        assert row["frames"] == 2 and row["measured"] == "pipeline"
        assert 0 < row["backbone_ms"] < row["ms_per_frame"] and row["fps"] > 0
        assert set(row["cameras"]) == {"1", "2"} and row["cameras"]["2"]["ms_per_batch"] > 0
        if runtime != "torch":
            assert row["cosine_vs_eager"] >= 0.9999, (layout, runtime)
    assert rows[("light", "torch")]["tokens"] < rows[("official", "torch")]["tokens"]
    assert "clipomaly gpu check" in completed.stdout and "light    onnx" in completed.stdout


def test_only_the_wheels_this_python_lacks_are_unpacked(tmp_path):
    gpu_check = load_script()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, module in (("clipomaly_fake_dependency", "clipomaly_fake_dependency"), ("pyyaml", "yaml")):
        with zipfile.ZipFile(wheels / f"{name}-1.0-py3-none-any.whl", "w") as archive:
            archive.writestr(f"{module}/__init__.py", "MARK = 'unpacked'\n")
    site = tmp_path / "site"
    try:
        unpacked = gpu_check.unpack_missing_wheels(wheels, site)
        assert unpacked == ["clipomaly_fake_dependency-1.0-py3-none-any.whl"]  # yaml is installed here
        assert importlib.import_module("clipomaly_fake_dependency").MARK == "unpacked"
        assert not (site / "yaml").exists()
    finally:
        if str(site) in sys.path:
            sys.path.remove(str(site))
        sys.modules.pop("clipomaly_fake_dependency", None)


def test_the_gpu_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    completed = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path),
                                "--wheels", str(tmp_path / "none")], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "DEVICE=cpu" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


def test_the_model_side_runs_without_opencv_and_scipy_as_on_a_bare_gpu_machine(tiny_model_name):
    # a frame already at the working size: on a GPU the resize happens there, without opencv
    code = ("import sys; sys.modules.update(cv2=None, scipy=None); import numpy as np; "
            "from clipomaly_ros import ClipomalyConfig; "
            "from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend; "
            f"b = OpenClipBackend(ClipomalyConfig(model={tiny_model_name!r}, random_weights=True, device='cpu', "
            "inference_size=128)); "
            "g = b.dense_features(np.zeros((128, 192, 3), np.uint8)).grid; print(tuple(g.shape))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().endswith("(8, 12, 32)")

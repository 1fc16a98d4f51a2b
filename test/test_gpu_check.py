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
    readme = tmp_path / "measurements.md"
    gpu_check = load_script()
    readme.write_text(f"# r\n\nbefore\n{gpu_check.TABLE_BEGIN}\nnot measured\n{gpu_check.TABLE_END}\nafter\n")
    arguments = f"--out {out} --frames 2 --cameras 1,2 --wheels {tmp_path / 'no-wheels'} --markdown {readme}"
    completed = subprocess.run(["make", "-s", "gpu-check", "DEVICE=cpu", f"GPU_CHECK_ARGS={arguments}",
                                f"GPU_PYTHON={sys.executable}"], cwd=REPO, capture_output=True, text=True,
                               timeout=1200)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {(row["layout"], row["runtime"], row["precision"]): row for row in report["results"]}
    assert set(rows) == {(layout, runtime, "fp32") for layout in ("official", "light")
                         for runtime in ("torch", "compile", "onnx")}
    for (layout, runtime, _), row in rows.items():
        assert row["status"] == "ok", row
        assert row["frames"] == 2 and row["measured"] == "pipeline"
        assert 0 < row["backbone_ms"] < row["ms_per_frame"] <= row["p99_ms"] and row["fps"] > 0
        assert row["first_frame_ms"] > 0
        assert set(row["cameras"]) == {"1", "2"} and row["cameras"]["2"]["ms_per_batch"] > 0
        if runtime == "torch":
            assert "cosine_vs_fp32" not in row  # the reference is not compared with itself
        else:
            assert row["cosine_vs_fp32"] >= 0.9999, (layout, runtime)
    assert rows[("light", "torch", "fp32")]["tokens"] < rows[("official", "torch", "fp32")]["tokens"]
    checks = {check["check"]: check for check in report["checks"]}
    assert checks["CUDA tests"]["status"] == "ok" and "passed" in checks["CUDA tests"]["detail"]
    assert checks["names on cpu = names on cpu"]["status"] == "ok"
    assert "SUMMARY" in completed.stdout and "gpu check passed" in completed.stdout
    table = (out / "gpu_check.md").read_text()
    assert "| light | `onnx` | fp32 |" in table
    written = readme.read_text()
    assert table in written and "not measured" not in written and written.endswith("after\n")


def test_a_runtime_that_cannot_run_is_a_failure_with_its_reason_and_a_non_zero_exit(tmp_path, monkeypatch,
                                                                                     capsys):
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check, "onnx_unavailable", lambda device: "onnxruntime is not installed here")
    code = gpu_check.main(["--device", "cpu", "--frames", "1", "--cameras", "1", "--runtimes", "torch,onnx",
                           "--skip-tests", "--out", str(tmp_path), "--wheels", str(tmp_path / "none")])
    assert code == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = [row for row in report["results"] if row["status"] != "ok"]
    assert [(row["layout"], row["runtime"]) for row in failed] == [("official", "onnx"), ("light", "onnx")]
    assert all("onnxruntime is not installed" in row["reason"] for row in failed)
    printed = capsys.readouterr().out
    assert "gpu check FAILED: 2 case(s)" in printed and "onnx     fp32" in printed


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

"""`make gpu-check`: the plan a bare GPU machine runs in one call, rehearsed here with DEVICE=cpu: rows in
processes of their own under their own limits, recorded as they finish, a killed run's rows kept and rebuilt."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from clipomaly_ros.tools.gpu_check import plan, runner
from clipomaly_ros.tools.gpu_check.tables import TABLE_BEGIN, TABLE_END, read_jsonl, verdict

REPO = Path(__file__).parent.parent
QUICK = ["--device", "cpu", "--size", "320x180", "--frames", "2", "--time-scale", "40"]
"""The rehearsal made small for a busy 2-core machine: small frames, two timed frames, and budgets (limits, never
asserted) long enough for a CPU shared with other work."""


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_of(jsonl: Path) -> dict:
    return {row["row"]: row for row in read_jsonl(jsonl)[1]}


def test_the_whole_plan_fits_eight_minutes_by_its_rows_own_budgets():
    budgets = [row.budget_s for row in plan.PLAN]
    assert plan.PLAN_BUDGET_S == 480 and sum(budgets) <= plan.PLAN_BUDGET_S and min(budgets) > 0
    assert len({row.name for row in plan.PLAN}) == len(plan.PLAN)
    runtime_rows = {(row.layout, row.runtime, row.precision) for row in plan.PLAN if row.kind == "runtime"}
    assert {(layout, runtime, precision) for layout in ("official",) for runtime in ("torch", "compile", "onnx")
            for precision in ("fp32", "fp16")} <= runtime_rows
    assert 8 in plan.CAMERA_COUNTS and 1 in plan.CAMERA_COUNTS  # every runtime row serves and times 8 cameras
    assert all(row.cuda_only for row in plan.PLAN if row.precision == "fp16" or row.kind == "cuda-tests")
    assert [row.name for row in plan.PLAN if row.tensorrt] == ["official onnx/TensorRT fp16",
                                                                "light onnx/TensorRT fp16"]


def test_make_gpu_check_on_the_cpu_runs_the_plan_and_marks_the_cuda_rows_not_run(tmp_path):
    pytest.importorskip("onnxruntime")
    jsonl, readme = tmp_path / "rows.jsonl", tmp_path / "measurements.md"
    readme.write_text(f"# r\n\nbefore\n{TABLE_BEGIN}\nnot measured\n{TABLE_END}\nafter\n")
    arguments = " ".join(QUICK[2:] + ["--out", str(tmp_path / "out"), "--jsonl", str(jsonl), "--wheels",
                                      str(tmp_path / "no-wheels"), "--markdown", str(readme)])
    completed = subprocess.run(["make", "-s", "gpu-check", "DEVICE=cpu", f"GPU_CHECK_ARGS={arguments}",
                                f"GPU_PYTHON={sys.executable}"], cwd=REPO, capture_output=True, text=True,
                               timeout=3000)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-3000:]
    assert completed.stdout.startswith("gpu check plan on cpu: 11 rows")  # the plan comes first
    rows = rows_of(jsonl)
    assert list(rows) == [row.name for row in plan.PLAN]
    for row in plan.PLAN:
        record = rows[row.name]
        if row.cuda_only:
            assert (record["status"], record["reason"]) == ("not run", "no CUDA"), record
            continue
        assert record["status"] == "ok", record
        if row.kind != "runtime":
            continue
        assert record["frames"] == 2 and record["measured"] == "pipeline" and record["cameras"]["8"] > 0
        assert record["compiled_while_serving"] == [] and "after a restart" in record["serving"]
        naming = record["naming"]
        assert naming["names_equal"] and naming["staging_waits"] >= 1 and naming["crops"] == 20
        assert naming["crop_cosine_min"] >= 0.9999
        if not row.is_reference:
            assert record["cosine_vs_fp32"] >= 0.9999, record
    assert rows["official onnx fp32"]["providers_used"]["windows"] == ["CPUExecutionProvider"]
    assert rows["official compile fp32"]["ran_on"].startswith("torch.compile")
    assert rows["versions"]["versions"]["torch"] and "TensorRT" in rows["versions"]["versions"]
    assert "rehearsal passed on the CPU: 4 rows ok, 7 not run: no CUDA" in completed.stdout
    written = readme.read_text()
    assert "| official onnx fp32 |" in written and "not measured" not in written and written.endswith("after\n")


def test_a_killed_run_keeps_its_finished_rows_and_the_table_is_rebuilt_from_them(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    command = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), *QUICK, "--only",
               "versions,official torch fp32,official compile fp32", "--jsonl", str(jsonl), "--out",
               str(tmp_path / "out"), "--wheels", str(tmp_path / "none")]
    check = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline and check.poll() is None:
            if jsonl.is_file() and len(read_jsonl(jsonl)[1]) >= 2:
                break
            time.sleep(2)
        assert check.poll() is None, "the check ended before it could be killed halfway"
        os.kill(check.pid, signal.SIGKILL)  # no chance to write anything more
        check.wait(timeout=60)
    finally:
        if check.poll() is None:
            os.killpg(check.pid, signal.SIGKILL)
    rows = rows_of(jsonl)
    assert list(rows) == ["versions", "official torch fp32"] and rows["official torch fp32"]["status"] == "ok"
    rebuilt = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--table", str(jsonl), "--out",
                              str(tmp_path / "table")], capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 1, rebuilt.stderr  # a planned row did not finish: no pass
    lines = rebuilt.stdout.splitlines()
    assert "torch 2." in lines[0] and "clipomaly-tiny-vit" in lines[0]
    assert any(line.startswith("official torch fp32") and "ok" in line for line in lines)
    assert any(line.startswith("official compile fp32") and "not finished" in line for line in lines)
    assert lines[-1].startswith("gpu check FAILED: 1 of 3 rows")


def test_a_row_past_its_budget_is_killed_with_what_it_started_and_the_next_rows_still_run(tmp_path, monkeypatch,
                                                                                           capsys):
    started = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(600)']); open({str(started)!r}, 'w').write(str(p.pid)); time.sleep(600)")

    def command(row, settings, result, limit_s):
        if row.name == "versions":
            return [sys.executable, "-c", hang]
        record = json.dumps({"status": "ok", "detail": "stood in"})
        return [sys.executable, "-c", f"open({str(result)!r}, 'w').write({record!r})"]

    monkeypatch.setattr(runner, "row_command", command)
    jsonl = tmp_path / "rows.jsonl"
    code = runner.main(["--device", "cpu", "--time-scale", "0.5", "--only", "versions,official torch fp32",
                        "--jsonl", str(jsonl), "--out", str(tmp_path)])
    assert code == 1
    rows = rows_of(jsonl)
    assert rows["versions"]["status"] == "FAIL" and rows["versions"]["reason"].startswith("timed out after 8 s")
    assert rows["official torch fp32"]["status"] == "ok"
    grandchild = int(started.read_text())
    for _ in range(100):  # the row's whole process group was killed, not only its first process
        if not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the timed-out row's grandchild still runs")
    printed = capsys.readouterr().out
    assert printed.index("versions: FAIL: timed out") < printed.index("official torch fp32: ok")


def test_a_terminated_check_records_the_row_it_was_in_as_killed_and_ends_with_the_table(tmp_path, monkeypatch,
                                                                                        capsys):
    import threading

    monkeypatch.setattr(runner, "row_command", lambda row, settings, result, limit_s: [
        sys.executable, "-c", "import time; time.sleep(600)"])
    jsonl = tmp_path / "rows.jsonl"
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))  # what `timeout` sends
    timer.start()
    try:
        code = runner.main(["--device", "cpu", "--only", "versions,official torch fp32", "--jsonl", str(jsonl),
                            "--out", str(tmp_path)])
    finally:
        timer.cancel()
    assert code == 128 + signal.SIGTERM
    rows = rows_of(jsonl)
    assert list(rows) == ["versions"] and rows["versions"]["reason"] == "killed by SIGTERM during this row"
    printed = capsys.readouterr()
    assert "stopped by SIGTERM" in printed.err and "official torch fp32" in printed.out
    assert "gpu check FAILED: 2 of 2 rows" in printed.out


def test_an_older_torch_is_refused_in_one_line_at_start(tmp_path, monkeypatch, capsys, tiny_model_name):
    import torch

    from clipomaly_ros import ClipomalyConfig
    from clipomaly_ros.core.model.backend import ModelLoadError
    from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend

    monkeypatch.delattr(torch._dynamo.exc, "FailOnRecompileLimitHit")  # as in torch 2.6
    assert runner.main(["--device", "cpu", "--jsonl", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "torch 2.7 or newer" in error
    assert not (tmp_path / "rows.jsonl").exists()
    with pytest.raises(ModelLoadError, match=r"needs torch 2\.7 or newer .* install torch>=2\.7"):
        OpenClipBackend(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu", runtime="compile",
                                        cache_dir=str(tmp_path)))


def test_the_compile_watch_counts_a_recompile_and_nothing_on_a_warmed_shape():
    import torch

    from clipomaly_ros.tools.gpu_check.serving import CompileWatch, ServingThread

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    serving = ServingThread()
    try:
        first = serving.name
        serving.call(compiled, torch.ones(3))
        serving.restart()
        assert serving.name != first and serving.restarts == 1
        with CompileWatch() as warmed:
            serving.call(compiled, torch.ones(3))
        with CompileWatch() as new_shape:
            serving.call(compiled, torch.ones(5))
    finally:
        serving.close()
        torch._dynamo.reset()
    assert warmed.events == []
    assert any(event.startswith("dynamo frames compiled +") for event in new_shape.events), new_shape.events


def test_a_tensorrt_row_that_ran_without_tensorrt_or_untyped_fails_with_its_reason(monkeypatch):
    from types import SimpleNamespace

    from clipomaly_ros.tools.gpu_check import rows

    trt_row = next(row for row in plan.PLAN if row.name == "official onnx/TensorRT fp16")
    fp32_row = next(row for row in plan.PLAN if row.name == "official onnx fp32")

    def backend(providers):
        graph = SimpleNamespace(providers=providers)
        return SimpleNamespace(runtime=SimpleNamespace(windows=graph, crops=graph))

    fallback = backend(["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rows, "tensorrt_load_error", lambda: "libnvinfer.so.10: cannot open shared object file")
    found = rows.ran_on(fallback, trt_row, cuda=True)
    assert found["ran_on"] == ("windows: CUDAExecutionProvider, CPUExecutionProvider; crops: CUDAExecutionProvider, "
                               "CPUExecutionProvider")
    assert len(found["problems"]) == 1 and "libnvinfer.so.10" in found["problems"][0]
    assert rows.ran_on(fallback, fp32_row, cuda=True)["problems"] == []  # fp32: CUDA is a run, with a note
    tensorrt = backend(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rows, "tensorrt_version", lambda: "8.6.1")
    assert "strongly typed" in rows.ran_on(tensorrt, trt_row, cuda=True)["problems"][0]
    monkeypatch.setattr(rows, "tensorrt_version", lambda: "10.3.0")
    found = rows.ran_on(tensorrt, trt_row, cuda=True)
    assert found["problems"] == [] and "strongly typed (TensorRT 10.3.0)" in found["typing"]


def test_not_run_is_no_pass_and_only_the_rehearsal_excuses_the_cuda_rows():
    planned = {"rows": [{"name": "versions"}, {"name": "official torch fp16"}, {"name": "official torch fp32"}]}
    rows = [{"row": "versions", "status": "ok"}, {"row": "official torch fp16", "status": "not run",
                                                    "reason": "no CUDA"}]
    assert verdict({**planned, "device": "cpu"}, rows)[0] is False  # a row never finished
    finished = rows + [{"row": "official torch fp32", "status": "ok"}]
    assert verdict({**planned, "device": "cpu"}, finished) == (
        True, "gpu check rehearsal passed on the CPU: 2 rows ok, 1 not run: no CUDA (this is no GPU pass)")
    assert verdict({**planned, "device": "cuda"}, finished)[0] is False


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

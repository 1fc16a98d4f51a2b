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
        assert naming["crop_cosine_min"] >= 0.9999 and record["cameras_cosine_min"] >= 0.999
        if not row.is_reference:
            assert record["cosine_vs_fp32"] >= 0.9999, record
    assert rows["official onnx fp32"]["providers_used"]["windows"] == ["CPUExecutionProvider"]
    assert rows["official compile fp32"]["ran_on"].startswith("torch.compile")
    assert rows["versions"]["versions"]["torch"] and "TensorRT" in rows["versions"]["versions"]
    assert "gpu check rehearsal: 4 rows ok, 7 rows not run: no CUDA (exit 3" in completed.stdout
    assert any((tmp_path / "out" / "cache").rglob("*.onnx"))  # the export cache is kept for the next run
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

    deadlines = []

    def command(row, settings, result, deadline):
        deadlines.append(deadline - time.monotonic())  # the parent's clock: the child's imports count
        if row.name == "versions":  # it says how far it got, then hangs
            reached = json.dumps({"load_s": 1.5, "stage": "timed; comparing with eager fp32 next"})
            return [sys.executable, "-c", f"open({str(result)!r} + '.progress', 'w').write({reached!r}); {hang}"]
        record = json.dumps({"status": "ok", "detail": "stood in"})
        return [sys.executable, "-c", f"open({str(result)!r}, 'w').write({record!r})"]

    monkeypatch.setattr(runner, "row_command", command)
    jsonl = tmp_path / "rows.jsonl"
    code = runner.main(["--device", "cpu", "--time-scale", "0.5", "--only", "versions,official torch fp32",
                        "--jsonl", str(jsonl), "--out", str(tmp_path)])
    assert code == 1
    rows = rows_of(jsonl)
    assert rows["versions"]["status"] == "FAIL" and rows["versions"]["reason"].startswith(
        "timed out after 8 s, timed; comparing with eager fp32 next")
    assert rows["versions"]["load_s"] == 1.5 and 0 < deadlines[0] <= 7.5
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

    monkeypatch.setattr(runner, "row_command", lambda row, settings, result, deadline: [
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
    refused = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [record["kind"] for record in refused] == ["plan", "refused"]  # what the folder copied back tells
    assert runner.main(["--table", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path)]) == 2
    assert "gpu check refused to start: " in capsys.readouterr().out
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


def test_a_tensorrt_row_that_ran_without_tensorrt_or_untyped_or_built_no_engine_fails_with_its_reason(monkeypatch,
                                                                                                     tmp_path):
    from types import SimpleNamespace

    from clipomaly_ros.tools.gpu_check import rows

    trt_row = next(row for row in plan.PLAN if row.name == "official onnx/TensorRT fp16")
    fp32_row = next(row for row in plan.PLAN if row.name == "official onnx fp32")

    engines = tmp_path / "tensorrt"
    engines.mkdir()

    def backend(providers):
        graph = SimpleNamespace(providers=providers, tensorrt_cache=engines)
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
    assert "strongly typed" in rows.ran_on(tensorrt, trt_row, cuda=True)["problems"][-1]
    monkeypatch.setattr(rows, "tensorrt_version", lambda: "10.3.0")
    found = rows.ran_on(tensorrt, trt_row, cuda=True)  # registered, but no engine was built
    assert len(found["problems"]) == 1 and "built no engine for the windows and crops graph" in found["problems"][0]
    (engines / "TensorrtExecutionProvider_TRTKernel_graph_main_0_sm90.engine").write_bytes(b"engine")
    found = rows.ran_on(tensorrt, trt_row, cuda=True)
    assert found["problems"] == [] and "strongly typed (TensorRT 10.3.0)" in found["typing"]
    # fp32 under TensorRT may be TF32: its crops are held to fp16's tolerances, and the row says so
    record = {"providers_used": {"windows": ["TensorrtExecutionProvider"]}}
    assert rows.tolerance(fp32_row, record) == "tf32" and "TF32" in record["note"]
    assert rows.tolerance(fp32_row, {"providers_used": {"windows": ["CUDAExecutionProvider"]}}) == "fp32"


def test_the_check_turns_tf32_off_in_onnx_runtimes_cuda_provider(monkeypatch):
    import torch

    from clipomaly_ros.core.model import runtimes

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtimes.choose_providers(cuda, torch.device("cuda"), None, 8, 64)[0] == (
        "CUDAExecutionProvider", {"device_id": 0})  # the node keeps the provider's default
    monkeypatch.setitem(runtimes.CUDA_PROVIDER_OPTIONS, "use_tf32", 0)  # as the check's rows set it
    assert runtimes.choose_providers(cuda, torch.device("cuda"), None, 8, 64)[0] == (
        "CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})


def test_not_run_is_no_pass_and_only_the_rehearsal_excuses_the_cuda_rows():
    planned = {"rows": [{"name": "versions"}, {"name": "official torch fp16"}, {"name": "official torch fp32"}]}
    rows = [{"row": "versions", "status": "ok"}, {"row": "official torch fp16", "status": "not run",
                                                    "reason": "no CUDA"}]
    assert verdict({**planned, "device": "cpu"}, rows)[0] == 1  # a row never finished
    finished = rows + [{"row": "official torch fp32", "status": "ok"}]
    assert verdict({**planned, "device": "cpu"}, finished) == (
        3, "gpu check rehearsal: 2 rows ok, 1 rows not run: no CUDA (exit 3: no failure found, and no GPU pass)")
    assert verdict({**planned, "device": "cuda"}, finished)[0] == 1
    passed = [{**row, "status": "ok", "reason": ""} for row in finished]
    assert verdict({**planned, "device": "cpu"}, passed)[0] == 0  # only a run in which every row passed


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


def write_run(path: Path, device: str, rows: list[dict], planned=None) -> Path:
    """A JSONL as a run leaves it: its plan record (``planned`` row names, else those of ``rows``), then rows."""
    names = planned or [row["row"] for row in rows]
    plan_record = {"kind": "plan", "started": "2026-01-01 00:00:00 UTC", "device": device, "model": "ViT-B-16",
                   "size": "1280x720", "rows": [{"name": name, "cuda_only": False} for name in names]}
    path.write_text("".join(json.dumps(record) + "\n" for record in [plan_record]
                            + [{"kind": "row", **row} for row in rows]))
    return path


def test_the_check_and_its_naming_path_import_and_table_without_opencv_and_scipy(tmp_path):
    """A bare GPU machine has neither: the runner, the rows and the naming path must import, and --table work."""
    jsonl = write_run(tmp_path / "rows.jsonl", "cuda", [{"row": "versions", "status": "ok", "versions": {
        "torch": "2.7.0", "GPU": "H100, 79.1 GiB"}}])
    code = ("import sys; sys.modules.update(cv2=None, scipy=None); "
            "from clipomaly_ros.tools.gpu_check import naming_path, rows, runner; "
            f"sys.exit(runner.main(['--table', {str(jsonl)!r}, '--out', {str(tmp_path / 'out')!r}]))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "GPU H100, 79.1 GiB" in completed.stdout and "gpu check passed: all 1 rows ok" in completed.stdout


def stand_in_rows(monkeypatch, statuses: dict) -> None:
    """Rows that write ``statuses[row name]`` as their record at once (no model)."""
    def command(row, settings, result, deadline):
        record = json.dumps({"status": statuses[row.name], "detail": "stood in"})
        return [sys.executable, "-c", f"open({str(result)!r}, 'w').write({record!r})"]

    monkeypatch.setattr(runner, "row_command", command)


def test_a_rerun_of_a_few_rows_appends_and_the_table_and_markdown_merge_the_latest_of_each_row(tmp_path,
                                                                                                monkeypatch, capsys):
    jsonl, page = tmp_path / "rows.jsonl", tmp_path / "measurements.md"
    page.write_text(f"{TABLE_BEGIN}\nnot measured\n{TABLE_END}\n")
    common = ["--device", "cpu", "--jsonl", str(jsonl), "--out", str(tmp_path)]
    stand_in_rows(monkeypatch, {"versions": "ok", "official torch fp32": "FAIL"})
    assert runner.main(common + ["--only", "versions,official torch fp32"]) == 1
    stand_in_rows(monkeypatch, {"official torch fp32": "ok"})
    assert runner.main(common + ["--only", "official torch fp32", "--markdown", str(page)]) == 0
    assert [json.loads(line)["kind"] for line in jsonl.read_text().splitlines()] == ["plan", "row", "row", "plan",
                                                                                     "row"]
    capsys.readouterr()
    assert runner.main(["--table", str(jsonl), "--out", str(tmp_path)]) == 0
    assert "gpu check passed: all 2 rows ok" in capsys.readouterr().out
    written = page.read_text()
    assert "| versions | " in written and "| official torch fp32 | " in written and "2 runs merged" in written
    stand_in_rows(monkeypatch, {"versions": "ok"})  # other settings: a table of its own
    assert runner.main(common + ["--only", "versions", "--size", "640x360"]) == 0
    assert [row["row"] for row in runner.read_jsonl(jsonl)[1]] == ["versions"]


def test_a_stop_signal_is_ignored_once_stopping_and_held_back_while_a_record_is_written(tmp_path, monkeypatch):
    previous = {each: signal.getsignal(each) for each in runner.STOP_SIGNALS}
    try:
        with pytest.raises(runner.Stopped):
            runner.stop(signal.SIGTERM, None)
        assert all(signal.getsignal(each) == signal.SIG_IGN for each in runner.STOP_SIGNALS)
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
    held = []
    fsync = os.fsync
    monkeypatch.setattr(runner.os, "fsync", lambda fd: held.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
                        or fsync(fd))
    runner.RowLog(tmp_path / "rows.jsonl").write({"kind": "row"})
    assert set(runner.STOP_SIGNALS) <= held[0]
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_names_compared_on_fewer_than_half_the_crops_do_not_pass():
    import torch

    from clipomaly_ros.tools.gpu_check.naming_path import NAMES, CpuNaming

    naming = object.__new__(CpuNaming)  # compare() needs only the names' text embeddings
    naming.text = torch.eye(len(NAMES))
    decided = torch.eye(len(NAMES))[:4]  # each crop one name, far ahead of the next
    assert naming.compare(decided, decided, "fp32", waits=1)["problems"] == []
    tied = torch.ones(4, len(NAMES)) + torch.eye(len(NAMES))[:4] * torch.tensor([[1.0], [0], [0], [0]])
    compared = naming.compare(tied, tied, "fp32", waits=1)
    assert compared["crops_decided"] == 1 and compared["names_equal"]
    assert compared["problems"] == ["only 1 of 4 crops have a decided best name on the CPU (a lead over the next "
                                    "of more than 0.001): too few to compare"]


def test_the_naming_paths_ring_on_the_cpu_waits_for_pending_copies_and_sends_each_frames_own_crops(tiny_model_name,
                                                                                                   tmp_path):
    """The rehearsal's stand-in copies stay pending until waited on: a ring that refilled a buffer without waiting
    would cut two frames' crops from later frames' pixels, and its waits are counted."""
    import torch

    from clipomaly_ros import ClipomalyConfig
    from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend
    from clipomaly_ros.tools.gpu_check.naming_path import CpuNaming, check_frames, device_crop_embeddings
    from clipomaly_ros.tools.gpu_check.rows import test_frame

    config = ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu", cache_dir=str(tmp_path),
                             window_size=128)
    frames = check_frames(test_frame((320, 180), with_scene=False))
    on_device, waits = device_crop_embeddings(OpenClipBackend(config, precision="fp32"), config, frames)
    reference = CpuNaming(config, on_cuda=False).crop_embeddings(frames)
    assert waits == 2  # 10 frames through 8 buffers
    assert float(torch.nn.functional.cosine_similarity(on_device, reference, dim=-1).min()) >= 0.9999


def test_serving_is_watched_right_after_each_warm_up_with_one_and_eight_different_cameras(monkeypatch):
    """Nothing served outside a watch: a size left to the first served frame (a CUDA graph's recording) is seen on
    the first thread as on the restarted one."""
    import numpy as np

    from clipomaly_ros.tools.gpu_check import rows
    from clipomaly_ros.tools.gpu_check.serving import ServingThread

    log = []

    class Watch:
        events = []

        def __enter__(self):
            log.append("watch")
            return self

        def __exit__(self, *exc):
            log.append("end")

    class StandIn:
        backend = type("Backend", (), {"device": type("Device", (), {"type": "cpu"})()})()

        def warm_up(self, image_size):
            log.append("warm up")

        def batch(self, images):
            log.append(f"{len(images)} cameras, {len({int(image[0, 0, 0]) for image in images})} frames")
            return 1.0, 0.5

    monkeypatch.setattr(rows, "CompileWatch", Watch)
    frames = [np.full((4, 4, 3), index, np.uint8) for index in range(10)]
    serving = ServingThread()
    try:
        record = rows.serve(serving, StandIn(), frames, 2, until=0.0)
    finally:
        serving.close()
    assert log == ["warm up", "watch", "1 cameras, 1 frames", "8 cameras, 8 frames", "end", "warm up", "watch",
                   "1 cameras, 1 frames", "8 cameras, 8 frames", "1 cameras, 1 frames", "1 cameras, 1 frames",
                   "8 cameras, 8 frames", "8 cameras, 8 frames", "end"]
    assert record["compiled_while_serving"] == [] and serving.restarts == 1

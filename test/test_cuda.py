"""The CUDA path: runs where a GPU is present, skips with its reason elsewhere (CI has none)."""

import numpy as np
import pytest
import torch

from clipomaly_ros import Clipomaly, ClipomalyConfig
from clipomaly_ros.tools.scenes import render_street_scene

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
              pytest.mark.filterwarnings("ignore:.*RANDOM WEIGHTS")]


def test_pipeline_runs_in_fp16_on_the_gpu_and_keeps_its_maps_there(tiny_model_name, tmp_path):
    image, _ = render_street_scene(360, 640, planted="mattress")
    settings = dict(model=tiny_model_name, random_weights=True, inference_size=224, cache_dir=str(tmp_path))
    gpu = Clipomaly(ClipomalyConfig(device="cuda", **settings))
    cpu = Clipomaly(ClipomalyConfig(device="cpu", **settings))
    assert next(gpu.backend.model.parameters()).dtype == torch.float16
    result = gpu(image)
    assert result.computed_maps == []
    assert gpu.backend.dense_features(image).grid.device.type == "cuda"
    assert result.device.type == "cuda"
    reference = cpu(image)
    # fp16 against fp32: the same scores up to rounding
    assert np.abs(result.anomaly_score - reference.anomaly_score).mean() < 0.02
    assert (result.semantic == reference.semantic).mean() > 0.9
    batched = gpu.segment_batch([image, image[::2, ::2].copy()])
    assert [r.image_size for r in batched] == [(360, 640), (180, 320)]


def test_every_runtime_and_precision_matches_eager_fp32_on_the_gpu(tiny_model_name, tmp_path):
    """The real reference is eager PyTorch in fp32; a runtime that cannot run here fails with its reason."""
    from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend
    from clipomaly_ros.core.model.runtimes import onnx_unavailable

    settings = dict(model=tiny_model_name, random_weights=True, device="cuda", window_size=128,
                    inference_size=256, cache_dir=str(tmp_path))
    image, _ = render_street_scene(360, 640, planted="mattress")
    reference = OpenClipBackend(ClipomalyConfig(**settings), precision="fp32").dense_features(image).grid.float()
    failures = []
    for runtime in ("torch", "compile", "onnx"):
        missing = onnx_unavailable("cuda") if runtime == "onnx" else ""
        if missing:
            failures.append(f"onnx cannot run here: {missing}")
            continue
        for precision in ("fp16", "fp32"):
            backend = OpenClipBackend(ClipomalyConfig(runtime=runtime, **settings), precision=precision)
            backend.warm_up((360, 640), 2)
            grid = backend.dense_features(image).grid.float()
            cosine = float(torch.nn.functional.cosine_similarity(grid, reference, dim=-1).mean())
            if not cosine >= 0.999:
                failures.append(f"{runtime} {precision}: per-patch cosine to eager fp32 {cosine:.6f}")
            assert backend.runtime.health() == {}, (runtime, precision)
            backend.runtime.close()
    assert not failures, failures


def test_a_jpeg_decoded_on_the_gpu_goes_through_without_a_cpu_decode(tiny_model_name, tmp_path):
    import cv2

    from clipomaly_ros.core.images import decode_jpeg_on_device

    image, _ = render_street_scene(360, 640, planted="mattress")
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = decode_jpeg_on_device(jpeg, torch.device("cuda"))
    assert decoded.device.type == "cuda" and tuple(decoded.shape) == (360, 640, 3)
    pipeline = Clipomaly(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cuda",
                                         inference_size=224, cache_dir=str(tmp_path)))
    on_gpu, on_host = pipeline(decoded), pipeline(cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR),
                                                               cv2.COLOR_BGR2RGB))
    assert (on_gpu.semantic == on_host.semantic).mean() > 0.95  # two JPEG decoders, fp16


def test_naming_crops_cut_on_the_gpu_equal_the_cpu_s_and_the_pipeline_cuts_them_there(tiny_model_name, tmp_path,
                                                                                      monkeypatch):
    """roi_align's CUDA kernel against its CPU kernel, over crops that shrink (pyramid levels) and enlarge; and the
    pipeline on CUDA hands naming the frame it uploaded, so no crop is cut on the host."""
    from clipomaly_ros.core.method import naming
    from clipomaly_ros.core.method.unknown import CandidateRegion

    image, _ = render_street_scene(720, 1280, planted="mattress")
    regions = []
    for top, left, height, width in ((10, 20, 4, 4), (30, 40, 40, 100), (0, 0, 90, 160), (60, 100, 12, 30)):
        mask = np.zeros((90, 160), bool)
        mask[top:top + height, left:left + width] = True
        regions.append(CandidateRegion(mask, int(mask.sum()), (left, top, left + width - 1, top + height - 1)))
    on_cpu = naming.region_crops(torch.from_numpy(image), regions, 0.25, 0.3, (122, 116, 104), 224, "roi_align")
    on_gpu = naming.region_crops(torch.from_numpy(image).cuda(), regions, 0.25, 0.3, (122, 116, 104), 224)
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu() - on_cpu).abs().max() < 0.05  # grey levels: float rounding only

    devices = []
    cut = naming.region_crops
    monkeypatch.setattr(naming, "region_crops", lambda frame, *args: devices.append(frame.device.type) or cut(
        frame, *args))
    pipeline = Clipomaly(ClipomalyConfig(device="cuda", model=tiny_model_name, random_weights=True,
                                         inference_size=224, uncertainty_threshold=0.0, cache_dir=str(tmp_path)))
    pipeline(image)
    assert devices and set(devices) == {"cuda"}, devices


def test_the_ram_tagger_on_the_gpu_gives_the_cpus_probabilities_and_tags_a_pipeline_there(tiny_model_name, tmp_path,
                                                                                         monkeypatch):
    import dataclasses

    from clipomaly_ros.core.model import tagger
    from clipomaly_ros.core.model.tagger import TagList, load_tagger, tagger_input
    from tagger_fixture import TINY, tiny_model, write_checkpoint

    image, _ = render_street_scene(360, 640, planted="mattress")
    names = ("mattress", "deer", "abacus", "zoo", "tire", "rock")
    tags = TagList(names, np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32))
    monkeypatch.setattr(tagger.TagList, "released", classmethod(lambda cls: tags))
    width = Clipomaly(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu",
                                      cache_dir=str(tmp_path))).backend.embed_dim
    weights = write_checkpoint(tmp_path / "ram.pth",
                               tiny_model(architecture=dataclasses.replace(TINY, width=width), tags=tags))
    cpu, gpu = load_tagger(weights, device="cpu"), load_tagger(weights, device="cuda")
    host = tagger_input([image])
    on_device = tagger_input(torch.from_numpy(image).cuda())  # the GPU resize: within a grey level of PIL's
    assert float((on_device.cpu() - host).abs().max()) <= 1.01 / 255 / 0.224
    with torch.no_grad():  # cuDNN may run the patch embedding in TF32
        torch.testing.assert_close(gpu(host.cuda()).cpu(), cpu(host), atol=2e-3, rtol=0)
    pipeline = Clipomaly(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cuda",
                                         cache_dir=str(tmp_path), tagger_weights=str(weights), naming_source="tagger",
                                         inference_size=224, tagger_threshold=1.0))  # no open-set name fires
    assert next(pipeline.tagger.model.parameters()).device.type == "cuda"
    result = pipeline(image)
    assert result.tags.fresh and set(result.tags.names) == {"mattress", "deer"}


def test_a_compiled_runtime_warmed_on_a_restarted_thread_records_nothing_on_the_frames_it_serves(tiny_model_name,
                                                                                                  tmp_path):
    """As the node and `make gpu-check` serve: one warm-up for 1 and 8 cameras on a serving thread (which runs each
    batch size twice: CUDA graph trees run a new size eagerly first and record it on the second call), a restart of
    that thread and one warm-up there; then no compile and no CUDA graph recorded on served frames, while a batch
    size never warmed up, called twice, is seen recording by the same counters."""
    from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend
    from clipomaly_ros.core.model.runtimes import bucket
    from clipomaly_ros.tools.gpu_check.serving import CompileWatch, ServingThread

    image, _ = render_street_scene(360, 640, planted="mattress")
    config = ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cuda", runtime="compile",
                             window_size=128, inference_size=256, cache_dir=str(tmp_path))
    serving = ServingThread()
    backend = serving.call(OpenClipBackend, config)
    try:
        for _ in range(2):  # the first thread, then the restarted one
            for cameras in (1, 8):
                serving.call(backend.warm_up, image.shape[:2], cameras)
            if not serving.restarts:
                serving.restart()
        with CompileWatch() as served:
            for cameras in (1, 8, 1):
                serving.call(backend.dense_features_batch, [image] * cameras)
        assert served.events == []
        windows = len(backend.layout_for(image.shape[:2]).origins)
        unwarmed = [c for c in range(2, 8) if bucket(c * windows) not in {bucket(windows), bucket(8 * windows)}]
        if unwarmed:
            with CompileWatch() as cold:  # the first call at a new size is only the eager warm-up run
                for _ in range(2):
                    serving.call(backend.dense_features_batch, [image] * unwarmed[0])
            assert cold.events, "a batch size never warmed up recorded nothing the watch could see"
    finally:
        serving.call(backend.runtime.close)
        serving.close()

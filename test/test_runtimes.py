"""Runtimes of the window encoder: an ONNX export and torch.compile equal eager PyTorch, engines are tied to their
configuration, and the window layouts cost what the arithmetic says."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from clipomaly_ros import ClipomalyConfig
from clipomaly_ros.core.config import DENSE_METHODS
from clipomaly_ros.core.model.backend import ModelLoadError
from clipomaly_ros.core.model.dense import DenseVisionEncoder, plan_windows
from clipomaly_ros.core.model.export import ExportedGraph, describe_graph, export_onnx, weights_digest
from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend
from clipomaly_ros.core.model.runtimes import EagerRuntime, OnnxGraphRuntime, bucket, create_runtime

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM WEIGHTS")
onnxruntime = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

TINY_WINDOW = 128
"""The tiny ViT's windows in these tests: 8 x 8 patches. At its native 64 (16 patches) SC-CLIP's local outlier
factor has at most 15 neighbours to look at, and with every other token a neighbour the two tokens farthest apart
always tie for the largest factor (each one's k-distance is their distance); float rounding then picks the outlier,
so two correct runtimes may differ there. With 64 tokens and SC-CLIP's 30 neighbours there is no such tie."""


def per_patch_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())


def backend_for(model: str, tmp_path, **settings) -> OpenClipBackend:
    return OpenClipBackend(ClipomalyConfig(model=model, random_weights=True, device="cpu",
                                           cache_dir=str(tmp_path), **settings))


@pytest.fixture(scope="module")
def vit_b16(tmp_path_factory):
    return backend_for("ViT-B-16", tmp_path_factory.mktemp("b16"))


@pytest.fixture(scope="module")
def tiny(tiny_model_name, tmp_path_factory):
    return backend_for(tiny_model_name, tmp_path_factory.mktemp("tiny"), window_size=TINY_WINDOW)


def random_windows(count: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, side, side), generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("method", DENSE_METHODS)
@pytest.mark.parametrize("model", ["tiny", "vit_b16"])
def test_the_onnx_export_equals_eager_pytorch_for_every_dense_method(model, method, request, tmp_path):
    backend = request.getfixturevalue(model)
    encoder = DenseVisionEncoder(backend.model.visual, method)
    encoder.normalise_pixels(backend.mean, backend.std)
    spec = describe_graph(backend.model_name, encoder, backend.window)
    engine = OnnxGraphRuntime(export_onnx(encoder, spec, tmp_path / "encoder.onnx"), spec, torch.device("cpu"),
                              tmp_path)
    eager = EagerRuntime(encoder, backend.image_encoder)
    windows = random_windows(3, backend.window)  # the export traced 2: the batch size is dynamic
    with torch.inference_mode():
        patches, pooled = eager.dense(windows), eager.embed(windows)
    assert engine.dense(windows).shape == patches.shape
    assert per_patch_cosine(engine.dense(windows), patches) >= 0.9999
    assert per_patch_cosine(engine.embed(windows), pooled) >= 0.9999


def test_the_exported_graph_has_written_out_attention_and_its_record(tiny, tmp_path):
    import onnx

    spec = describe_graph(tiny.model_name, tiny.encoder, tiny.window)
    model = onnx.load(str(export_onnx(tiny.encoder, spec, tmp_path / "encoder.onnx")))
    operators = {node.op_type for node in model.graph.node}
    assert {"MatMul", "Softmax", "TopK"} <= operators  # SC-CLIP's outlier factor is inside the graph
    assert not {"Attention", "MultiHeadAttention", "ScaledDotProductAttention"} & operators
    assert max(opset.version for opset in model.opset_import if opset.domain == "") >= 17
    recorded = ExportedGraph.from_metadata({entry.key: entry.value for entry in model.metadata_props})
    assert recorded == spec and recorded.dense_method == "scclip" and recorded.window == TINY_WINDOW
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis


def test_an_engine_for_another_configuration_is_refused_with_a_one_line_reason(tiny, tiny_model_name, tmp_path):
    naclip = DenseVisionEncoder(tiny.model.visual, "naclip")
    naclip.normalise_pixels(tiny.mean, tiny.std)
    path = export_onnx(naclip, describe_graph(tiny_model_name, naclip, TINY_WINDOW), tmp_path / "naclip.onnx")
    with pytest.raises(ModelLoadError) as refused:
        backend_for(tiny_model_name, tmp_path, window_size=TINY_WINDOW, runtime="onnx", onnx_model=str(path))
    message = str(refused.value)
    assert "\n" not in message and "dense_method 'naclip' (configured: 'scclip')" in message
    other_weights = ExportedGraph(tiny_model_name, "0" * 16, "naclip", TINY_WINDOW, 16)
    with pytest.raises(ModelLoadError, match="weights '[0-9a-f]{16}' \\(configured: '0{16}'\\)"):
        OnnxGraphRuntime(path, other_weights, torch.device("cpu"), tmp_path)
    other_window = ExportedGraph(tiny_model_name, weights_digest(naclip.visual), "naclip", 64, 16)
    with pytest.raises(ModelLoadError, match="window 128 \\(configured: 64\\)"):
        OnnxGraphRuntime(path, other_window, torch.device("cpu"), tmp_path)
    bare = tmp_path / "bare.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 16, 16).eval(), (random_windows(1, 64),), str(bare), dynamo=True,
                      input_names=["windows"])
    with pytest.raises(ModelLoadError, match="no clipomaly metadata"):
        OnnxGraphRuntime(bare, other_weights, torch.device("cpu"), tmp_path)


def test_runtime_onnx_exports_once_into_the_cache_and_reuses_it(tiny_model_name, tmp_path):
    first = backend_for(tiny_model_name, tmp_path, window_size=TINY_WINDOW, runtime="onnx")
    engines = sorted((tmp_path / "engines").glob("*.onnx"))
    # the windows' graph, and CLIP's image encoder at its native 64 pixels for the naming crops
    assert [("scclip-w128" in e.name, "none-w64" in e.name) for e in engines] == [(False, True), (True, False)]
    stamps = [engine.stat().st_mtime_ns for engine in engines]
    second = backend_for(tiny_model_name, tmp_path, window_size=TINY_WINDOW, runtime="onnx")
    assert [engine.stat().st_mtime_ns for engine in engines] == stamps  # not exported again
    image = np.random.default_rng(1).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    torch.testing.assert_close(first.dense_features(image).grid, second.dense_features(image).grid)
    torch.testing.assert_close(first.encode_images([image]), second.encode_images([image]))
    assert "ONNX Runtime" in first.description


def test_runtime_onnx_without_onnxruntime_names_the_extra_in_one_line(tiny_model_name, tmp_path):
    code = ("import sys; sys.modules['onnxruntime'] = None; from clipomaly_ros.tools.cli import main; "
            f"sys.exit(main(['segment', 'x.png', '-o', {str(tmp_path)!r}, '--model', {tiny_model_name!r}, "
            "'--random-weights', '--device', 'cpu', '--runtime', 'onnx']))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in completed.stderr.splitlines() if line.startswith("clipomaly: error")]
    assert completed.returncode == 2, completed.stderr
    assert len(lines) == 1 and "clipomaly_ros[onnx]" in lines[0] and "runtime 'onnx'" in lines[0]


def test_compile_equals_eager_and_pads_batches_to_powers_of_two(tiny):
    compiled = create_runtime("compile", tiny.encoder, tiny.image_encoder, torch.device("cpu"))
    windows = random_windows(3, TINY_WINDOW, seed=2)  # padded to 4 inside, 3 rows back
    crops = random_windows(3, tiny.crop_size, seed=3)
    with torch.inference_mode():
        patches, pooled = compiled.dense(windows), compiled.embed(crops)
        assert patches.shape[0] == 3 and pooled.shape[0] == 3
        assert per_patch_cosine(patches, tiny.runtime.dense(windows)) >= 0.9999
        assert per_patch_cosine(pooled, tiny.runtime.embed(crops)) >= 0.9999
    assert [bucket(n) for n in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]


def test_under_cuda_graphs_the_warm_up_calls_each_batch_size_twice_so_a_served_frame_records_nothing(tiny):
    """CUDA graph trees run a new batch size eagerly on its first call and record it on the second: a warm-up that
    called each size once would leave the recording to the first served frame."""
    compiled = create_runtime("compile", tiny.encoder, tiny.image_encoder, torch.device("cpu"))
    calls = []
    compiled.dense = lambda batch: calls.append(("dense", batch.shape[0], batch.shape[-1]))
    compiled.embed = lambda batch: calls.append(("embed", batch.shape[0], batch.shape[-1]))
    compiled.warm_up([3, 8], [1], TINY_WINDOW, 64)
    assert calls == [("dense", 4, TINY_WINDOW), ("dense", 8, TINY_WINDOW), ("embed", 1, 64)]  # compiled once
    calls.clear()
    compiled.cuda_graphs = True  # as on a GPU
    compiled.warm_up([3, 8], [1], TINY_WINDOW, 64)
    assert calls == [("dense", 4, TINY_WINDOW)] * 2 + [("dense", 8, TINY_WINDOW)] * 2 + [("embed", 1, 64)] * 2


def named_regions(runtime: str, model: str, cache_dir) -> list[list[tuple]]:
    """Each frame's anomalies on a short synthetic drive: name, box, and every candidate name with its score."""
    from clipomaly_ros.core.method.pipeline import Clipomaly
    from clipomaly_ros.tools.scenes import synthetic_drive

    pipeline = Clipomaly(ClipomalyConfig(model=model, random_weights=True, device="cpu", cache_dir=str(cache_dir),
                                         window_size=TINY_WINDOW, inference_size=TINY_WINDOW, runtime=runtime,
                                         uncertainty_threshold=0.6, min_region_area=50))
    assert pipeline.backend.crop_size == 64  # crops at the tiny ViT's native size, not the 128 of the windows
    return [[(a.name, a.bbox, a.candidates) for a in pipeline(frame.image).anomalies]
            for frame in synthetic_drive(seconds=2.0, rate_hz=4.0, height=180, width=320)]


def test_names_and_candidate_scores_under_every_runtime_equal_eager(tiny_model_name, tmp_path):
    """Naming crops run at the model's native size (64) under onnx too, on a second graph: with crops resized to
    the 128-pixel windows the candidate scores move by far more than 1e-3."""
    eager = named_regions("torch", tiny_model_name, tmp_path)
    assert sum(map(len, eager)) >= 5  # the random model finds regions: the comparison is not of empty lists
    for runtime in ("onnx", "compile"):
        other = named_regions(runtime, tiny_model_name, tmp_path)
        assert [[(name, bbox) for name, bbox, _ in frame] for frame in other] == \
            [[(name, bbox) for name, bbox, _ in frame] for frame in eager], runtime
        for frame, frame_eager in zip(other, eager):
            for (_, _, candidates), (_, _, candidates_eager) in zip(frame, frame_eager):
                assert [name for name, _ in candidates] == [name for name, _ in candidates_eager], runtime
                assert np.allclose([score for _, score in candidates], [score for _, score in candidates_eager],
                                   atol=1e-3, rtol=0), runtime


def test_the_light_layout_has_a_quarter_of_the_official_tokens_and_the_published_cost(vit_b16):
    official = vit_b16.layout_cost((720, 1280))
    light_layout = plan_windows((720, 1280), 448, 224, ClipomalyConfig(window_layout="light").stride_for(224), 16)
    assert (official.windows, len(light_layout.origins)) == (32, 8)
    assert official.tokens == 32 * 197
    assert official.gflop / 32 == pytest.approx(35.2, rel=0.01)  # ViT-B/16 at 224, as published
    config = ClipomalyConfig(window_layout="light")
    assert (config.working_short_side, config.stride_for(224)) == (448, 224)
    assert ClipomalyConfig(window_layout="light", inference_size=336, window_stride=112).stride_for(224) == 112


def test_a_frame_decoded_into_a_tensor_gives_what_its_array_gives(tiny_model_name, tmp_path):
    from clipomaly_ros.core.method.pipeline import Clipomaly
    from clipomaly_ros.tools.scenes import synthetic_drive

    pipeline = Clipomaly(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu",
                                         cache_dir=str(tmp_path), uncertainty_threshold=0.6, min_region_area=50))
    image = synthetic_drive(seconds=2.0, rate_hz=2.0, height=180, width=320)[-1].image
    from_array, from_tensor = pipeline(image), pipeline(torch.from_numpy(image))
    assert from_array.anomalies
    assert from_tensor.anomalies == from_array.anomalies and from_tensor.labels == from_array.labels
    np.testing.assert_array_equal(from_tensor.semantic, from_array.semantic)


def test_clipomaly_export_writes_a_checked_engine_that_the_node_settings_can_run(tiny_model_name, tmp_path, capsys):
    from clipomaly_ros.tools.cli import main

    path = tmp_path / "tiny_naclip.onnx"
    assert main(["export", "-o", str(path), "--model", tiny_model_name, "--random-weights", "--device", "cpu",
                 "--dense-method", "naclip"]) == 0
    printed = capsys.readouterr().out
    assert path.is_file() and "dense method naclip, window 64, fp32" in printed
    assert float(printed.split("per-patch cosine >= ")[1].split()[0]) >= 0.9999
    backend = backend_for(tiny_model_name, tmp_path, dense_method="naclip", runtime="onnx", onnx_model=str(path))
    assert backend.runtime.name == "onnx" and "tiny_naclip.onnx" in backend.description
    half = tmp_path / "tiny_fp16.onnx"
    assert main(["export", "-o", str(half), "--model", tiny_model_name, "--random-weights", "--device", "cpu",
                 "--dtype", "fp16"]) == 0
    engine = onnxruntime.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert engine.get_inputs()[0].type == "tensor(float16)"


def test_an_fp16_export_types_layernorm_and_softmax_fp32_for_a_strongly_typed_tensorrt_build(tiny, tmp_path):
    """TensorRT is given the export's own types (strongly typed: its fp16 flag stays off), so the export must carry
    the precision: fp16 matmuls, every LayerNormalization and Softmax fed in fp32."""
    import collections

    import onnx

    from clipomaly_ros.core.model.runtimes import choose_providers

    half = OpenClipBackend(ClipomalyConfig(model="clipomaly-tiny-vit", random_weights=True, device="cpu",
                                           window_size=TINY_WINDOW, cache_dir=str(tmp_path)), precision="fp16")
    path = export_onnx(half.encoder, describe_graph("clipomaly-tiny-vit", half.encoder, TINY_WINDOW),
                       tmp_path / "half.onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*graph.value_info, *graph.input, *graph.output]}
    types.update({initializer.name: initializer.data_type for initializer in graph.initializer})
    fed = collections.Counter((node.op_type, onnx.TensorProto.DataType.Name(types.get(node.input[0], 0)))
                              for node in graph.node if node.op_type in ("LayerNormalization", "Softmax", "MatMul"))
    assert fed[("LayerNormalization", "FLOAT")] >= 2 and fed[("Softmax", "FLOAT")] >= 2
    assert fed[("LayerNormalization", "FLOAT16")] == 0 and fed[("Softmax", "FLOAT16")] == 0
    assert fed[("MatMul", "FLOAT16")] > fed[("MatMul", "FLOAT")]  # the heavy work stays in fp16
    providers = choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                 torch.device("cuda"), tmp_path / "trt", 8, TINY_WINDOW)
    assert providers[0][0] == "TensorrtExecutionProvider" and providers[0][1]["trt_fp16_enable"] is False

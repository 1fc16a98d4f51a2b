"""The CUDA path: runs where a GPU is present, skips with its reason elsewhere (CI has none)."""

import numpy as np
import pytest
import torch

from clipomaly_ros import Clipomaly, ClipomalyConfig
from clipomaly_ros.core.scenes import render_street_scene

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

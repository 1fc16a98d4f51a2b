"""The GPU paths that a CPU can prove: hazards imitated here (copies that finish late, another thread), each case
failing on the code before its fix. What only a GPU can confirm is in test_cuda.py and scripts/gpu_check.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipomaly_ros.core.model.staging import PinnedStaging
from clipomaly_ros.tools.gpu_check.naming_path import HostCopyEngine as LateCopyEngine  # copies that finish late


def crops(count: int, shape=(40, 30, 3)) -> list[np.ndarray]:
    return [np.full(shape, 10 * (index + 1), dtype=np.uint8) for index in range(count)]


def test_a_copy_that_completes_late_still_carries_its_own_image():
    engine = LateCopyEngine()
    staging = PinnedStaging(engine, ring_size=2)
    images = crops(5) + [np.full((60, 50, 3), 200, dtype=np.uint8)]
    uploaded = [staging.upload(image) for image in images]  # faster than the device copies
    engine.drain()
    for image, tensor in zip(images, uploaded):
        assert torch.equal(tensor, torch.from_numpy(image))
    assert staging.waits >= len(images) - 2  # every upload after the ring wrapped waited for the copy before


def test_only_a_wrap_that_finds_its_copy_pending_counts_as_a_wait():
    engine = LateCopyEngine()
    staging = PinnedStaging(engine, ring_size=2)
    for image in crops(2):
        staging.upload(image)
    engine.drain()  # the device caught up: the wrap finds both copies done
    for image in crops(2):
        staging.upload(image)
    assert staging.waits == 0
    staging.upload(crops(1)[0])  # the copy from this buffer is still queued
    assert staging.waits == 1


def test_the_late_device_would_corrupt_a_shared_buffer():
    """The imitation is faithful: one buffer refilled per upload (the staging before the ring) loses every crop but
    the last, as CUDA would."""
    engine = LateCopyEngine()
    shared = engine.pinned(40 * 30 * 3).view(40, 30, 3)
    uploaded = []
    for image in crops(3):
        shared.numpy()[...] = image
        uploaded.append(engine.copy(shared)[0])
    engine.drain()
    assert [int(tensor[0, 0, 0]) for tensor in uploaded] == [30, 30, 30]


def test_buffers_grow_to_the_largest_image_and_no_further():
    engine = LateCopyEngine()
    staging = PinnedStaging(engine, ring_size=3)
    for side in (10, 50, 20, 30, 40, 5):
        staging.upload(np.zeros((side, side, 3), dtype=np.uint8))
    engine.drain()
    assert sum(slot.buffer.numel() for slot in staging._slots) <= 3 * 50 * 50 * 3
    with pytest.raises(ValueError):
        PinnedStaging(engine, ring_size=0)


class PixelMeanEncoder(torch.nn.Module):
    """A window encoder small enough to compile in seconds: per-patch features are a linear map of 8x8 patch
    means."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    @property
    def weight(self) -> torch.Tensor:
        return self.proj.weight

    def forward_pixels(self, windows: torch.Tensor):
        patches = torch.nn.functional.avg_pool2d(windows, 8).permute(0, 2, 3, 1)
        return self.proj(windows.mean(dim=(2, 3))), self.proj(patches)


def test_a_compiled_runtime_past_its_recompile_limit_runs_eager_and_says_so():
    from clipomaly_ros.core.model.runtimes import CompiledRuntime

    torch._dynamo.reset()  # graphs compiled by earlier tests in this process would count against the limit
    encoder = PixelMeanEncoder()
    runtime = CompiledRuntime(encoder, encoder, torch.device("cpu"))
    try:
        assert runtime.health() == {}
        with torch._dynamo.config.patch(recompile_limit=1), torch.inference_mode():
            for side in (16, 24, 40):  # each crop size a new graph: the second is past the limit
                crops = torch.rand(1, 3, side, side) * 255
                assert torch.allclose(runtime.embed(crops), encoder.forward_pixels(crops)[0], atol=1e-5)
        health = runtime.health()
        assert health["batches run eager (recompile limit hit)"] == 2  # the 24 and the 40
        assert health["last recompile"].startswith("(1, 3, 40, 40)")
    finally:
        runtime.close()


def test_closing_a_compiled_runtime_drops_its_compiled_graphs_and_weights():
    """What close() frees is dynamo's cache on the encoder's code: the compiled graphs and, under CUDA graphs, their
    memory pool and static inputs (which on the CPU's inductor hold nothing that would keep the weights alive, so
    the weights alone would not tell). Without the reset the cache entries stay for the life of the process."""
    import gc
    import weakref

    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from clipomaly_ros.core.model.runtimes import CompiledRuntime, EagerRuntime

    torch._dynamo.reset()
    encoder = PixelMeanEncoder()
    weight = weakref.ref(encoder.proj.weight)
    runtime = CompiledRuntime(encoder, encoder, torch.device("cpu"))
    with torch.inference_mode():
        runtime.dense(torch.rand(2, 3, 16, 16) * 255)
    assert len(_debug_get_cache_entry_list(EagerRuntime.dense.__code__)) >= 1
    runtime.close()
    assert _debug_get_cache_entry_list(EagerRuntime.dense.__code__) == []
    del encoder, runtime
    gc.collect()
    assert weight() is None

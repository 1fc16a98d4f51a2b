"""The naming path as the node runs it, compared with the CPU's: frames go up through the pinned staging ring
(more of them than it has buffers, so that it wraps and waits for earlier copies), the crops are cut from the
uploaded frames on the device (``naming.region_crops``) and embedded by the runtime under check; the same crops cut
from the same frames on the CPU and embedded by eager PyTorch in fp32 must give the same names."""

from __future__ import annotations

import numpy as np

from ...core.method.naming import region_crops
from ...core.method.unknown import CandidateRegion

NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "tire", "deer",
         "mattress", "cardboard box", "traffic cone", "shopping cart", "suitcase", "rock", "dog", "bicycle wheel")
FRAMES = 10
"""Frames uploaded back to back before any crop is cut: more than the staging ring's 8 buffers."""
DECIDED = {"fp32": 1e-3, "fp16": 5e-3, "tf32": 5e-3}
"""A crop's name is compared only where the CPU's best name leads the next by more than this (rounding); TF32
(TensorRT's fp32) has fp16's mantissa."""
MIN_CROP_COSINE = {"fp32": 0.9999, "fp16": 0.999, "tf32": 0.999}


class LateCopy:
    """A queued copy that reads its source only when the device gets to it (:meth:`synchronize`, or the engine's
    :meth:`HostCopyEngine.drain`), as CUDA's do."""

    def __init__(self, source, target):
        self.source, self.target, self.ran = source, target, False

    def query(self) -> bool:
        return self.ran

    def synchronize(self) -> None:
        if not self.ran:
            self.target.copy_(self.source)
            self.ran = True


class HostCopyEngine:
    """The staging ring's copies on a CPU (the rehearsal, and the CPU tests of the ring): a device whose copies
    complete late. Nothing is read from a buffer until its copy is waited on or until :meth:`drain` (the device
    catching up with its queue), so a ring that refilled a buffer without waiting would send another frame's
    pixels, and the ring's waits are counted as on a GPU."""

    def __init__(self):
        self.queued: list[LateCopy] = []

    def pinned(self, nbytes: int):
        import torch

        return torch.empty(nbytes, dtype=torch.uint8)

    def copy(self, source):
        import torch

        target = torch.full_like(source, 7)  # what the device memory held before
        self.queued.append(LateCopy(source, target))
        return target, self.queued[-1]

    def drain(self) -> None:
        for copy in self.queued:
            copy.synchronize()
        self.queued.clear()


def check_frames(image: np.ndarray) -> list[np.ndarray]:
    """:data:`FRAMES` different frames made from ``image`` (each shifted sideways), so that a crop cut from a
    buffer refilled too early shows another frame's pixels."""
    return [np.ascontiguousarray(np.roll(image, 97 * index, axis=1)) for index in range(FRAMES)]


def check_regions(height: int, width: int) -> list[CandidateRegion]:
    """Two regions on a coarse map of an (``height``, ``width``) frame (an eighth of its size): one small, one
    wide, as unknown-region detection hands them to naming."""
    rows, cols = max(8, height // 8), max(8, width // 8)
    regions = []
    for top, left, tall, wide in ((rows // 2, cols // 3, rows // 6, cols // 12), (rows // 3, cols // 2, rows // 3,
                                                                                  cols // 3)):
        mask = np.zeros((rows, cols), bool)
        mask[top:top + max(1, tall), left:left + max(1, wide)] = True
        regions.append(CandidateRegion(mask, int(mask.sum()), (left, top, left + max(1, wide) - 1,
                                                              top + max(1, tall) - 1)))
    return regions


def device_crop_embeddings(backend, config, frames: list[np.ndarray]) -> tuple[object, int]:
    """Crop embeddings ``(FRAMES * 2, D)`` float32 on the CPU as the node makes them on ``backend``'s device: every
    frame uploaded first (the backend's staging ring on CUDA; a ring over :class:`HostCopyEngine` on a CPU), then
    each frame's crops cut there and embedded in one batch. Also how often the ring waited for a copy."""
    import torch

    from ...core.model.staging import PinnedStaging

    staging = backend.staging if backend.staging is not None else PinnedStaging(HostCopyEngine())
    waits = staging.waits
    if backend.device.type == "cuda":  # the copies queue behind ~30 ms of device work, so the wrap finds them pending
        with torch.cuda.device(backend.device):
            torch.cuda._sleep(50_000_000)
    uploaded = [staging.upload(frame) for frame in frames]
    if isinstance(staging.engine, HostCopyEngine):
        staging.engine.drain()  # the device reaches the copies before the crops are cut (a stream's order)
    regions = check_regions(*frames[0].shape[:2])
    embeddings = []
    with torch.inference_mode():
        for frame in uploaded:
            crops = region_crops(frame, regions, config.crop_margin, config.crop_background,
                                 tuple(backend.mean_colour), backend.crop_size)
            embeddings.append(backend.encode_crops(crops).float().cpu())
    return torch.cat(embeddings), staging.waits - waits


class CpuNaming:
    """The reference: eager PyTorch in fp32 on the CPU, the same crops cut on the CPU the way the device cuts them
    (``roi_align`` for a GPU, the host resize on a CPU), and the text embeddings of :data:`NAMES`."""

    def __init__(self, config, on_cuda: bool):
        import dataclasses

        from ...core.model.open_clip_backend import OpenClipBackend

        cpu = dataclasses.replace(config, device="cpu", runtime="torch")
        self.config = cpu
        self.backend = OpenClipBackend(cpu, precision="fp32")
        self.method = "roi_align" if on_cuda else None
        self.text = self.backend.encode_text([f"a photo of a {name}." for name in NAMES])

    def crop_embeddings(self, frames: list[np.ndarray]):
        import torch

        regions = check_regions(*frames[0].shape[:2])
        with torch.inference_mode():
            return torch.cat([self.backend.encode_crops(region_crops(
                torch.from_numpy(frame), regions, self.config.crop_margin, self.config.crop_background,
                tuple(self.backend.mean_colour), self.backend.crop_size, self.method)) for frame in frames])

    def compare(self, reference, on_device, precision: str, waits: int) -> dict:
        """Names and crop cosines of ``on_device`` against ``reference`` (both ``(N, D)``): a record's fields, with
        ``problems`` listing what failed."""
        import torch

        scores_cpu, scores_device = reference @ self.text.T, on_device @ self.text.T
        top = scores_cpu.topk(2, dim=-1)
        decided = (top.values[:, 0] - top.values[:, 1]) > DECIDED[precision]
        names_cpu, names_device = scores_cpu.argmax(-1).tolist(), scores_device.argmax(-1).tolist()
        unequal = [i for i in range(len(names_cpu)) if decided[i] and names_cpu[i] != names_device[i]]
        cosine = float(torch.nn.functional.cosine_similarity(reference, on_device, dim=-1).min())
        problems = []
        if unequal:
            device_names, cpu_names = [NAMES[names_device[i]] for i in unequal], [NAMES[names_cpu[i]] for i in unequal]
            problems.append(f"names differ from the CPU's on crops {unequal}: {device_names} against {cpu_names}")
        if not cosine >= MIN_CROP_COSINE[precision]:  # NaN fails too
            problems.append(f"a crop embedding's cosine to the CPU's is {cosine:.6f} < {MIN_CROP_COSINE[precision]}")
        if int(decided.sum()) < len(names_cpu) // 2:  # names compared on a few crops prove little
            problems.append(f"only {int(decided.sum())} of {len(names_cpu)} crops have a decided best name on the "
                            f"CPU (a lead over the next of more than {DECIDED[precision]}): too few to compare")
        if waits < 1:
            problems.append(f"the staging ring never found a copy pending when it wrapped ({FRAMES} frames): its wait "
                            "for a copy was not exercised")
        return {"crops": len(names_cpu), "crops_decided": int(decided.sum()), "names_equal": not unequal,
                "crop_cosine_min": round(cosine, 6), "staging_waits": waits, "problems": problems}


__all__ = ["CpuNaming", "HostCopyEngine", "LateCopy", "check_frames", "check_regions", "device_crop_embeddings",
           "NAMES", "FRAMES"]

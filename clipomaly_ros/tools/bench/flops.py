"""The bench's arithmetic model: windows, tokens and GFLOP of a frame per window layout, the RAM++ tagger's GFLOP a
run, and what a Jetson AGX Orin would take for them. Estimates from counting, not measurements."""

from __future__ import annotations

ORIN_FP16_TFLOPS = 42.5
"""Jetson AGX Orin's dense fp16 tensor-core peak: 64 tensor cores x 1.3 GHz x 512 FLOP a clock."""
ORIN_EFFICIENCY = (0.35, 0.7)
"""Share of that peak a TensorRT ViT keeps (the issue's 40-100 ms for 1.1-1.6 TFLOP lies in it)."""


def orin_ms_estimate(gflop: float) -> list[float]:
    """[fastest, slowest] milliseconds a Jetson AGX Orin would take for ``gflop`` GFLOP, by
    :data:`ORIN_FP16_TFLOPS` x :data:`ORIN_EFFICIENCY`."""
    return [round(gflop / (ORIN_FP16_TFLOPS * share), 1) for share in reversed(ORIN_EFFICIENCY)]


def layout_profiles(pipeline, size: tuple[int, int]) -> dict:
    """Per window layout (official, light, as each defines its short side and stride; the model's window): windows,
    tokens and GFLOP of one ``size`` = (width, height) frame, and the milliseconds a Jetson AGX Orin would take for
    them (:func:`orin_ms_estimate`); ``crop_gflop``: one naming crop's. Empty for a backend without a ViT."""
    backend = pipeline.backend
    if not hasattr(backend, "layout_cost"):
        return {}
    from ...core.model.dense import layout_cost, plan_windows

    profiles = {}
    for layout in ("official", "light"):
        config = pipeline.config.replace(window_layout=layout, inference_size=0, window_stride=0)  # as defined
        plan = plan_windows((size[1], size[0]), config.working_short_side, backend.window,
                            config.stride_for(backend.window), backend.encoder.patch_size[0])
        cost = layout_cost(backend.encoder, plan)
        profiles[layout] = {"windows": cost.windows, "tokens": cost.tokens, "gflop": round(cost.gflop, 3),
                            "working_size": f"{plan.resized[1]}x{plan.resized[0]}",
                            "orin_ms_estimate": orin_ms_estimate(cost.gflop)}
    crop = layout_cost(backend.encoder, plan_windows((backend.crop_size,) * 2, backend.crop_size, backend.crop_size,
                                                     backend.crop_size, backend.encoder.patch_size[0]))
    profiles["crop_gflop"] = round(crop.gflop, 3)
    return profiles


def tagger_gflop(tagger) -> float:
    """GFLOP of one RAM++ run on one 384 x 384 image, counted by PyTorch's FLOP counter."""
    import torch
    import torch.utils.flop_counter

    size = tagger.model.image_size
    with torch.inference_mode(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        tagger.model(torch.zeros(1, 3, size, size, device=tagger.device))
    return counter.get_total_flops() / 1e9


def format_layouts(report: dict) -> list[str]:
    """The window layouts' table of a bench report (none when the backend has no ViT)."""
    profiles = report.get("layouts")
    if not profiles:
        return []
    lines = ["", f"window layouts at {report['size']} (this run: {report['window_layout']}, runtime "
                 f"{report['runtime']})",
             f"{'layout':<10}{'working':>10}{'windows':>9}{'tokens':>8}{'GFLOP':>8}  Jetson AGX Orin, ms "
             f"(estimate: {ORIN_EFFICIENCY[0]:.0%}-{ORIN_EFFICIENCY[1]:.0%} of {ORIN_FP16_TFLOPS} TFLOP/s fp16)"]
    for name in ("official", "light"):
        profile = profiles[name]
        lines.append(f"{name:<10}{profile['working_size']:>10}{profile['windows']:>9}{profile['tokens']:>8}"
                     f"{profile['gflop']:>8.0f}  {profile['orin_ms_estimate'][0]:.0f}-"
                     f"{profile['orin_ms_estimate'][1]:.0f}")
    lines.append(f"each named region adds one crop: {profiles['crop_gflop']:.0f} GFLOP")
    return lines

"""The bench report as text: the stages' table, the node's and the planner's costs, then each part's own lines
(the arithmetic model, the ground-accuracy check and the memory soak each format theirs)."""

from __future__ import annotations

from ..ground_accuracy import format_ground_errors
from .flops import format_layouts
from .soak import format_soak

STAGE_LABELS = {"features": "dense image features", "tagging": "RAM++ tagger (a batch's run; 0 between runs)",
                "unknown": "unknown detection", "naming": "naming",
                "extension": "final segmentation (extension)", "output": "results (records; maps are lazy)",
                "total": "pipeline total", "backbone": "  of which inside the vision transformer"}
"""The stages of ``stage_ms`` the table shows, in its order, with their labels."""


def format_bench(report: dict) -> str:
    """The whole report of :func:`~.runner.run_bench` for a terminal."""
    lines = _stage_table(report) + _output_lines(report) + _extra_lines(report) + format_layouts(report)
    if report.get("runtime_health"):
        lines.append("RUNTIME FELL BACK, these figures are partly eager's: " + "; ".join(
            f"{key} {value}" for key, value in report["runtime_health"].items()))
    lines.append(f"peak resident {report['peak_resident_mb']:.0f} MB"
                 + (f"; GPU peak {report['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in report else ""))
    return "\n".join(lines)


def _stage_table(report: dict) -> list[str]:
    """The header and one row of milliseconds per stage, then the host's, the node's, the vocabulary's, the
    planner's and the tracker's."""
    lines = [f"clipomaly bench: {report['backend']}; {report['size']} input"
             + (f", working {report['working_size']}, {report['windows']} windows" if "windows" in report else "")
             + f"; median of {report['frames']} frames", "", f"{'stage':<44}{'ms':>10}", "-" * 54]
    for stage, label in STAGE_LABELS.items():
        if stage in report["stage_ms"]:
            lines.append(f"{label:<44}{report['stage_ms'][stage]:>10.1f}")
    lines.append(f"{'host time outside the backbone':<44}{report['host_ms_outside_backbone']:>10.1f}")
    for label, ms in report["node_publish_ms"].items():
        lines.append(f"{'node conversion + publish, ' + label:<44}{ms:>10.1f}")
    lines.append(f"{'text: known classes, uncached':<44}{report['text_known_classes_ms']:>10.1f}")
    lines.append(f"{'live vocabulary change, 10 names':<44}{report['vocabulary_change_10_names_ms']:>10.1f}")
    lines.append(f"{'planner step (3D + tracks) of this frame':<44}{report['planner_ms']:>10.2f}")
    lines.append(f"{'tracker alone, max_regions anomalies':<44}{report['tracker_ms']:>10.2f}")
    return lines


def _output_lines(report: dict) -> list[str]:
    """Where every output's time goes, frames a second end to end and the host's share per window layout."""
    parts = report["every_output_ms"]
    lines = [f"every output, its parts: full-size maps {parts['maps']:.1f} ms, pictures drawn "
             f"{parts['pictures']:.1f} ms, messages built {parts['building']:.2f} ms ("
             + ", ".join(f"{name} {ms:.2f}" for name, ms in list(parts["building_by_output"].items())[:3])
             + ", ...)"]
    lines += ["", f"node cost measured with {report['node_publish_with']}",
              "end to end (pipeline + anomalies published): "
              + ", ".join(f"{label}: {fps:.3f} frames/s" for label, fps in report["fps"].items())]
    for layout, table in report.get("host_ms_per_frame", {}).items():
        lines.append(f"host ms a frame outside the transformer, {layout} layout: " + (table if isinstance(table, str)
                     else "; ".join(f"{label}: " + ", ".join(f"{count} {ms:.1f}" for count, ms in row.items())
                                    for label, row in table.items())))
    return lines


def _extra_lines(report: dict) -> list[str]:
    """The tagger's and calibration's costs, the ground check and the memory soak, each where the run has it."""
    lines = []
    if "tagger" in report:
        cost = report["tagger"]
        lines.append(f"RAM++ tagger (every {cost['period']} frames; {cost['runs']} runs in {cost['frames']} frames): "
                     f"{cost['ms_per_run']:.1f} ms and {cost['gflop_per_run']:.1f} GFLOP a run, "
                     f"{cost['ms_per_frame']:.1f} ms and {cost['gflop_per_frame']:.1f} GFLOP a frame amortised")
    if "calibration" in report:
        cost = report["calibration"]
        lines.append(f"calibrate, per setting and image after the first pass: {cost['per_setting_ms']:.1f} ms, against "
                     f"{cost['evaluate_ms']:.1f} ms for an evaluate run ({cost['speed_up']:.0f}x)")
    if "ground_errors" in report:
        lines.append(format_ground_errors(report["ground_errors"]))
    if "memory" in report:
        lines.append(format_soak(report["memory"]))
    return lines

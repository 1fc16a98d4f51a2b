"""What ``clipomaly calibrate`` writes and prints: the parameter file (TUNED.yaml, which the node and every command
read), the JSON of the whole search beside it, and the summary on the terminal.

The parameter file holds every core setting of the pipeline that was scored whose value is not the default (only
``cache_dir``, a local folder, is left out), so the node that reads it runs the pipeline that was scored. What the
calibration knows is in comments at its head (a parameter file has no room for other keys): the data's content
hash, frames and drives, the rule, the decision, the expected gain on unseen frames with its interval, and the
objective on ``--val``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import yaml

from ...core.config import CORE_SETTINGS, NODE_NAME, SETTINGS_BY_NAME, ClipomalyConfig
from .search import CalibrationReport
from .statistics import OBJECTIVES, SEARCHED

NOT_WRITTEN = ("cache_dir",)
"""Core settings left out of the file: where this machine keeps its caches says nothing about the tuning."""


def tuned_parameter_file(report: CalibrationReport, config: ClipomalyConfig, identity: str) -> str:
    """TUNED.yaml: a parameter-file section (``/**/clipomaly``: any namespace) with the chosen values and every
    other setting of ``config`` that is not the default, headed by comments (see the module docstring)."""
    lines = [f"# Tuned by clipomaly calibrate on {date.today().isoformat()}.", *knowledge(report),
             f"# Weights: {identity}; dense method {config.dense_method}, working short side "
             f"{config.working_short_side} pixels. Other weights need their own calibration.",
             "# The whole search is in the JSON file beside this one. Use: --config THIS_FILE, or the node's "
             "params_file / --params-file."]
    values = {name: _plain(getattr(config, name)) for name in CORE_SETTINGS
              if name not in SEARCHED and name not in NOT_WRITTEN
              and getattr(config, name) != SETTINGS_BY_NAME[name].default}
    values.update({name: report.chosen[name] for name in SEARCHED})
    body = yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": values}}, sort_keys=False,
                          default_flow_style=False, width=1000)
    return "\n".join(lines) + "\n" + body


def knowledge(report: CalibrationReport) -> list[str]:
    """The comment lines that say what the calibration knows (see docs/calibration.md)."""
    _, key, direction, meaning = OBJECTIVES[report.objective]
    lines = [f"# Objective: {report.objective} ({meaning}; {direction} is better).",
             f"# Data: {report.data}: {report.images} frames, {report.drives or 'no named'} drive(s); content sha256 "
             f"{report.data_hash}.",
             f"# On the searched frames: {_figure(report.chosen, key)} with these settings, "
             f"{_figure(report.default, key)} with the settings it started from.",
             f"# Rule: {report.rule}.",
             f"# Decision: {report.decision}."]
    if report.expected_gain is not None:
        low, high = report.gain_interval
        lines.append(f"# Expected gain on unseen frames: {report.expected_gain:+.4f} in {key} (95 % interval "
                     f"{low:+.4f} .. {high:+.4f}), by {report.folds}-fold cross-validation of the whole search "
                     f"({report.grouping}).")
    else:
        lines.append("# Expected gain on unseen frames: not estimated (the search found nothing better, or nothing "
                     "it searched changes the objective).")
    if report.validation:
        validation = report.validation
        lines.append(f"# Held-out data (--val): {validation['data']}: {validation['images']} frames, content sha256 "
                     f"{validation['data_hash']}: {_figure(validation['chosen'], key)} with these settings, "
                     f"{_figure(validation['default'], key)} with the settings it started from.")
    else:
        lines.append("# No held-out data was given (--val): the expected gain above is the only figure on frames "
                     "that did not choose the setting.")
    return lines


def _figure(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "none" if value is None else f"{value:.4f}"


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def write_outputs(report: CalibrationReport, config: ClipomalyConfig, identity: str, output: Path,
                  plots: Path | None = None) -> list[Path]:
    """TUNED.yaml at ``output``, the JSON of the whole search beside it, and with ``plots`` the curves."""
    from ..plots import plot_calibration_curves

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(tuned_parameter_file(report, config, identity))
    search = output.with_suffix(".json")
    search.write_text(json.dumps(report.as_dict(), indent=1, default=float) + "\n")
    written = [output, search]
    if plots is not None:
        written.append(plot_calibration_curves(report, plots / "calibration_curves.png"))
    return written


def format_report(report: CalibrationReport) -> str:
    """The chosen settings against the starting ones, the rule's figures and the search's cost."""
    _, key, direction, meaning = OBJECTIVES[report.objective]

    def row(name: str, metrics: dict) -> str:
        values = "  ".join(f"{m} {'-' if metrics.get(k) is None else f'{metrics[k]:.3f}'}"
                           for m, (_, k, _, _) in OBJECTIVES.items())
        return f"{name:<25}{values}"

    lines = [f"objective: {report.objective} ({meaning}; {direction} is better)",
             report.decision,
             "chosen:   " + ", ".join(f"{name} {report.chosen[name]}" for name in SEARCHED),
             "started:  " + ", ".join(f"{name} {report.default[name]}" for name in SEARCHED),
             row("searched data, chosen", report.chosen), row("searched data, started", report.default)]
    if report.validation:
        lines += [row("held-out, chosen", report.validation["chosen"]),
                  row("held-out, started", report.validation["default"])]
    timing = report.timing
    lines.append(f"{timing['settings']} settings on {report.images} images: first pass {timing['first_pass_s']:.1f} s "
                 f"({timing['per_image_first_pass_ms']:.0f} ms an image; backbone passes this run: "
                 f"{report.backbone_passes}), then {timing['per_setting_ms']:.0f} ms per setting; crops encoded: "
                 f"{report.crops_encoded}; images read {timing['images_read']} times (more than once each: past "
                 "--memory-budget)")
    return "\n".join(lines)

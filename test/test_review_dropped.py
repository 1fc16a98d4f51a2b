"""The regions naming dropped are exposed on the result for review, and change nothing the node publishes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from clipomaly_ros import Clipomaly, ClipomalyConfig
from clipomaly_ros.core.method.pipeline import dropped_regions
from clipomaly_ros.tools.scenes import render_street_scene


def test_a_region_best_named_by_a_known_class_is_dropped_and_kept_for_review(tmp_path):
    image, truth = render_street_scene(240, 320, planted="mattress", seed=0)
    reported = Clipomaly(ClipomalyConfig(backend="toy", cache_dir=str(tmp_path)))(image)
    assert [a.name for a in reported.anomalies] == ["mattress"] and reported.dropped == []
    (tmp_path / "names.txt").write_text("car\nperson\n")    # nothing but known classes can name it
    explained = Clipomaly(ClipomalyConfig(backend="toy", cache_dir=str(tmp_path), anomaly_vocabulary=(),
                                          naming_dictionary=str(tmp_path / "names.txt")))(image)
    assert explained.anomalies == [] and explained.rejected == [explained.dropped[0].name]
    (dropped,) = explained.dropped
    assert dropped.known and dropped.name in explained.labels[:explained.known_count]
    assert dropped.candidates[0] == (dropped.name, dropped.score)
    mask = dropped.mask()
    assert mask.shape == (240, 320) and (mask & truth).sum() / (mask | truth).sum() > 0.7
    x0, y0, x1, y1 = dropped.box()
    assert mask[y0:y1 + 1, x0:x1 + 1].sum() == mask.sum()


def test_a_name_no_pixel_took_is_dropped_as_unknown():
    region = SimpleNamespace(mask=np.eye(4, dtype=bool))
    verdicts = [SimpleNamespace(name="sofa", score=0.4, is_known=False, candidates=(("sofa", 0.4),), region=region),
                SimpleNamespace(name="tire", score=0.9, is_known=False, candidates=(("tire", 0.9),), region=region)]
    (dropped,) = dropped_regions(verdicts, ["tire"], (8, 8))
    assert (dropped.name, dropped.known) == ("sofa", False)
    assert np.array_equal(dropped.mask(), np.kron(np.eye(4, dtype=int), np.ones((2, 2), dtype=int)).astype(bool))

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from clipomaly_ros.tools.metrics import ComponentScores, ConfusionMatrix, MetricError, PixelScores


def quantised(scores):
    return np.round(scores * 65535) / 65535


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_match_scikit_learn_over_several_images(seed):
    rng = np.random.default_rng(seed)
    metric, all_scores, all_labels = PixelScores(), [], []
    for _ in range(3):
        labels = rng.random((20, 30)) < 0.2
        scores = np.clip(rng.normal(0.4 + 0.3 * labels, 0.2), 0, 1)
        scores[rng.random(scores.shape) < 0.1] = 0.5  # ties
        valid = rng.random((20, 30)) > 0.1
        metric.add(scores, labels, valid)
        all_scores.append(quantised(scores[valid]))
        all_labels.append(labels[valid])
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    summary = metric.summary()
    assert summary["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert summary["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert summary["fpr_at_95_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-9)
    assert summary["anomaly_pixels"] == labels.sum()


def test_pixel_metrics_by_hand():
    metric = PixelScores()
    scores = np.array([[0.9, 0.8, 0.3, 0.1]])
    metric.add(scores, np.array([[True, False, True, False]]), np.ones((1, 4), bool))
    summary = metric.summary()
    assert summary["auprc"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))   # precision 1 at recall .5, 2/3 at 1
    assert summary["auroc"] == pytest.approx(0.75)
    assert summary["fpr_at_95_tpr"] == pytest.approx(0.5)


def test_no_anomaly_pixels_is_a_clear_error():
    metric = PixelScores()
    metric.add(np.random.rand(4, 4), np.zeros((4, 4), bool), np.ones((4, 4), bool))
    with pytest.raises(MetricError, match="no anomaly pixels"):
        metric.summary()


def test_component_metrics_by_hand():
    truth = np.zeros((10, 10), bool)
    truth[1:3, 1:5] = True          # component A: 8 px
    truth[6:8, 6:8] = True          # component B: 4 px, missed entirely
    predicted = np.zeros((10, 10), bool)
    predicted[1:3, 3:7] = True      # overlaps A on 4 px, 4 px outside
    predicted[8:10, 0:2] = True     # a false positive: 4 px
    void = np.zeros((10, 10), bool)
    void[1:3, 6:7] = True           # 2 of the prediction's outside pixels are void
    metric = ComponentScores()
    metric.add(predicted, truth, void)
    # A: intersection 4; union = A (8) + prediction outside A, not void (2) = 10 -> 0.4; B: 0
    assert metric.siou == pytest.approx([0.4, 0.0])
    # prediction 1 (void removed): 6 px, 4 on truth -> 2/3; prediction 2: 0
    assert metric.ppv == pytest.approx([2 / 3, 0.0])
    summary = metric.summary()
    # tau < 0.4: TP 1, FN 1, FP 1 -> F1 0.5 (0.25, 0.30, 0.35); tau >= 0.4: TP 0, FN 2, FP 1 or 2
    # FP: ppv <= tau -> at 0.40..0.65: 1 -> F1 0; at >= 2/3 (0.70, 0.75): 2 -> F1 0
    assert summary["mean_f1"] == pytest.approx(3 * 0.5 / 11)
    assert summary["mean_siou"] == pytest.approx(0.2)


def test_other_truth_components_are_not_counted_against_siou():
    truth = np.zeros((4, 10), bool)
    truth[:, 0:3] = True
    truth[:, 5:8] = True
    predicted = np.zeros((4, 10), bool)
    predicted[:, 0:8] = True        # one prediction covering both and the gap
    metric = ComponentScores()
    metric.add(predicted, truth, np.zeros((4, 10), bool))
    # for each truth component: union excludes the other component's 12 px: 12 / (12 + 8 gap) = 0.6
    assert metric.siou == pytest.approx([0.6, 0.6])
    assert metric.ppv == pytest.approx([24 / 32])


def test_confusion_matrix_iou_counts_anomaly_predictions_as_misses():
    truth = np.array([[0, 0, 1, 1, 255]])
    predicted = np.array([[0, 1, 1, 5, 0]])  # 5: an anomaly id beyond the 2 known classes
    matrix = ConfusionMatrix(2)
    matrix.add(predicted, truth, ignore_id=255)
    np.testing.assert_allclose(matrix.iou(), [1 / 2, 1 / 3])

"""train_host.metrics against hand-computed examples."""
import numpy as np
import pytest

from train_host import metrics as M


def probs_for(predictions, n_classes, confidence=0.8):
    """Probability rows whose arg-max is ``predictions``."""
    rows = np.full((len(predictions), n_classes), (1.0 - confidence) / (n_classes - 1))
    rows[np.arange(len(predictions)), predictions] = confidence
    return rows


def test_binary_by_hand():
    # abnormal = 0 (positive), normal = 1.  Truth: 3 abnormal, 2 normal.
    classes = ["abnormal", "normal"]
    y_true = [0, 0, 0, 1, 1]
    p_abnormal = np.array([0.9, 0.8, 0.4, 0.3, 0.6])  # predictions 0, 0, 1, 1, 0
    probs = np.stack([p_abnormal, 1 - p_abnormal], axis=1)
    m = M.classification_metrics(y_true, probs, classes)
    # confusion [[2, 1], [1, 1]]: Se = 2/3, Sp = 1/2
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["abnormal"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["per_class"]["abnormal"]["specificity"] == pytest.approx(1 / 2)
    assert m["per_class"]["normal"]["sensitivity"] == pytest.approx(1 / 2)
    assert m["per_class"]["normal"]["specificity"] == pytest.approx(2 / 3)
    # MAcc = (Se + Sp) / 2 = 7/12, which is also balanced accuracy and the ICBHI score here
    for key in ("balanced_accuracy", "macro_sensitivity", "macro_specificity", "icbhi_score"):
        assert m[key] == pytest.approx(7 / 12), key
    assert m["icbhi_sensitivity"] == pytest.approx(2 / 3) and m["icbhi_specificity"] == pytest.approx(1 / 2)
    # MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 − 1) / 6
    assert m["mcc"] == pytest.approx(1 / 6)
    # AUC of abnormal: positive scores .9 .8 .4 vs negative .3 .6 → 5 of 6 pairs ordered
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert "abnormal" in m["roc_auc_kind"]


def test_icbhi_four_way_style_by_hand():
    classes = ["crackle", "normal", "wheeze"]
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    m = M.classification_metrics(y_true, probs_for(y_pred, 3), classes)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [1, 0, 0]]
    # ICBHI: SE = correct abnormal / abnormal = (1 + 0) / 3, SP = 2 / 3
    assert m["icbhi_sensitivity"] == pytest.approx(1 / 3)
    assert m["icbhi_specificity"] == pytest.approx(2 / 3)
    assert m["icbhi_score"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["macro_sensitivity"] == pytest.approx(7 / 18)
    assert m["macro_specificity"] == pytest.approx((3 / 4 + 2 / 3 + 4 / 5) / 3)
    # multi-class MCC = (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)) = (18 − 14) / 22
    assert m["mcc"] == pytest.approx(2 / 11)
    assert m["accuracy"] == pytest.approx(1 / 2)


def test_auc_one_vs_rest_by_hand_and_missing_class():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 1])  # class c never occurs
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1]])
    m = M.classification_metrics(y_true, probs, classes)
    # a vs rest: positives .7 .4, negatives .3 .5 → ordered pairs (.7,.3) (.7,.5) (.4,.3) = 3/4
    assert m["per_class"]["a"]["roc_auc"] == pytest.approx(3 / 4)
    # b vs rest: positives .6 .4, negatives .2 .5 → (.6,.2) (.6,.5) (.4,.2) = 3/4
    assert m["per_class"]["b"]["roc_auc"] == pytest.approx(3 / 4)
    assert m["per_class"]["c"]["roc_auc"] is None
    assert m["roc_auc"] == pytest.approx(3 / 4)
    assert m["per_class"]["c"]["sensitivity"] is None and m["per_class"]["c"]["support"] == 0
    # no normal class: the ICBHI score falls back to (macro SE + macro SP) / 2 and says so
    assert "no normal class" in m["icbhi_definition"]


def test_recording_level_means_window_probabilities():
    recordings = ["r1", "r1", "r2", "r3", "r3", "r3"]
    y_true = [0, 0, 1, 1, 1, 1]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4], [0.0, 1.0]])
    ids, labels, means = M.aggregate_recordings(recordings, y_true, probs)
    assert ids == ["r1", "r2", "r3"] and labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(means, [[0.6, 0.4], [0.2, 0.8], [0.4, 0.6]])
    levels = M.evaluate_levels(y_true, probs, recordings, ["abnormal", "normal"])
    assert levels["window"]["accuracy"] == pytest.approx(3 / 6)  # windows 0, 2, 5 right
    assert levels["recording"]["accuracy"] == 1.0 and levels["recording"]["n"] == 3


def test_recording_with_per_cycle_labels_is_aggregated_per_label():
    """ICBHI: cycles of one recording carry different labels; each label of it is one unit."""
    recordings = ["r1", "r1", "r1", "r2"]
    ids, labels, means = M.aggregate_recordings(recordings, [0, 1, 0, 1],
                                                [[0.8, 0.2], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
    assert ids == ["r1#0", "r1#1", "r2"] and labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(means, [[0.7, 0.3], [0.1, 0.9], [0.3, 0.7]])


def test_normal_class_detection_and_selection():
    assert M.find_normal_class(["AS", "MR", "MS", "MVP", "N"]) == 4
    assert M.find_normal_class(["abnormal", "normal"]) == 1
    assert M.find_normal_class(["Healthy", "Unhealthy"]) == 0
    assert M.find_normal_class(["cat", "dog"]) is None
    assert M.find_normal_class(["cat", "dog"], "dog") == 1
    with pytest.raises(ValueError):
        M.find_normal_class(["cat", "dog"], "cow")
    m = {"balanced_accuracy": 0.7, "icbhi_score": None, "accuracy": 0.9, "roc_auc": 0.8}
    assert M.selection_value(m, "auc") == 0.8
    assert M.selection_value(m, "balanced_accuracy") == 0.7
    assert M.selection_value(m, "icbhi") == 0.0
    assert M.selection_value(m, "accuracy") == 0.9


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        M.classification_metrics([0, 3], probs_for([0, 1], 2), ["a", "b"])
    with pytest.raises(ValueError):
        M.classification_metrics([0, 1], [[np.nan, 1.0], [0.5, 0.5]], ["a", "b"])
    with pytest.raises(ValueError):
        M.classification_metrics([], np.zeros((0, 2)), ["a", "b"])


def test_balanced_threshold_by_hand():
    # positives score 0.3, 0.6, 0.9; negatives 0.1, 0.2, 0.4, 0.7: the best rule calls >= 0.5 positive
    # (Se 2/3, Sp 3/4) only if nothing beats it; >= 0.25 gives Se 1, Sp 2/4 = 0.75 balanced: the best
    is_positive = [True, True, True, False, False, False, False]
    scores = [0.3, 0.6, 0.9, 0.1, 0.2, 0.4, 0.7]
    threshold, balanced = M.balanced_threshold(is_positive, scores)
    assert threshold == pytest.approx(0.25) and balanced == pytest.approx(0.75)
    # the rule the threshold names gives the balanced accuracy it reports
    called = np.array(scores) >= threshold
    se = called[np.array(is_positive)].mean()
    sp = 1 - called[~np.array(is_positive)].mean()
    assert (se + sp) / 2 == pytest.approx(balanced)


def test_balanced_threshold_ties_stay_nearest_the_argmax_rule():
    # perfectly separated: every threshold between 0.2 and 0.8 is perfect; the one nearest 0.5 is chosen
    threshold, balanced = M.balanced_threshold([False, False, True, True], [0.1, 0.2, 0.8, 0.9])
    assert balanced == 1.0 and threshold == pytest.approx(0.5)
    threshold, balanced = M.balanced_threshold([False, True], [0.1, 0.3])
    assert balanced == 1.0 and threshold == pytest.approx(0.2)


def test_balanced_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        M.balanced_threshold([True, True], [0.4, 0.6])
    with pytest.raises(ValueError, match="both classes"):
        M.balanced_threshold([True, False], [0.4])

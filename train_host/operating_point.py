"""Choose a model's decision rule (its operating point) on labelled recordings, at recording level.

    block = choose_rule(classes, labels, mean_probabilities, split="val", target_sensitivity=None)

``labels`` (class index per recording) and ``mean_probabilities`` ((n, N): each recording's mean window
probabilities, as evaluate.py and the device's exam compute them).  For a model with a normal class
(``normal``, ``N``, ``healthy``, or ``normal_class``) the rule is a threshold on P(abnormal) = 1 − P(normal):

- by default the one with the best balanced accuracy (Se + Sp) / 2 on these recordings
  (``train_host.metrics.balanced_threshold``: candidates halfway between consecutive distinct scores, ties
  to the candidate nearest 0.5, the argmax rule of a two-class softmax);
- with ``target_sensitivity`` S: the largest candidate whose sensitivity reaches S (the most specific rule
  that still finds S of the abnormal recordings).

Models without a normal class keep argmax, and the block says so.  The block records what the rule was
chosen on (split, number of recordings and of abnormal ones, Se / Sp / MAcc there).  The result is
``stetho.decision``'s block, stored in model.json.
"""
import numpy as np

from stetho.decision import DECISION_VERSION, DecisionRule
from train_host import metrics as M


class OperatingPointError(ValueError):
    """The recordings cannot choose a threshold (one class only, a target no threshold reaches): says why."""


def candidates(scores):
    """Thresholds worth trying on ``scores``: halfway between consecutive distinct values, and one below the
    lowest and above the highest (the same set ``metrics.balanced_threshold`` searches)."""
    distinct = np.unique(np.asarray(scores, dtype=np.float64))
    return np.concatenate([[distinct[0] - 1e-6], (distinct[1:] + distinct[:-1]) / 2.0, [distinct[-1] + 1e-6]])


def rates_at(is_positive, scores, threshold):
    """(Se, Sp) of the rule ``score >= threshold → positive``."""
    is_positive = np.asarray(is_positive, dtype=bool)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    return float(called[is_positive].mean()), float(1.0 - called[~is_positive].mean())


def sensitivity_threshold(is_positive, scores, target):
    """The largest candidate threshold whose sensitivity on these scores is at least ``target`` (0 < target ≤ 1)."""
    is_positive = np.asarray(is_positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not 0.0 < target <= 1.0:
        raise OperatingPointError("target sensitivity %r must be in (0, 1]" % (target,))
    if not is_positive.any():
        raise OperatingPointError("no abnormal recording: a sensitivity cannot be measured")
    reaching = [t for t in candidates(scores) if rates_at(is_positive, scores, t)[0] >= target - 1e-12]
    return float(max(reaching))  # the lowest candidate calls everything positive: Se 1 always reaches


def choose_rule(classes, labels, mean_probabilities, normal_class=None, target_sensitivity=None, split="val",
                dataset=None):
    """The ``decision`` block for a model of ``classes`` from labelled recordings (see module doc).

    Raises OperatingPointError, saying why, when a threshold rule cannot be chosen on these recordings
    (a single class among them).
    """
    classes = list(classes)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(mean_probabilities, dtype=np.float64).reshape(len(labels), len(classes))
    normal = M.find_normal_class(classes, normal_class)
    chosen_on = {"split": split, "recordings": int(labels.size)}
    if dataset:
        chosen_on["dataset"] = dataset
    if normal is None:
        return {"version": DECISION_VERSION, "rule": "argmax", "chosen_on": chosen_on,
                "reason": "no normal class among %s (name one with --normal-class for a threshold rule)"
                          % ", ".join(classes)}
    is_positive = labels != normal
    chosen_on["positives"] = int(is_positive.sum())
    if labels.size == 0 or is_positive.all() or not is_positive.any():
        raise OperatingPointError(
            "%s has %d recording(s), %d of them abnormal: a threshold needs both normal and abnormal recordings"
            % (split, labels.size, int(is_positive.sum())))
    scores = 1.0 - probs[:, normal]
    if target_sensitivity is None:
        threshold, _ = M.balanced_threshold(is_positive, scores)
        objective = "max balanced accuracy"
    else:
        threshold = sensitivity_threshold(is_positive, scores, float(target_sensitivity))
        objective = "sensitivity >= %.2f" % float(target_sensitivity)
    se, sp = rates_at(is_positive, scores, threshold)
    chosen_on.update(sensitivity=se, specificity=sp, balanced_accuracy=(se + sp) / 2.0)
    block = {"version": DECISION_VERSION, "rule": "threshold", "normal_class": classes[normal],
             "threshold": float(threshold), "objective": objective,
             "target_sensitivity": None if target_sensitivity is None else float(target_sensitivity),
             "chosen_on": chosen_on}
    DecisionRule(block, classes)  # the block the device will read must be valid
    return block


def argmax_block(reason, split="val"):
    """The block of a model whose operating point could not be chosen: argmax, with the reason."""
    return {"version": DECISION_VERSION, "rule": "argmax", "reason": reason, "chosen_on": {"split": split}}


def verdicts(block, classes, mean_probabilities):
    """Class index of each recording under the rule ``block`` (None: argmax)."""
    rule = DecisionRule(block, classes)
    return np.array([rule.decide(row).index for row in np.asarray(mean_probabilities, dtype=np.float64)],
                    dtype=np.int64)

"""Clinical classification metrics, window-level and recording-level (scikit-learn underneath).

Inputs everywhere: ``y_true`` (int class indices, shape (n,)) and ``probs``
(float class probabilities, shape (n, N), rows summing to 1).  The predicted
class is the arg-max of a row.

Definitions (all values in [0, 1], ``None`` where undefined):

- sensitivity of class c (recall, SE): TP / (TP + FN), over the windows whose true class is c;
- specificity of class c (SP): TN / (TN + FP), class c against the rest;
- macro SE / macro SP: the unweighted means over classes that occur in ``y_true``;
- balanced accuracy (MAcc): macro SE (sklearn ``balanced_accuracy_score``); for two classes it is
  (Se + Sp) / 2, the PhysioNet/CinC 2016 "MAcc";
- ICBHI score (Rocha et al. 2019): (SE + SP) / 2 with SE = correctly classified abnormal windows
  (every class but the normal one, exact class) / all abnormal windows, and SP = correctly classified
  normal windows / all normal windows.  It needs a normal class (``find_normal_class``); without one it
  falls back to (macro SE + macro SP) / 2 and says so in ``icbhi_definition``;
- MCC: Matthews correlation coefficient (multi-class form, sklearn);
- ROC AUC: binary: the AUC of the positive (abnormal) class; multi-class: the macro mean of the
  one-vs-rest AUCs of the classes that have both positives and negatives (``roc_auc_per_class``).

Recording level: the window probabilities of each recording are averaged (``aggregate_recordings``)
and the same metrics computed on the recordings.
"""
import collections
import math
import warnings

import numpy as np

NORMAL_NAMES = ("normal", "healthy", "n")


def find_normal_class(classes, normal_class=None):
    """Index of the normal class: ``normal_class`` if given, else a class named normal/healthy/N; or None."""
    if normal_class is not None:
        if normal_class not in classes:
            raise ValueError("normal class %r is not one of the classes %s" % (normal_class, list(classes)))
        return list(classes).index(normal_class)
    lowered = [name.lower() for name in classes]
    for name in NORMAL_NAMES:
        if name in lowered:
            return lowered.index(name)
    return None


def positive_class(classes, normal_index):
    """Index of the 'positive' class of a two-class problem: the one that is not normal (else index 1)."""
    if len(classes) != 2:
        return None
    return 1 - normal_index if normal_index is not None else 1


def _number(value):
    """float, or None for NaN/None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _ratio(num, den):
    return float(num) / float(den) if den else None


def check_inputs(y_true, probs):
    """Validate and convert: int (n,) labels and float (n, N) probabilities."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or y_true.ndim != 1 or probs.shape[0] != y_true.shape[0]:
        raise ValueError("need y_true (n,) and probs (n, N); got %s and %s" % (y_true.shape, probs.shape))
    if y_true.size == 0:
        raise ValueError("no samples to evaluate")
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise ValueError("labels must lie in [0, %d)" % probs.shape[1])
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or Inf")
    return y_true, probs


def confusion(y_true, y_pred, n_classes):
    """N×N confusion matrix: rows are true classes, columns predicted classes."""
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def rates(cm):
    """Per-class (sensitivity, specificity) lists from a confusion matrix (None where undefined)."""
    cm = np.asarray(cm, dtype=np.int64)
    total = cm.sum()
    sensitivity, specificity = [], []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fn = cm[c, :].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = total - tp - fn - fp
        sensitivity.append(_ratio(tp, tp + fn))
        specificity.append(_ratio(tn, tn + fp))
    return sensitivity, specificity


def icbhi(cm, normal_index):
    """(score, SE, SP) of the ICBHI challenge from a confusion matrix (see module doc)."""
    cm = np.asarray(cm, dtype=np.int64)
    abnormal = [c for c in range(cm.shape[0]) if c != normal_index]
    se = _ratio(sum(cm[c, c] for c in abnormal), sum(cm[c, :].sum() for c in abnormal))
    sp = _ratio(cm[normal_index, normal_index], cm[normal_index, :].sum())
    score = None if se is None or sp is None else (se + sp) / 2.0
    return score, se, sp


def roc_auc(y_true, probs):
    """Per-class one-vs-rest ROC AUC (None for a class without positives or negatives)."""
    from sklearn.metrics import roc_auc_score
    out = []
    for c in range(probs.shape[1]):
        target = y_true == c
        if target.all() or not target.any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(target, probs[:, c])))
    return out


def _mean(values):
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def classification_metrics(y_true, probs, classes, normal_class=None, y_pred=None):
    """Every metric of the module doc for one set of predictions; a JSON-ready dict.

    ``y_pred``: the predicted class of each sample when a rule other than argmax decides (e.g. the model's stored
    operating point, ``stetho.decision``); the ROC AUC still ranks by ``probs``.
    """
    from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef
    y_true, probs = check_inputs(y_true, probs)
    classes = list(classes)
    if probs.shape[1] != len(classes):
        raise ValueError("probabilities have %d columns for %d classes" % (probs.shape[1], len(classes)))
    if y_pred is None:
        y_pred = probs.argmax(axis=1)
    else:
        y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
        if y_pred.shape != y_true.shape or y_pred.min() < 0 or y_pred.max() >= len(classes):
            raise ValueError("y_pred must give a class index in [0, %d) for each of the %d samples"
                             % (len(classes), y_true.size))
    cm = confusion(y_true, y_pred, len(classes))
    sensitivity, specificity = rates(cm)
    present = [c for c in range(len(classes)) if cm[c, :].sum() > 0]
    macro_se = _mean([sensitivity[c] for c in present])
    macro_sp = _mean([specificity[c] for c in present])
    normal_index = find_normal_class(classes, normal_class)
    if normal_index is not None and cm[normal_index, :].sum() > 0 and len(present) > 1:
        score, icbhi_se, icbhi_sp = icbhi(cm, normal_index)
        definition = "ICBHI: SE over abnormal classes, SP on class %r" % classes[normal_index]
    else:
        icbhi_se, icbhi_sp = macro_se, macro_sp
        score = None if macro_se is None or macro_sp is None else (macro_se + macro_sp) / 2.0
        definition = "no normal class present: (macro SE + macro SP) / 2"
    auc = roc_auc(y_true, probs)
    positive = positive_class(classes, normal_index)
    if positive is not None:
        auc_value, auc_kind = auc[positive], "binary, positive class %r" % classes[positive]
    else:
        auc_value, auc_kind = _mean(auc), "macro one-vs-rest over %d classes" % sum(a is not None for a in auc)
    if len(present) > 1:
        mcc = float(matthews_corrcoef(y_true, y_pred))
    else:
        mcc = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when y_pred has classes y_true lacks
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "n": int(y_true.size),
        "classes": classes,
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": balanced,
        "macro_sensitivity": _number(macro_se),
        "macro_specificity": _number(macro_sp),
        "icbhi_score": _number(score),
        "icbhi_sensitivity": _number(icbhi_se),
        "icbhi_specificity": _number(icbhi_sp),
        "icbhi_definition": definition,
        "mcc": _number(mcc),
        "roc_auc": _number(auc_value),
        "roc_auc_kind": auc_kind,
        "per_class": collections.OrderedDict(
            (name, {"sensitivity": _number(sensitivity[c]), "specificity": _number(specificity[c]),
                    "roc_auc": _number(auc[c]), "support": int(cm[c, :].sum()),
                    "predicted": int(cm[:, c].sum())})
            for c, name in enumerate(classes)),
        "confusion_matrix": cm.tolist(),
    }


def aggregate_recordings(recordings, y_true, probs):
    """Mean window probabilities per recording.

    Returns (recording ids in first-seen order, their labels, their mean probabilities).
    Where a recording's windows carry different labels (ICBHI: each breathing cycle has its own label),
    the unit is the recording *and* label: one entry per label, id ``'<recording>#<label index>'``,
    so every window still counts once and no label is averaged into another.
    """
    y_true, probs = check_inputs(y_true, probs)
    if len(recordings) != y_true.size:
        raise ValueError("%d recording ids for %d windows" % (len(recordings), y_true.size))
    labels_of = collections.defaultdict(set)
    for recording, label in zip(recordings, y_true.tolist()):
        labels_of[recording].add(label)
    order, rows = [], collections.defaultdict(list)
    for index, (recording, label) in enumerate(zip(recordings, y_true.tolist())):
        key = recording if len(labels_of[recording]) == 1 else "%s#%d" % (recording, label)
        if key not in rows:
            order.append(key)
        rows[key].append(index)
    labels = [int(y_true[rows[key][0]]) for key in order]
    means = [probs[rows[key]].mean(axis=0) for key in order]
    return order, np.asarray(labels, dtype=np.int64), np.asarray(means, dtype=np.float64)


def evaluate_levels(y_true, probs, recordings, classes, normal_class=None, decide=None):
    """{'window': metrics, 'recording': metrics} (see classification_metrics).

    ``decide``: a function from a probability matrix (n, N) to class indices (n,) used instead of argmax (the
    model's stored rule); None: argmax.
    """
    _, rec_true, rec_probs = aggregate_recordings(recordings, y_true, probs)
    window_pred = None if decide is None else decide(np.asarray(probs, dtype=np.float64))
    recording_pred = None if decide is None else decide(rec_probs)
    return {"window": classification_metrics(y_true, probs, classes, normal_class, window_pred),
            "recording": classification_metrics(rec_true, rec_probs, classes, normal_class, recording_pred)}


def balanced_threshold(is_positive, scores):
    """The threshold t on ``scores`` whose rule ``score ≥ t → positive`` has the best balanced accuracy.

    Parameters: ``is_positive`` booleans (n,), ``scores`` floats (n,) (e.g. recording-level P(abnormal));
    both classes must be present.  Candidates are the midpoints between consecutive distinct scores (and
    one below the lowest / above the highest); among equally good ones the candidate nearest 0.5 (the
    argmax rule of a binary softmax) wins, so a tie never moves the operating point for nothing.
    Returns (threshold, balanced accuracy (Se + Sp) / 2 on these scores).
    """
    is_positive = np.asarray(is_positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if is_positive.size != scores.size or not is_positive.any() or is_positive.all():
        raise ValueError("balanced_threshold needs scores of both classes (got %d positive of %d)"
                         % (int(is_positive.sum()), scores.size))
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1e-6], (distinct[1:] + distinct[:-1]) / 2.0, [distinct[-1] + 1e-6]])
    called = scores[None, :] >= candidates[:, None]
    se = called[:, is_positive].mean(axis=1)
    sp = 1.0 - called[:, ~is_positive].mean(axis=1)
    balanced = (se + sp) / 2.0
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    chosen = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return float(candidates[chosen]), float(balanced[chosen])


SELECT_KEYS = {"balanced_accuracy": "balanced_accuracy", "icbhi": "icbhi_score", "accuracy": "accuracy",
               "auc": "roc_auc"}


def selection_value(metrics, select):
    """The number a model is selected by (``select``: balanced_accuracy, icbhi, accuracy or auc); None → 0.

    ``auc`` is the ROC AUC (binary: P(positive class); more classes: the macro one-vs-rest mean): it ranks
    without a threshold, so on a small validation set it moves less from epoch to epoch than an accuracy.
    """
    value = metrics.get(SELECT_KEYS[select])
    return 0.0 if value is None else float(value)

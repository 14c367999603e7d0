"""The model's decision rule: how a recording's mean probabilities become one verdict.

Every accuracy figure of this project is recording level: the mean of a recording's window (or cycle)
probabilities, then a rule.  The rule is chosen on validation recordings after training
(``train_host/operating_point.py``) and stored in ``model.json`` as a versioned ``decision`` block, so the
workstation's report and the device's exam verdict apply the same rule to the same arithmetic.

Two rules (``DECISION_VERSION`` 1)::

    {"version": 1, "rule": "argmax", "reason": "..."}
    {"version": 1, "rule": "threshold", "normal_class": "normal", "threshold": 0.37,
     "objective": "max balanced accuracy" | "sensitivity >= 0.90", "target_sensitivity": null | 0.9,
     "chosen_on": {"split": "val", "recordings": 130, "positives": 40, "sensitivity": .., "specificity": ..,
                   "balanced_accuracy": .., "dataset": "<fingerprint>"}}

``threshold``: abnormal when P(abnormal) = 1 − P(normal class) ≥ threshold; the verdict is then the most
probable of the other classes (for a normal/abnormal model: 'abnormal'), else the normal class.
``argmax``: the most probable class (models without a normal class, and cards without a block).

Python 3.6, numpy only.
"""
import collections

import numpy as np

from .errors import ConfigError

DECISION_VERSION = 1
RULES = ("argmax", "threshold")

Verdict = collections.namedtuple("Verdict", "label index confidence p_abnormal")
Verdict.__doc__ = ("One decision: label (class name), index (its class index), confidence (its mean probability), "
                   "p_abnormal (1 − P(normal), or None for an argmax rule).")


class DecisionRule(object):
    """A validated ``decision`` block for ``classes`` (``None``: argmax, as cards without the block)."""

    def __init__(self, block, classes, where="model.json"):
        self.classes = list(classes)
        self.block = dict(block) if block else {"version": DECISION_VERSION, "rule": "argmax",
                                                "reason": "the model card has no decision block"}
        self.stored = bool(block)
        version = self.block.get("version")
        if version != DECISION_VERSION:
            raise ConfigError("%s: decision block version %r is not supported (this software reads %d)"
                              % (where, version, DECISION_VERSION))
        self.rule = self.block.get("rule")
        if self.rule not in RULES:
            raise ConfigError("%s: decision rule %r is not one of %s" % (where, self.rule, ", ".join(RULES)))
        self.threshold = None
        self.normal_index = None
        if self.rule == "threshold":
            normal = self.block.get("normal_class")
            if normal not in self.classes:
                raise ConfigError("%s: decision normal_class %r is not one of the classes %s"
                                  % (where, normal, self.classes))
            self.normal_index = self.classes.index(normal)
            threshold = self.block.get("threshold")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                    0.0 <= float(threshold) <= 1.0):
                raise ConfigError("%s: decision threshold %r must be a number in [0, 1]" % (where, threshold))
            self.threshold = float(threshold)

    def decide(self, probabilities):
        """The :class:`Verdict` for one probability vector (a recording's or an exam's mean)."""
        p = [float(v) for v in np.asarray(probabilities, dtype=np.float64).ravel()]
        if len(p) != len(self.classes):
            raise ValueError("%d probabilities for %d classes" % (len(p), len(self.classes)))
        if self.rule == "argmax":
            index = p.index(max(p))
            return Verdict(self.classes[index], index, p[index], None)
        p_abnormal = 1.0 - p[self.normal_index]
        if p_abnormal >= self.threshold:
            others = [i for i in range(len(p)) if i != self.normal_index]
            index = max(others, key=lambda i: (p[i], -i))  # the first of equally probable classes, as argmax
        else:
            index = self.normal_index
        return Verdict(self.classes[index], index, p[index], p_abnormal)

    def basis(self):
        """What the rule was chosen for and on: 'max balanced accuracy on 130 val recordings'."""
        if self.rule == "argmax":
            return self.block.get("reason", "no operating point chosen")
        chosen = self.block.get("chosen_on") or {}
        where = ""
        if chosen.get("recordings"):
            where = " on %d %s recordings" % (chosen["recordings"], chosen.get("split", ""))
        return "%s%s" % (self.block.get("objective", "chosen"), where)

    def describe(self):
        """The rule in words: 'P(not normal) >= 0.370 (max balanced accuracy on 130 val recordings)' or 'argmax'."""
        if self.rule == "argmax":
            return "argmax (%s)" % self.basis()
        return "P(not %s) >= %.3f (%s)" % (self.classes[self.normal_index], self.threshold, self.basis())

    def as_dict(self):
        return dict(self.block)


def rule_of(card):
    """The :class:`DecisionRule` a model card stores (argmax for a card without a block)."""
    return DecisionRule(getattr(card, "decision", None), card.classes)

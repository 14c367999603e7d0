"""Decisions from a stream of window probabilities: smoothing over the last K windows, then a threshold.

- ``mean``: the plain average of the last K probability vectors (K = ``--smooth``).
- ``ema``: exponential moving average ``s ← s + α (p − s)`` with ``α = 2 / (K + 1)``
  (the EMA whose centre of mass matches a K-window mean); the first window
  initialises ``s``.
- K = 1 disables smoothing.

The decision is the class with the highest smoothed probability when that
probability is at least ``threshold``, otherwise ``'uncertain'``.  A window
rejected by the quality gate never enters the average: :meth:`Smoother.reset`
starts afresh, so a diagnosis never averages across lost contact.
"""
import collections

import numpy as np

UNCERTAIN = "uncertain"
METHODS = ("mean", "ema")


class Smoother(object):
    """Running mean or EMA of probability vectors over the last ``k`` windows."""

    def __init__(self, method="mean", k=3):
        if method not in METHODS:
            raise ValueError("smoothing method must be one of %s, not %r" % (METHODS, method))
        if int(k) < 1:
            raise ValueError("smoothing window K must be at least 1, not %r" % (k,))
        self.method = method
        self.k = int(k)
        self.alpha = 2.0 / (self.k + 1.0)
        self._recent = collections.deque(maxlen=self.k)
        self._ema = None

    def __len__(self):
        """How many windows the current average holds (at most K)."""
        return len(self._recent)

    def update(self, probabilities):
        """Add one window's probabilities (N values); return the smoothed ones (a list of N floats).

        In plain Python floats: a handful of numbers, for which numpy's per-call cost (tens of µs right
        after inference, with the caches cold) is most of the work.  The same IEEE operations in the same
        order as numpy's float64 arithmetic, so the same numbers as ``np.mean(np.stack(rows), axis=0)``
        (rows added one after another, then divided by K) or the EMA's ``s + α (p − s)``.
        """
        if hasattr(probabilities, "ravel"):
            p = probabilities.ravel().tolist()  # float32 or float64 array: exact Python floats
        else:
            p = [float(v) for v in probabilities]
        self._recent.append(p)
        if self.method == "mean":
            rows = iter(self._recent)
            total = next(rows)
            for row in rows:
                total = [a + b for a, b in zip(total, row)]
            n = len(self._recent)
            return [v / n for v in total]
        if self._ema is None or len(self._ema) != len(p):
            self._ema = p
        else:
            alpha = self.alpha
            self._ema = [s + alpha * (q - s) for s, q in zip(self._ema, p)]
        return list(self._ema)

    def reset(self):
        self._recent.clear()
        self._ema = None


def decide(probabilities, classes, threshold):
    """(decision, class index, confidence): the top class, or 'uncertain' when below ``threshold``."""
    if isinstance(probabilities, list):
        listed = probabilities
    else:
        listed = np.asarray(probabilities, dtype=np.float64).ravel().tolist()
    if len(listed) != len(classes):
        raise ValueError("%d probabilities for %d classes" % (len(listed), len(classes)))
    index = listed.index(max(listed))  # the first maximum, as np.argmax
    confidence = listed[index]
    if confidence < threshold:
        return UNCERTAIN, index, confidence
    return classes[index], index, confidence

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
        """Add one window's probabilities (shape (N,)); return the smoothed vector (float64, (N,))."""
        p = np.asarray(probabilities, dtype=np.float64).ravel()
        self._recent.append(p)
        if self.method == "mean":
            # row by row, then / K: the numbers np.mean(np.stack(rows), axis=0) gives, without its overhead
            rows = iter(self._recent)
            total = next(rows)
            for row in rows:
                total = total + row
            return total / len(self._recent)
        if self._ema is None or self._ema.shape != p.shape:
            self._ema = p.copy()
        else:
            self._ema = self._ema + self.alpha * (p - self._ema)
        return self._ema.copy()

    def reset(self):
        self._recent.clear()
        self._ema = None


def decide(probabilities, classes, threshold):
    """(decision, class index, confidence): the top class, or 'uncertain' when below ``threshold``."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.size != len(classes):
        raise ValueError("%d probabilities for %d classes" % (p.size, len(classes)))
    listed = p.tolist()
    index = listed.index(max(listed))  # the first maximum, as np.argmax
    confidence = listed[index]
    if confidence < threshold:
        return UNCERTAIN, index, confidence
    return classes[index], index, confidence

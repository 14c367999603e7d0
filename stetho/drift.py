"""Is this input like the training data?  The drift check behind "this microphone sounds unlike the training data".

A stethoscope, a room and a preamplifier colour every sound the same way: in a spectrogram image that is a
fixed offset per frequency row.  The network learns it (PhysioNet's clinics are told apart by a few spectral
features), so a new device can be read as a new class.  This module measures it, on what the device already
computes for every accepted window:

- a window's **profile**: the mean level of each image row, in dB above the bottom of the shown range of the
  training images (``row_profile(levels, reference.top_db)``: R numbers, row 0 the highest frequency);
- a recording's (or exam's) profile: the mean of its accepted windows' profiles;
- its **drift score**: the RMS over rows of ``(profile − centre) / scale`` for the nearest of a few ``centres``
  of the training recordings' profiles (k-means: a training set from several clinics has several typical
  profiles, and one median would flag the minority clinics' own recordings), ``scale`` the per-row spread of the
  training profiles (``input_stats`` in model.json, written by ``train_host/input_stats.py``);
- the **flag**: score ≥ ``threshold``, a value chosen so that few held-out recordings of the training data
  (val) exceed it; ``input_stats`` records which share did;
- the **device-level flag** (optional ``device`` block): the mean score of the last ``exams`` exams ≥ its
  ``threshold``, a lower value than one exam's: a run of exams averages out what scatters one recording's
  profile (``DriftReference.judge_device``).

``input_stats`` (version 1)::

    {"version": 1, "kind": "row-profile-rms-z", "rows": R, "top_db": 80.0, "mean": [R], "scale": [R],
     "centres": [[R], ...] (optional; without them: the mean), "threshold": 2.1, "min_windows": 4,
     "reference": {"split": "train", "recordings": 746, "windows": 25000},
     "calibration": {"split": "val", "recordings": 131, "flagged": 0.05},
     "device": {"exams": 20, "threshold": 1.4} (optional; without it: no device-level check)}

Python 3.6, numpy only.
"""
import numpy as np

from .errors import ConfigError

STATS_VERSION = 1
KIND = "row-profile-rms-z"
WARNING = ("this microphone sounds unlike the training data: verdicts may be unreliable; record 5-10 minutes of "
           "exams and adapt the model (train_host/adapt.py)")
DEVICE_WARNING = ("the last %d exams sound unlike the training data: verdicts on this device may be unreliable; "
                  "record 5-10 minutes of exams and adapt the model (train_host/adapt.py)")


def row_profile(levels, top_db):
    """Mean level of each row of a uint8 R×R level image, in dB (0 = the bottom of the shown range). (R,) float64."""
    levels = np.asarray(levels)
    return np.add.reduce(levels, axis=1, dtype=np.float64) * (float(top_db) / 255.0 / levels.shape[1])


class DriftReference(object):
    """A validated ``input_stats`` block: scores profiles against the training data's."""

    def __init__(self, block, size, where="model.json"):
        if not isinstance(block, dict) or block.get("version") != STATS_VERSION or block.get("kind") != KIND:
            raise ConfigError("%s: input_stats is not a version-%d %r block" % (where, STATS_VERSION, KIND))
        try:
            self.mean = np.asarray(block["mean"], dtype=np.float64)
            self.scale = np.asarray(block["scale"], dtype=np.float64)
            self.centres = np.asarray(block.get("centres") or [block["mean"]], dtype=np.float64)
            self.threshold = float(block["threshold"])
            self.min_windows = int(block.get("min_windows", 4))
            # the profiles' unit: dB of the training images' shown range.  An adapted model may show another range
            # (adapt.py moves spectrogram.top_db); its levels are still compared in the training images' unit.
            self.top_db = float(block.get("top_db", 80.0))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError("%s: input_stats is malformed (%s)" % (where, error))
        if self.mean.shape != (size,) or self.scale.shape != (size,) or not np.all(self.scale > 0) or not (
                np.all(np.isfinite(self.mean)) and np.isfinite(self.threshold) and self.threshold > 0) or (
                self.centres.ndim != 2 or self.centres.shape[1] != size or not np.all(np.isfinite(self.centres))):
            raise ConfigError("%s: input_stats needs %d finite means and centres, positive scales and a positive "
                              "threshold" % (where, size))
        self.device_exams = self.device_threshold = None
        device = block.get("device")
        if device is not None:
            try:
                self.device_exams, self.device_threshold = int(device["exams"]), float(device["threshold"])
            except (KeyError, TypeError, ValueError) as error:
                raise ConfigError("%s: input_stats.device is malformed (%s)" % (where, error))
            if not (2 <= self.device_exams <= 1000 and np.isfinite(self.device_threshold)
                    and self.device_threshold > 0):
                raise ConfigError("%s: input_stats.device needs 2-1000 exams and a positive threshold" % where)
        self.block = block

    def score(self, profile):
        """Drift score of a profile (float): RMS over rows of the standardised difference from the nearest centre
        of the training profiles."""
        z = (np.asarray(profile, dtype=np.float64)[None, :] - self.centres) / self.scale
        return float(np.sqrt(np.min(np.add.reduce(z * z, axis=1)) / z.shape[1]))

    def judge(self, profile, windows):
        """{'score', 'threshold', 'windows', 'flag'} for a profile averaged over ``windows`` accepted windows
        (flag None: too few windows to judge)."""
        if windows < self.min_windows or profile is None:
            return {"score": None, "threshold": self.threshold, "windows": int(windows), "flag": None}
        score = self.score(profile)
        return {"score": round(score, 4), "threshold": round(self.threshold, 4), "windows": int(windows),
                "flag": bool(score >= self.threshold)}

    def judge_device(self, scores):
        """The device-level check over the last exams' drift scores (oldest first; None entries skipped):
        {'exams', 'needed', 'mean_score', 'threshold', 'flag'} (flag None until ``device_exams`` exams were
        judged), or None when the block has no device-level threshold."""
        if self.device_threshold is None:
            return None
        recent = [float(s) for s in scores if s is not None][-self.device_exams:]
        mean = sum(recent) / len(recent) if recent else None
        return {"exams": len(recent), "needed": self.device_exams,
                "mean_score": None if mean is None else round(mean, 4),
                "threshold": round(self.device_threshold, 4),
                "flag": None if len(recent) < self.device_exams else bool(mean >= self.device_threshold)}


class ProfileMean(object):
    """A running mean of window profiles (an exam's, or the last ``window`` accepted windows')."""

    def __init__(self, window=None):
        import collections
        self.window = window
        self._recent = collections.deque(maxlen=window) if window else None
        self._sum = None
        self.count = 0

    def add(self, profile):
        profile = np.asarray(profile, dtype=np.float64)
        if self._recent is not None:
            if len(self._recent) == self._recent.maxlen:
                self._sum = self._sum - self._recent[0]
            self._recent.append(profile)
        self._sum = profile.copy() if self._sum is None else self._sum + profile
        self.count = len(self._recent) if self._recent is not None else self.count + 1

    def mean(self):
        return None if not self.count else self._sum / self.count


def reference_of(card):
    """The card's :class:`DriftReference`, or None when it stores no input statistics (older models)."""
    block = getattr(card, "input_stats", None)
    if not block:
        return None
    return DriftReference(block, card.contract.size)

"""The training input's statistics, stored in model.json for the device's drift warning (stetho/drift.py).

    block = input_stats(dataset)           # from the train split's images (and a threshold from held-out ones)

Every recording gets a profile: the mean over its windows (up to ``max_windows``) of each image row's mean level,
in dB (``stetho.drift.row_profile``).  Over the train split's recordings: the per-row median (``mean``), a
robust spread (1.4826 × the median absolute deviation, at least ``min_scale_db``: ``scale``) and up to
``CENTRES`` k-means centres of the standardised profiles (``centres``: PhysioNet's five clinics have several
typical profiles; measured on its val recordings, one median flagged 47 % of clinic f's, 16 centres 5 %).  A
recording's drift score is the RMS of its standardised difference from the nearest centre
(``DriftReference.score``).  The flag's threshold is
the ``quantile`` of the scores of training recordings the statistics did not see: the train recordings are
halved at random, one half gives a median and spread, the other half its scores (then the statistics are
recomputed on all of them).  So about ``1 − quantile`` of recordings like the training data's are flagged;
the val recordings' flagged share is measured and recorded beside it.

The **device-level** check (``device``): one recording's profile scatters, so a new clinic whose recordings lie
among the training clinics' is flagged on few of them; the mean score of a device's last ``DEVICE_EXAMS`` exams
scatters far less.  Its threshold is the ``DEVICE_QUANTILE`` of the mean of ``DEVICE_EXAMS`` held-out scores drawn
at random (``DEVICE_DRAWS`` draws, with replacement): a run of exams like the training data's reaches it about
1 % of the time.
"""
import os

import numpy as np

from stetho.drift import KIND, STATS_VERSION, DriftReference, row_profile
from stetho.png import read_png
from train_host.augment import Palette

MAX_WINDOWS = 32
CENTRES = 16            # k-means centres at most (and at most one per 20 training recordings)
MIN_SCALE_DB = 0.5
QUANTILE = 0.95
DEVICE_EXAMS = 20       # the device-level check: the mean drift score of the last 20 exams
DEVICE_QUANTILE = 0.99
DEVICE_DRAWS = 4000


def recording_profiles(dataset, split, max_windows=MAX_WINDOWS, seed=0, top_db=None):
    """{recording: (profile (R,), windows used)} of ``split`` (every split when None) of a prepared dataset;
    ``top_db``: the profiles' unit (default: the dataset's own shown range; a drift reference's to compare with it)."""
    palette = Palette(dataset.contract.spectrogram.colormap)
    top_db = dataset.contract.spectrogram.top_db if top_db is None else top_db
    by_recording = {}
    for entry in (dataset.images if split is None else dataset.split(split)):
        by_recording.setdefault(entry["recording"], []).append(entry)
    rng = np.random.RandomState(seed)
    out = {}
    for recording in sorted(by_recording):
        entries = by_recording[recording]
        if len(entries) > max_windows:
            entries = [entries[i] for i in sorted(rng.choice(len(entries), max_windows, replace=False))]
        profiles = [row_profile(palette.levels(read_png(os.path.join(dataset.root, e["path"]))), top_db)
                    for e in entries]
        out[recording] = (np.mean(profiles, axis=0), len(profiles))
    return out


def robust_stats(profiles, min_scale_db=MIN_SCALE_DB):
    """(per-row median, per-row 1.4826·MAD floored at ``min_scale_db``) of an (n, R) array."""
    profiles = np.asarray(profiles, dtype=np.float64)
    median = np.median(profiles, axis=0)
    scale = 1.4826 * np.median(np.abs(profiles - median), axis=0)
    return median, np.maximum(scale, min_scale_db)


def kmeans(points, k, seed=0, iterations=50):
    """``k`` centres of ``points`` ((n, R)): k-means++ seeding, then Lloyd's iterations (deterministic by seed)."""
    points = np.asarray(points, dtype=np.float64)
    rng = np.random.RandomState(seed)
    centres = [points[rng.randint(len(points))]]
    for _ in range(1, k):
        distance = np.min([np.add.reduce((points - c) ** 2, axis=1) for c in centres], axis=0)
        if distance.sum() <= 0:
            break
        centres.append(points[rng.choice(len(points), p=distance / distance.sum())])
    centres = np.array(centres)
    for _ in range(iterations):
        nearest = np.argmin(np.add.reduce((points[:, None, :] - centres[None]) ** 2, axis=2), axis=1)
        moved = np.array([points[nearest == j].mean(axis=0) if np.any(nearest == j) else centres[j]
                          for j in range(len(centres))])
        if np.allclose(moved, centres):
            break
        centres = moved
    return centres


def statistics(profiles, seed=0):
    """(median, spread, centres) of training profiles ((n, R)): see the module doc."""
    profiles = np.asarray(profiles, dtype=np.float64)
    mean, scale = robust_stats(profiles)
    k = max(1, min(CENTRES, len(profiles) // 20))
    centres = kmeans(profiles / scale, k, seed) * scale if k > 1 else mean[None]
    return mean, scale, centres


def device_threshold(held_scores, exams=DEVICE_EXAMS, quantile=DEVICE_QUANTILE, draws=DEVICE_DRAWS, seed=0):
    """The ``quantile`` of the mean of ``exams`` scores drawn at random (with replacement) from ``held_scores``."""
    scores = np.asarray(held_scores, dtype=np.float64)
    picks = np.random.RandomState(seed).randint(0, len(scores), size=(draws, exams))
    return float(np.quantile(scores[picks].mean(axis=1), quantile))


def block_from_profiles(train_profiles, size, top_db, quantile=QUANTILE, seed=0, min_windows=4):
    """The ``input_stats`` block from the train recordings' profiles ((n, R)); threshold by a random half split."""
    train_profiles = np.asarray(train_profiles, dtype=np.float64)
    n = len(train_profiles)
    order = np.random.RandomState(seed).permutation(n)
    fit, held = train_profiles[order[:n // 2]], train_profiles[order[n // 2:]]
    if len(fit) < 5 or len(held) < 5:
        raise ValueError("input statistics need at least 10 training recordings, got %d" % n)
    mean, scale, centres = statistics(fit, seed)
    half = {"version": STATS_VERSION, "kind": KIND, "rows": size, "mean": mean.tolist(), "scale": scale.tolist(),
            "centres": centres.tolist(), "threshold": 1.0}
    held_scores = [DriftReference(half, size).score(p) for p in held]
    threshold = float(np.quantile(held_scores, quantile))
    mean, scale, centres = statistics(train_profiles, seed)
    return {"version": STATS_VERSION, "kind": KIND, "rows": size, "top_db": float(top_db),
            "mean": [round(v, 4) for v in mean.tolist()], "scale": [round(v, 4) for v in scale.tolist()],
            "centres": [[round(v, 3) for v in centre] for centre in centres.tolist()],
            "threshold": round(threshold, 4), "min_windows": int(min_windows),
            "calibration": {"split": "train (held-out half)", "recordings": len(held), "quantile": quantile},
            "device": {"exams": DEVICE_EXAMS, "threshold": round(device_threshold(held_scores, seed=seed), 4),
                       "quantile": DEVICE_QUANTILE, "draws": DEVICE_DRAWS}}


def input_stats(dataset, quantile=QUANTILE, seed=0):
    """The ``input_stats`` block of a prepared dataset (train split), with the val recordings' flagged share."""
    spectrogram = dataset.contract.spectrogram
    train = recording_profiles(dataset, "train", seed=seed)
    block = block_from_profiles([p for p, _ in train.values()], spectrogram.size, spectrogram.top_db, quantile, seed)
    block["reference"] = {"split": "train", "recordings": len(train),
                          "windows": int(sum(n for _, n in train.values()))}
    val = recording_profiles(dataset, "val", seed=seed)
    if val:
        reference = DriftReference(block, spectrogram.size)
        flagged = [reference.score(p) >= reference.threshold for p, _ in val.values()]
        block["check"] = {"split": "val", "recordings": len(val), "flagged": round(float(np.mean(flagged)), 4)}
    return block

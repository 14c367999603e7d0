"""Leak-free dataset splits: grouped, stratified, seeded; and the check that they do not leak.

A *group* is everything that must stay on one side of a split: a patient, or a
recording where no patient id exists.  Groups are stratified by their label
(the most frequent label of their images), shuffled with a seeded
``numpy.random.RandomState`` per class (its stream is stable across numpy
versions) and dealt out by the split fractions.  Val gets at least one group
of every class that has two or more, so model selection always sees every
class it can.

:func:`check_disjoint` is run on every prepared dataset: a patient or a
recording in two splits raises :class:`SplitLeakError`.
"""
import collections
import math
import zlib

import numpy as np

SPLITS = ("train", "val", "test")


class SplitLeakError(RuntimeError):
    """A patient or recording appears in more than one split (names them)."""


def parse_fractions(text):
    """'0.7,0.15,0.15' → (0.7, 0.15, 0.15) (train, val, test; normalised to sum 1). Raises ValueError."""
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise ValueError("--split must be 'official' or three fractions train,val,test like 0.7,0.15,0.15, not %r"
                         % text)
    if len(values) != 3 or min(values) < 0 or values[0] <= 0:
        raise ValueError("--split needs three non-negative fractions train,val,test with train > 0, not %r" % text)
    total = sum(values)
    return tuple(v / total for v in values)


def allocate(n, fractions):
    """How many of ``n`` groups of one class go to (train, val, test).

    Largest-remainder shares of ``fractions`` (ties favour train, then val),
    then: train keeps at least one group; val gets at least one when n ≥ 2
    and its fraction is positive; test at least one when n ≥ 3 and its
    fraction is positive (val before test: without val there is no model
    selection).
    """
    shares = [n * f for f in fractions]
    counts = [int(math.floor(x)) for x in shares]
    by_remainder = sorted(range(3), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    _, n_val, n_test = counts
    if fractions[1] > 0 and n >= 2:
        n_val = max(1, n_val)
    if fractions[2] > 0 and n >= 3:
        n_test = max(1, n_test)
    while n_val + n_test > n - 1 and n_test > 0:
        n_test -= 1
    while n_val + n_test > n - 1 and n_val > 0:
        n_val -= 1
    return n - n_val - n_test, n_val, n_test


def class_rng(seed, label):
    """The RandomState for one class: depends on the seed and the class name only."""
    return np.random.RandomState((int(seed) * 1000003 + zlib.crc32(label.encode("utf-8"))) % (2 ** 32))


def dominant_label(counts):
    """The most frequent label of a Counter (ties: the alphabetically first)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[0][0]


def grouped_stratified_split(group_labels, fractions, seed):
    """Deal groups into train/val/test, stratified by label.

    Parameters
    ----------
    group_labels : dict {group id (str): label (str)}
    fractions : (train, val, test), summing to 1
    seed : int

    Returns
    -------
    dict {group id: 'train' | 'val' | 'test'}; the same inputs always give the same result.
    """
    by_label = collections.defaultdict(list)
    for group, label in group_labels.items():
        by_label[label].append(group)
    out = {}
    for label in sorted(by_label):
        groups = sorted(by_label[label])
        order = class_rng(seed, label).permutation(len(groups))
        n_train, n_val, _ = allocate(len(groups), fractions)
        for rank, index in enumerate(order):
            out[groups[index]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def parse_kfold(text):
    """'kfold:5:0' → (5, 0): K folds, fold I is test. Raises ValueError."""
    parts = str(text).split(":")
    try:
        if len(parts) != 3 or parts[0] != "kfold":
            raise ValueError
        folds, fold = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError("k-fold split must look like kfold:K:I (K folds, fold I as test), not %r" % text)
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError("kfold:K:I needs K ≥ 2 and 0 ≤ I < K, not %r" % text)
    return folds, fold


def kfold_split(group_labels, folds, fold, val_fraction, seed):
    """Fold ``fold`` of a grouped, stratified K-fold cross-validation.

    Each class's groups are shuffled (seeded, as in
    :func:`grouped_stratified_split`) and dealt round-robin into ``folds``
    folds, so every group is in test in exactly one fold and each fold holds
    about 1/K of every class.  Fold ``fold`` is test; of the rest,
    ``val_fraction`` of each class's groups go to val, the others to train.
    Returns {group id: split}.
    """
    by_label = collections.defaultdict(list)
    for group, label in group_labels.items():
        by_label[label].append(group)
    rest = {}
    out = {}
    for label in sorted(by_label):
        groups = sorted(by_label[label])
        for rank, index in enumerate(class_rng(seed, label).permutation(len(groups))):
            if rank % folds == fold:
                out[groups[index]] = "test"
            else:
                rest[groups[index]] = label
    out.update(grouped_stratified_split(rest, (1.0 - val_fraction, val_fraction, 0.0), seed + 1 + fold))
    return out


def official_split(group_labels, preset, val_fraction, seed):
    """Honour a dataset's own split and take val out of its train part by whole groups.

    ``preset``: {group id: set of preset splits of its recordings}.  A group
    whose recordings are all 'train' may move to val (stratified, seeded,
    ``val_fraction`` of each class's train groups); groups preset to 'val' or
    'test' stay.  A group that the dataset itself puts in several splits is
    left as the dataset has it (see :func:`check_disjoint`'s ``allowed``).

    Returns {group id: split} for groups with one preset split, and the
    sorted list of groups the dataset's split shares between splits.
    """
    shared = sorted(g for g, splits in preset.items() if len(splits) > 1)
    out = dict((g, next(iter(s))) for g, s in preset.items() if len(s) == 1)
    train = dict((g, group_labels[g]) for g, split in out.items() if split == "train")
    carved = grouped_stratified_split(train, (1.0 - val_fraction, val_fraction, 0.0), seed)
    out.update(carved)
    return out, shared


def check_disjoint(images, keys=("recording", "patient"), allowed=None):
    """Raise SplitLeakError if any value of ``keys`` occurs in more than one split.

    ``images``: iterable of mappings with 'split' and the ``keys`` (None
    values are ignored).  ``allowed``: {key: set of values} that may span
    splits because the dataset's official split does so (reported, not hidden).
    Returns {key: number of distinct values checked}.
    """
    allowed = allowed or {}
    seen = dict((key, collections.defaultdict(set)) for key in keys)
    for image in images:
        for key in keys:
            value = image.get(key)
            if value is not None:
                seen[key][value].add(image["split"])
    problems = []
    for key in keys:
        for value in sorted(seen[key]):
            splits = seen[key][value]
            if len(splits) > 1 and value not in allowed.get(key, ()):
                problems.append("%s %s in %s" % (key, value, " and ".join(s for s in SPLITS if s in splits)))
    if problems:
        raise SplitLeakError("split leak: %d %s in more than one split: %s%s"
                             % (len(problems), "/".join(keys), "; ".join(problems[:10]),
                                " ..." if len(problems) > 10 else ""))
    return dict((key, len(seen[key])) for key in keys)

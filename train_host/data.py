"""A prepared dataset (train_host/prepare.py's output) as PyTorch sees it.

``DATA/prepare.json`` is the source of truth: the contract the images were
rendered with, the sorted class names, the image size R and, per image, its
path, split, label and recording id (recording-level evaluation groups by it).

The training-side tensor of an R×R image is ToTensor + Normalize with the
ImageNet mean/std (``to_tensor``), which equals ``stetho.tensor.imagenet_tensor``
(what jetson-inference's imageNet feeds the engine) up to float rounding.
"""
import hashlib
import json
import os

import numpy as np
import torch
from PIL import Image

from stetho import Contract
from stetho.errors import ConfigError
from stetho.labels import check_class_names, read_labels
from stetho.tensor import IMAGENET_MEAN, IMAGENET_STD

PREPARE_NAME = "prepare.json"
SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
_IMAGE_KEYS = ("path", "split", "label", "recording")


class PreparedDataset(object):
    """prepare.json, validated. Attributes: root, meta (the JSON), contract, classes, size, images."""

    def __init__(self, root, meta):
        self.root = os.path.abspath(str(root))
        self.meta = meta
        where = os.path.join(self.root, PREPARE_NAME)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError("%s: schema_version %r is not supported (this software reads %d)"
                              % (where, meta.get("schema_version"), SCHEMA_VERSION))
        for key in ("contract", "classes", "size", "images"):
            if key not in meta:
                raise ConfigError("%s: missing key %r" % (where, key))
        try:
            self.contract = Contract.from_dict(meta["contract"])
        except (ConfigError, TypeError) as error:
            raise ConfigError("%s: bad contract (%s)" % (where, error))
        self.classes = check_class_names(list(meta["classes"]), where)
        if self.classes != sorted(self.classes):
            raise ConfigError("%s: classes %s are not in sorted (ImageFolder) order" % (where, self.classes))
        self.size = meta["size"]
        if self.size != self.contract.size:
            raise ConfigError("%s: size %r differs from the contract's image size %d" % (where, self.size,
                                                                                     self.contract.size))
        self.images = []
        for number, entry in enumerate(meta["images"]):
            missing = [key for key in _IMAGE_KEYS if key not in entry]
            if missing:
                raise ConfigError("%s: image #%d lacks %s" % (where, number, ", ".join(missing)))
            if entry["split"] not in SPLITS or entry["label"] not in self.classes:
                raise ConfigError("%s: image %s has split %r / label %r outside %s / %s"
                                  % (where, entry["path"], entry["split"], entry["label"], SPLITS, self.classes))
            self.images.append(entry)
        labels_path = os.path.join(self.root, "labels.txt")
        if os.path.isfile(labels_path) and read_labels(labels_path) != self.classes:
            raise ConfigError("%s: classes %s differ from prepare.json's %s" % (labels_path, read_labels(labels_path),
                                                                                self.classes))

    def split(self, name):
        """The image entries of split ``name`` (train, val or test), in prepare.json order."""
        return [entry for entry in self.images if entry["split"] == name]

    def counts(self, name):
        """{class: number of images} of split ``name``."""
        counts = dict((c, 0) for c in self.classes)
        for entry in self.split(name):
            counts[entry["label"]] += 1
        return counts

    @property
    def fingerprint(self):
        """sha256 of what makes this dataset: contract, classes, source, and every image's path, split, label,
        recording, source audio and offset.

        Stable across re-runs of prepare.py that produce the same images (timestamps are left out).
        """
        keys = ("path", "split", "label", "recording", "source", "offset_s")
        content = {"contract": self.meta["contract"], "classes": self.classes, "source": self.meta.get("source"),
                   "images": sorted([str(e.get(k)) for k in keys] for e in self.images)}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()

    @property
    def name(self):
        """The dataset's folder name (``data/physionet`` → 'physionet')."""
        return os.path.basename(self.root.rstrip(os.sep))

    def describe(self):
        """What model.json records about the dataset: its name and fingerprint, never a path of this machine
        (the source is named by its folder name); ``synthetic`` when prepare.py read a synthetic corpus."""
        source = self.meta.get("source")
        return {"name": self.name, "fingerprint": self.fingerprint, "preset": self.meta.get("preset"),
                "adapter": self.meta.get("adapter"),
                "source": os.path.basename(str(source).rstrip("/")) if source else None,
                "synthetic": bool(self.meta.get("synthetic", False)),
                "split": self.meta.get("split"), "counts": dict((s, self.counts(s)) for s in SPLITS),
                "created": self.meta.get("created")}


def load_prepared(root):
    """Read and validate ``root/prepare.json``; raises ConfigError naming the file on any problem."""
    path = os.path.join(str(root), PREPARE_NAME)
    if not os.path.isfile(path):
        raise ConfigError("%s: not found; %s is not a prepared dataset (make one with train_host/prepare.py)"
                          % (path, root))
    try:
        with open(path) as handle:
            meta = json.load(handle)
    except ValueError as error:
        raise ConfigError("%s: not valid JSON (%s)" % (path, error))
    if not isinstance(meta, dict):
        raise ConfigError("%s: expected a JSON object" % path)
    return PreparedDataset(root, meta)


def read_image(path, size):
    """uint8 size×size×3 RGB pixels of the PNG at ``path``; ValueError naming the file otherwise."""
    try:
        with Image.open(path) as handle:
            image = np.array(handle.convert("RGB"))
    except (IOError, OSError, ValueError) as error:
        raise ValueError("%s: cannot read image (%s)" % (path, error))
    if image.shape != (size, size, 3):
        raise ValueError("%s: image is %dx%d, the dataset's contract says %dx%d"
                         % (path, image.shape[1], image.shape[0], size, size))
    return image


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def to_tensor(image):
    """uint8 H×W×3 → float32 [3, H, W]: ToTensor (x/255) then Normalize(ImageNet mean, std)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
    return (tensor - _MEAN) / _STD


class SpectrogramImages(torch.utils.data.Dataset):
    """Images of one split: item ``i`` or ``(i, seed)`` → (tensor [3, R, R], class index).

    With an ``augment`` callable, ``(i, seed)`` items are augmented with
    ``numpy.random.default_rng(seed)``, so the result depends only on the seed
    (not on worker processes or their order).  Decoded images are cached in
    memory (``cache``): R×R×3 bytes each.
    """

    def __init__(self, dataset, split, augment=None, cache=True):
        self.root = dataset.root
        self.size = dataset.size
        self.classes = dataset.classes
        self.entries = dataset.split(split)
        self.labels = [self.classes.index(e["label"]) for e in self.entries]
        self.recordings = [e["recording"] for e in self.entries]
        self.sites = [e.get("site") for e in self.entries]
        self.paths = [os.path.join(self.root, e["path"]) for e in self.entries]
        self.augment = augment
        self.cache = {} if cache else None

    def __len__(self):
        return len(self.entries)

    def image(self, index):
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image = read_image(self.paths[index], self.size)
        if self.cache is not None:
            self.cache[index] = image
        return image

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.image(index)
        if self.augment is not None and seed is not None:
            try:
                image = self.augment(image, np.random.default_rng(seed))
            except ValueError as error:
                raise ValueError("%s: %s" % (self.paths[index], error))
        return to_tensor(image), self.labels[index]


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, augmentation seed) for one epoch; the order depends only on (seed, epoch).

    ``weights`` (one per item) switch to sampling with replacement in proportion to them
    (class balancing); otherwise a seeded permutation (or the plain order with shuffle=False).
    ``fraction`` (0 < f ≤ 1) makes an epoch ``round(f·n)`` items (at least 1): drawn as above, or the first
    of the permutation, so each epoch sees another part of a large set at a fixed cost.
    """

    def __init__(self, n, seed, weights=None, shuffle=True, fraction=1.0):
        if not 0.0 < fraction <= 1.0:
            raise ValueError("epoch fraction %g: must be in (0, 1]" % fraction)
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.shuffle = shuffle
        self.size = n if fraction == 1.0 else max(1, int(round(fraction * n)))
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            order = rng.choice(self.n, size=self.size, replace=True, p=self.weights / self.weights.sum())
        elif self.shuffle:
            order = rng.permutation(self.n)[:self.size]
        else:
            order = np.arange(self.size)
        seeds = rng.integers(0, 2 ** 63 - 1, size=self.size)
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])


def site_balanced_weights(labels, sites, recordings=None):
    """Per-item sampling weights that balance the classes inside every site (recording device / clinic).

    Each site keeps its share of the items, and within a site every class present gets the same share,
    so that which site an image comes from says nothing about its class: a network cannot learn
    "site A's sound means abnormal".  Items without a site form one group (with no sites at all this is
    plain class balancing).  ``recordings`` (one id per item): inside every site and class, each recording
    gets the same share whatever its number of windows, as each counts once in a recording-level score.
    Returns float64 weights summing to len(labels).
    """
    labels = np.asarray(labels)
    groups = np.asarray(["" if s is None else str(s) for s in sites])
    ids = None if recordings is None else np.asarray([str(r) for r in recordings])
    weights = np.zeros(len(labels))
    for site in np.unique(groups):
        in_site = groups == site
        present = np.unique(labels[in_site])
        for label in present:
            cell = in_site & (labels == label)
            mass = in_site.sum() / float(len(present))
            if ids is None:
                weights[cell] = mass / cell.sum()
            else:  # each recording of the cell gets mass / (recordings in the cell), split over its windows
                _, inverse, counts = np.unique(ids[cell], return_inverse=True, return_counts=True)
                weights[cell] = mass / (counts.size * counts[inverse].astype(np.float64))
    return weights


def class_weights(labels, n_classes):
    """Inverse-frequency weights N / (K · n_c) per class (0 for a class with no images)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights

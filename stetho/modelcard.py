"""model.json: the card saved beside every exported model.

It carries the contract (so the device renders exactly as training did), the
classes, the network's input/output names and normalisation, the ONNX file's
sha256, and what training and evaluation produced.  ``ModelCard.load`` refuses
cards of an unknown schema version by name, rather than guessing.
"""
import datetime
import hashlib
import json
import os
import re

from .contract import Contract
from .decision import DecisionRule
from .errors import ConfigError
from .labels import check_class_names
from .tensor import IMAGENET_MEAN, IMAGENET_STD

SCHEMA_VERSION = 1
CARD_NAME = "model.json"

_REQUIRED = ("schema_version", "classes", "contract", "resolution", "input_blob", "output_blob",
             "mean", "std", "onnx_file", "onnx_sha256")
LABELS_FILE = "labels.txt"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def plain_file_name(value, key, where=CARD_NAME):
    """``value`` when it names a file in the model folder itself, else ConfigError.

    A model card names its files (``onnx_file``, ``labels_file``); a name with a folder part, ``..``, a leading
    dot or a NUL would make the installer, the service or classify.py read or write outside the model folder.
    """
    if (not isinstance(value, str) or not value or value in (".", "..") or value.startswith(".")
            or "/" in value or "\\" in value or "\0" in value or value != value.strip()):
        raise ConfigError("%s: %s %r must be a plain file name in the model folder (no folder part, no '..', no "
                          "leading dot)" % (where, key, value))
    return value


def check_sha256(value, where=CARD_NAME):
    """``value`` when it is a sha256 in hex (64 lower-case digits), else ConfigError: a card without the ONNX's
    digest cannot have its model checked, and is refused."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ConfigError("%s: onnx_sha256 %r is not a sha256 (64 hex digits): the model's integrity cannot be "
                          "checked; re-export it with train_host/export.py" % (where, value))
    return value


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now():
    return datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"


class ModelCard(object):
    """A validated model.json. Attributes mirror the JSON keys; ``contract`` is a Contract."""

    def __init__(self, classes, contract, onnx_file="resnet18.onnx", onnx_sha256="", arch="resnet18",
                 input_blob="input_0", output_blob="output_0", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 pretrained=None, training=None, metrics=None, dataset=None, created=None, extra=None,
                 decision=None, input_stats=None, adaptation=None):
        self.classes = check_class_names(list(classes), CARD_NAME)
        if not isinstance(contract, Contract):
            raise ConfigError("%s: contract must be a Contract" % CARD_NAME)
        self.contract = contract
        self.arch = arch
        self.onnx_file = plain_file_name(onnx_file, "onnx_file")
        if not onnx_file.lower().endswith(".onnx"):
            raise ConfigError("%s: onnx_file %r must end in .onnx (jetson-inference picks the parser by it)"
                              % (CARD_NAME, onnx_file))
        self.onnx_sha256 = onnx_sha256
        self.input_blob = input_blob
        self.output_blob = output_blob
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.pretrained = pretrained if pretrained is not None else {"used": False}
        self.training = training or {}
        self.metrics = metrics or {}
        self.dataset = dataset or {}
        self.created = created or utc_now()
        self.extra = extra or {}
        # optional blocks, each versioned by its own module: the operating point (stetho.decision), the training
        # input's statistics for the drift warning (stetho.drift), and what an unlabelled adaptation used
        if decision is not None:
            DecisionRule(decision, self.classes, CARD_NAME)  # refused by name when malformed
        self.decision = decision
        self.input_stats = input_stats
        self.adaptation = adaptation
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("%s: mean and std need three values each, std positive" % CARD_NAME)

    @property
    def resolution(self):
        return self.contract.size

    @property
    def num_classes(self):
        return len(self.classes)

    def to_dict(self):
        out = {
            "schema_version": SCHEMA_VERSION,
            "arch": self.arch,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "contract": self.contract.to_dict(),
            "resolution": self.resolution,
            "input_blob": self.input_blob,
            "input_shape": [1, 3, self.resolution, self.resolution],
            "output_blob": self.output_blob,
            "output_shape": [1, len(self.classes)],
            "output": "softmax probabilities",
            "preprocessing": "RGB, NCHW, nearest stretch to input size, (x/255 - mean)/std (jetson-inference imageNet)",
            "mean": self.mean,
            "std": self.std,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "labels_file": LABELS_FILE,
            "pretrained": self.pretrained,
            "training": self.training,
            "metrics": self.metrics,
            "dataset": self.dataset,
            "created": self.created,
            "extra": self.extra,
        }
        for key in ("decision", "input_stats", "adaptation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data, where=CARD_NAME):
        if not isinstance(data, dict):
            raise ConfigError("%s: expected a JSON object" % where)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError("%s: schema_version %r is not supported by this software (it reads version %d); "
                              "upgrade the software or re-export the model" % (where, version, SCHEMA_VERSION))
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ConfigError("%s: missing key(s) %s" % (where, ", ".join(missing)))
        try:
            contract = Contract.from_dict(data["contract"])
        except ConfigError as error:
            raise ConfigError("%s: bad contract: %s" % (where, error))
        labels_file = data.get("labels_file", LABELS_FILE)
        if plain_file_name(labels_file, "labels_file", where) != LABELS_FILE:
            raise ConfigError("%s: labels_file %r: the labels must be in %s beside the model (the name jetson-inference "
                              "and the tools read)" % (where, labels_file, LABELS_FILE))
        check_sha256(data["onnx_sha256"], where)
        if data["resolution"] != contract.size:
            raise ConfigError("%s: resolution %r differs from the contract's image size %d"
                              % (where, data["resolution"], contract.size))
        try:
            return cls(classes=data["classes"], contract=contract, onnx_file=data["onnx_file"],
                       onnx_sha256=data["onnx_sha256"], arch=data.get("arch", "resnet18"),
                       input_blob=data["input_blob"], output_blob=data["output_blob"], mean=data["mean"],
                       std=data["std"], pretrained=data.get("pretrained"), training=data.get("training"),
                       metrics=data.get("metrics"), dataset=data.get("dataset"), created=data.get("created"),
                       extra=data.get("extra"), decision=data.get("decision"), input_stats=data.get("input_stats"),
                       adaptation=data.get("adaptation"))
        except ConfigError as error:
            raise ConfigError("%s: %s" % (where, error))

    @classmethod
    def load(cls, path):
        """Read ``path`` (model.json, or the model directory holding it)."""
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, CARD_NAME)
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (IOError, OSError) as error:
            raise ConfigError("%s: cannot read model card (%s)" % (path, error))
        except ValueError as error:
            raise ConfigError("%s: not valid JSON (%s)" % (path, error))
        return cls.from_dict(data, path)

    def save(self, path):
        """Write to ``path`` (a file, or a directory to hold model.json) atomically."""
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, CARD_NAME)
        tmp = path + ".part"
        with open(tmp, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
        return path

    def onnx_path(self, model_dir):
        """The ONNX file of this card in ``model_dir`` (the name is a plain file name: it cannot leave the folder)."""
        return os.path.join(str(model_dir), plain_file_name(self.onnx_file, "onnx_file"))

    def read_onnx(self, model_dir):
        """The ONNX file's bytes, after checking them against the recorded sha256 (ConfigError otherwise).

        Backends build from these very bytes, so the file checked is the file run (nothing can swap it between
        the check and the load).  An empty or missing digest is an error: an unchecked model never runs.
        """
        path = self.onnx_path(model_dir)
        expected = check_sha256(self.onnx_sha256, os.path.join(str(model_dir), CARD_NAME))
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except (IOError, OSError) as error:
            raise ConfigError("%s: model file missing or unreadable (%s)" % (path, error.strerror or error))
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise ConfigError("%s: sha256 %s does not match model.json (%s): the file was changed or belongs to "
                              "another model; re-export, or copy the matching model.json" % (path, actual[:12],
                                                                                             expected[:12]))
        return blob

    def verify_onnx(self, model_dir):
        """Raise ConfigError unless the ONNX file beside the card has the recorded sha256; returns the digest."""
        self.read_onnx(model_dir)
        return self.onnx_sha256

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

from .contract import Contract
from .errors import ConfigError
from .labels import check_class_names
from .tensor import IMAGENET_MEAN, IMAGENET_STD

SCHEMA_VERSION = 1
CARD_NAME = "model.json"

_REQUIRED = ("schema_version", "classes", "contract", "resolution", "input_blob", "output_blob",
             "mean", "std", "onnx_file", "onnx_sha256")


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
                 pretrained=None, training=None, metrics=None, dataset=None, created=None, extra=None):
        self.classes = check_class_names(list(classes), CARD_NAME)
        if not isinstance(contract, Contract):
            raise ConfigError("%s: contract must be a Contract" % CARD_NAME)
        self.contract = contract
        self.arch = arch
        self.onnx_file = onnx_file
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
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("%s: mean and std need three values each, std positive" % CARD_NAME)

    @property
    def resolution(self):
        return self.contract.size

    @property
    def num_classes(self):
        return len(self.classes)

    def to_dict(self):
        return {
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
            "labels_file": "labels.txt",
            "pretrained": self.pretrained,
            "training": self.training,
            "metrics": self.metrics,
            "dataset": self.dataset,
            "created": self.created,
            "extra": self.extra,
        }

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
        if data["resolution"] != contract.size:
            raise ConfigError("%s: resolution %r differs from the contract's image size %d"
                              % (where, data["resolution"], contract.size))
        try:
            return cls(classes=data["classes"], contract=contract, onnx_file=data["onnx_file"],
                       onnx_sha256=data["onnx_sha256"], arch=data.get("arch", "resnet18"),
                       input_blob=data["input_blob"], output_blob=data["output_blob"], mean=data["mean"],
                       std=data["std"], pretrained=data.get("pretrained"), training=data.get("training"),
                       metrics=data.get("metrics"), dataset=data.get("dataset"), created=data.get("created"),
                       extra=data.get("extra"))
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

    def verify_onnx(self, model_dir):
        """Raise ConfigError unless the ONNX file beside the card has the recorded sha256."""
        path = os.path.join(str(model_dir), self.onnx_file)
        if not os.path.isfile(path):
            raise ConfigError("%s: model file missing" % path)
        actual = sha256_file(path)
        if self.onnx_sha256 and actual != self.onnx_sha256:
            raise ConfigError("%s: sha256 %s does not match model.json (%s); re-export or copy the matching card"
                              % (path, actual[:12], self.onnx_sha256[:12]))
        return actual

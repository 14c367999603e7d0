"""Inference backends: one interface over TensorRT, jetson-inference and onnxruntime.

Every backend takes the rendered spectrogram (uint8 R×R×3) in two steps, so
the service loop can time them apart::

    prepared = backend.prepare(image)     # the tensor exactly as imageNet builds it
    probabilities = backend.infer(prepared)   # float32 (N,), softmax probabilities

``tensorrt`` and ``onnxruntime`` build the tensor with
``stetho.tensor.imagenet_tensor`` (nearest stretch, x/255, mean/std, RGB,
NCHW); ``jetson`` hands the RGB image to imageNet, which builds the same
tensor on the GPU.  :func:`load_backend` picks one ('auto': tensorrt >
jetson > onnxruntime, by what imports and runs here) and says why; a backend
that is present but fails (TensorRT cannot parse, build or load the engine)
is :class:`BackendFailed`, and 'auto' falls back past it.  An integrity error
(the ONNX is not the one model.json records) is a ConfigError and is never
fallen back from: it stops the caller.

:func:`load_model` reads the model folder: the ONNX, ``labels.txt`` and
``model.json`` (the contract), checking that they belong together and that the
ONNX's sha256 is the one model.json records.  Every backend then builds from
:meth:`Model.read_onnx` (the checked bytes: onnxruntime's session, TensorRT's
parser) or checks the file right before handing its path over (jetson-inference),
and checks the network's input [1, 3, R, R] and output (one value per class)
against the card when it is built, not at the first window.
"""
import logging
import os

import numpy as np

from stetho import ConfigError, ModelCard
from stetho.labels import read_labels
from stetho.tensor import IMAGENET_MEAN, IMAGENET_STD, imagenet_tensor, softmax

log = logging.getLogger("stetho.backends")

BACKENDS = ("auto", "tensorrt", "jetson", "onnxruntime")
# The tensor from the levels, two ways to the same numbers: numpy before 1.20 (the Nano's 1.19) gathers 4-byte
# items one memmove at a time, so 12-byte RGB rows then a transpose beat one take along the levels (measured on
# numpy 1.19.5: 53 µs against 104 µs at R=128; on numpy 2.4 the direct take wins, 34 µs against 43 µs).
TAKE_ROWS_FIRST = tuple(int(part) for part in np.__version__.split(".")[:2]) < (1, 20)
AUTO_ORDER = ("tensorrt", "jetson", "onnxruntime")


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (library missing, no GPU, incompatible version); says why."""


class BackendFailed(BackendUnavailable):
    """The backend is here but failed on this model (TensorRT could not parse, build or load the engine, an
    imageNet that would not load); 'auto' falls back to the next backend, saying why."""


class Model(object):
    """A model folder resolved: paths, classes, blob names, the card (None when there is no model.json)."""

    def __init__(self, onnx_path, labels_path, classes, card=None, input_blob="input_0", output_blob="output_0"):
        self.onnx_path = onnx_path
        self._warned_unchecked = False
        self.model_dir = os.path.dirname(os.path.abspath(onnx_path))
        self.labels_path = labels_path
        self.classes = list(classes)
        self.card = card
        self.input_blob = input_blob
        self.output_blob = output_blob
        self.arch = card.arch if card is not None else os.path.splitext(os.path.basename(onnx_path))[0]
        self.mean = card.mean if card is not None else list(IMAGENET_MEAN)
        self.std = card.std if card is not None else list(IMAGENET_STD)
        self.name = os.path.basename(self.model_dir.rstrip(os.sep)) or self.model_dir

    @property
    def contract(self):
        if self.card is None:
            raise ConfigError("%s: no model.json beside the model, so there is no spectrogram contract to render "
                              "audio with (spectrogram PNG input still works)" % self.model_dir)
        return self.card.contract

    @property
    def resolution(self):
        return self.card.resolution if self.card is not None else None

    @property
    def integrity(self):
        """How the ONNX is checked: against model.json's sha256, or not at all (no model.json)."""
        return "sha256 checked against model.json" if self.card is not None else "unchecked (no model.json)"

    def read_onnx(self):
        """The ONNX file's bytes, checked against model.json's sha256 (ConfigError when they differ).

        Without a model.json (an imagenet.py-style ONNX + labels.txt) there is nothing to check against: the
        bytes are returned and a warning says so, once.
        """
        if self.card is not None:
            return self.card.read_onnx(self.model_dir)
        self.warn_unchecked()
        try:
            with open(self.onnx_path, "rb") as handle:
                return handle.read()
        except (IOError, OSError) as error:
            raise ConfigError("%s: model file missing or unreadable (%s)" % (self.onnx_path, error.strerror or error))

    def warn_unchecked(self):
        if not self._warned_unchecked:
            log.warning("%s: no model.json beside it, so its integrity is unchecked (no sha256 to compare with)",
                        self.onnx_path)
            self._warned_unchecked = True

    def sha256(self):
        """The ONNX file's sha256, checked against model.json when it records one."""
        if self.card is not None:
            return self.card.verify_onnx(self.model_dir)
        from stetho.modelcard import sha256_file
        return sha256_file(self.onnx_path)


def load_model(path, labels=None, input_blob=None, output_blob=None, require_card=True):
    """Resolve a model folder or ONNX file into a :class:`Model`.

    ``path``: the folder (with model.json naming its ONNX file) or the ONNX
    file itself (model.json and labels.txt are looked for beside it).
    ``labels``: labels.txt path (default: beside the model).  Blob names
    default to model.json's (input_0 / output_0).  Raises ConfigError naming
    the file at fault: missing files, a labels.txt that disagrees with
    model.json, an ONNX other than the one model.json names, an ONNX whose
    sha256 is not the one model.json recorded (checked here, on every load).
    Without model.json (``require_card=False``: classify.py on a PNG) the
    model loads with a warning that its integrity is unchecked.
    """
    path = str(path)
    if os.path.isdir(path):
        model_dir, onnx_path = path, None
    else:
        model_dir, onnx_path = os.path.dirname(os.path.abspath(path)), path
    card_path = os.path.join(model_dir, "model.json")
    card = None
    if os.path.isfile(card_path):
        card = ModelCard.load(card_path)
    elif require_card:
        raise ConfigError("%s: missing; the service needs the model card (written by train_host/export.py) to know "
                          "the spectrogram contract" % card_path)
    if onnx_path is None:
        if card is None:
            raise ConfigError("%s: no model.json, so name the ONNX file itself" % model_dir)
        onnx_path = card.onnx_path(model_dir)
    elif card is not None and os.path.basename(onnx_path) != card.onnx_file:
        raise ConfigError("%s: %s describes %s, not %s; name that file, or move this one to a folder of its own"
                          % (onnx_path, card_path, card.onnx_file, os.path.basename(onnx_path)))
    if not os.path.isfile(onnx_path):
        raise ConfigError("%s: model file missing" % onnx_path)
    if card is not None:
        card.verify_onnx(model_dir)  # the sha256 model.json records, on every load (ConfigError otherwise)
    labels_path = labels or os.path.join(model_dir, "labels.txt")
    if os.path.isfile(labels_path):
        classes = read_labels(labels_path)
        if card is not None and classes != card.classes:
            raise ConfigError("%s lists %s but %s says %s; copy the labels.txt exported with this model"
                              % (labels_path, classes, card_path, card.classes))
    elif card is not None and labels is None:
        classes = card.classes
    else:
        raise ConfigError("%s: labels file missing" % labels_path)
    input_blob = input_blob or (card.input_blob if card is not None else "input_0")
    output_blob = output_blob or (card.output_blob if card is not None else "output_0")
    model = Model(onnx_path, labels_path if os.path.isfile(labels_path) else None, classes, card,
                  input_blob, output_blob)
    if card is None:
        model.warn_unchecked()
    return model


def check_io_shapes(model, input_shape, output_shape, where):
    """The network's input side R, after checking its shapes against the model; ConfigError otherwise.

    ``input_shape``: the input blob's dims, [1, 3, R, R] (a leading None, i.e. a symbolic batch, is accepted);
    ``output_shape``: the output blob's, holding one value per class ([1, N] or [N]).  Dims that are None
    (symbolic) past the batch are refused: the tensor is built at one size.  R must be the card's resolution
    when there is a card; without one, the network's own R is used.
    """
    dims = [_dim(d) for d in input_shape]
    batch_ok = len(dims) == 4 and dims[0] in (1, None)
    if not batch_ok or dims[1] != 3 or not all(isinstance(d, int) for d in dims[1:]) or dims[2] != dims[3]:
        raise ConfigError("%s: input '%s' has shape %s; the backends feed [1, 3, R, R] (RGB, NCHW, square)"
                          % (where, model.input_blob, _shape_text(input_shape)))
    size = int(dims[2])
    if model.resolution and model.resolution != size:
        raise ConfigError("%s: the network takes %d×%d images but model.json says %d; copy the model.json exported "
                          "with this ONNX" % (where, size, size, model.resolution))
    out = [_dim(d) for d in output_shape]
    if out and out[0] is None:
        out = out[1:]
    if not all(isinstance(d, int) for d in out):
        raise ConfigError("%s: output '%s' has shape %s; export with static shapes"
                          % (where, model.output_blob, _shape_text(output_shape)))
    count = int(np.prod(out)) if out else 1
    if count != len(model.classes):
        raise ConfigError("%s: the network outputs %d values but labels list %d classes (%s); copy the labels.txt "
                          "and model.json exported with this ONNX" % (where, count, len(model.classes),
                                                                      ", ".join(model.classes)))
    return size


def _dim(value):
    """A dim as an int, or None when symbolic or unknown (None, a name, a negative size)."""
    if value is None or isinstance(value, str):
        return None
    value = int(value)
    return value if value >= 0 else None


def _shape_text(shape):
    return "[%s]" % ", ".join("?" if _dim(d) is None else str(_dim(d)) for d in shape)


# ONNX is protobuf: ModelProto.graph = 7; GraphProto.input = 11, .output = 12; ValueInfoProto.name = 1, .type = 2;
# TypeProto.tensor_type = 1; TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1 (onnx.proto)
_GRAPH, _INPUT, _OUTPUT = 7, 11, 12


def _varint(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data):
    """(field number, value) of one protobuf message: an int for a varint, a memoryview for a length-delimited
    field (no copy: the weights are skipped, not read), None for fixed-width ones."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError("protobuf wire type %d" % wire)
        if pos > end:
            raise ValueError("truncated protobuf")
        yield key >> 3, value


def onnx_io_shapes(onnx_bytes):
    """{name: (dims...)} of an ONNX model's graph inputs and outputs, read from its bytes without onnx or a
    runtime (None for a symbolic or unknown dim).  ValueError when the bytes are not an ONNX model."""
    try:
        shapes = _io_shapes(memoryview(onnx_bytes))
    except IndexError:  # a varint running past the end
        raise ValueError("truncated protobuf")
    if not shapes:
        raise ValueError("no graph inputs or outputs found")
    return shapes


def _io_shapes(data):
    shapes = {}
    for number, graph in _fields(data):
        if number != _GRAPH or not isinstance(graph, memoryview):
            continue
        for kind, info in _fields(graph):
            if kind not in (_INPUT, _OUTPUT) or not isinstance(info, memoryview):
                continue
            name, dims = None, []
            for field, value in _fields(info):
                if field == 1 and isinstance(value, memoryview):
                    name = value.tobytes().decode("utf-8", "replace")
                elif field == 2 and isinstance(value, memoryview):
                    for tensor_field, tensor in _fields(value):
                        if tensor_field != 1 or not isinstance(tensor, memoryview):
                            continue
                        for shape_field, shape in _fields(tensor):
                            if shape_field != 2 or not isinstance(shape, memoryview):
                                continue
                            for dim_field, dim in _fields(shape):
                                if dim_field == 1 and isinstance(dim, memoryview):
                                    values = [v for f, v in _fields(dim) if f == 1 and isinstance(v, int)]
                                    dims.append(values[0] if values and values[0] < (1 << 63) else None)
            if name is not None:
                shapes[name] = tuple(dims)
    return shapes


def pixel_tables(mean, std):
    """For each channel, the 256 values imagenet_tensor computes for pixel values 0..255 (float32, same order of
    operations: (v · (1/255) + 0 − mean) / std)."""
    values = np.arange(256, dtype=np.float32)
    multiplier = np.float32(1.0) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return [(values * multiplier + np.float32(0.0) - mean[c]) / std[c] for c in range(3)]


class Backend(object):
    """Base class: ``prepare`` builds imageNet's tensor, ``infer`` runs the network, ``probabilities`` checks."""

    name = "base"

    def __init__(self, model):
        self.model = model
        self.reason = ""
        self.input_size = None  # R read from the network itself, when the backend can
        self._warned_logits = False
        self._tables = None
        self._level_table = None
        self._level_rows = None

    @property
    def size(self):
        """R of the network input: the model card's, else the network's own."""
        return self.model.resolution or self.input_size

    def prepare(self, image, levels=None):
        """uint8 H×W×3 → float32 [1, 3, R, R], exactly as jetson-inference's imageNet builds it.

        An R×R image (what the contract renders) goes through per-channel
        lookup tables holding ``stetho.tensor.imagenet_tensor``'s float32
        arithmetic for each of the 256 pixel values: the same bits, about five
        times faster; any other size takes imagenet_tensor's stretch.
        ``levels`` (optional): the uint8 R×R colour-table levels that ``image``
        is, coloured with the model's palette (``stetho.contract.render_segment_levels``);
        the tensor is then looked up from them in one step (the same numbers).
        """
        size = self.size
        if self._tables is None:
            self._tables = pixel_tables(self.model.mean, self.model.std)
        if (levels is not None and self.model.card is not None and levels.shape == (size, size)
                and levels.dtype == np.uint8):
            if self._level_table is None:  # (3, 256): channel c of palette colour v, through the pixel tables
                palette = self.model.contract.palette
                self._level_table = np.stack([self._tables[c][palette[:, c]] for c in range(3)])
                self._level_rows = np.ascontiguousarray(self._level_table.T)  # (256, 3): the same, level-major
            if TAKE_ROWS_FIRST:
                # mode='clip' (here and below): uint8 indices into 256-entry tables need no bounds check
                rows = self._level_rows.take(levels, axis=0, mode="clip")  # (R, R, 3)
                return rows.transpose(2, 0, 1).copy()[None]  # C order (ascontiguousarray, in one C call)
            return self._level_table.take(levels, axis=1, mode="clip")[None]
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[:2] != (size, size) or image.shape[2] < 3:
            return imagenet_tensor(image, size, self.model.mean, self.model.std)
        tensor = np.empty((1, 3, size, size), dtype=np.float32)
        for channel in range(3):
            self._tables[channel].take(image[:, :, channel], out=tensor[0, channel], mode="clip")
        return tensor

    def infer(self, prepared):
        raise NotImplementedError

    def classify(self, image):
        return self.infer(self.prepare(image))

    def probabilities(self, raw):
        """The network output as probabilities (N,).

        The exported ONNX ends in softmax; an output that is not a probability
        vector (e.g. a model from jetson-inference's own onnx_export.py, which
        outputs logits) is passed through softmax, with a one-time warning.
        """
        values = np.asarray(raw, dtype=np.float32).ravel()
        if values.size != len(self.model.classes):
            raise ConfigError("%s: the network outputs %d values but labels list %d classes"
                              % (self.model.onnx_path, values.size, len(self.model.classes)))
        listed = values.tolist()  # a handful of numbers: plain Python is quicker than numpy calls here
        if all(-1e-6 <= v <= 1 + 1e-6 for v in listed) and abs(sum(listed) - 1.0) < 1e-3:
            return values
        if not self._warned_logits:
            log.warning("%s: output '%s' is not softmax probabilities (sum %.3f); applying softmax",
                        self.model.onnx_path, self.model.output_blob, float(values.sum()))
            self._warned_logits = True
        return softmax(values).astype(np.float32)

    def describe(self):
        return "%s (%s)" % (self.name, self.reason) if self.reason else self.name

    def close(self):
        """Release what the backend holds (sessions, engines, GPU memory) now; safe to call twice."""


def _create(name, model, threads):
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend
        return TensorRTBackend(model)
    if name == "jetson":
        from .jetson import JetsonBackend
        return JetsonBackend(model)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(model, threads=threads)
    raise ValueError("unknown backend %r; choose one of %s" % (name, ", ".join(BACKENDS)))


def load_backend(name, model, threads=1):
    """The backend ``name`` for ``model``; 'auto' tries tensorrt, jetson, onnxruntime in turn.

    Returns a Backend whose ``reason`` says why it was chosen; raises
    BackendUnavailable (with every reason) when none can run.  'auto' passes
    over a backend that is missing (BackendUnavailable) or fails on this model
    (BackendFailed: logged as a warning); a ConfigError (the ONNX is not the
    one model.json records, shapes or classes that disagree) stops it.
    """
    if name != "auto":
        backend = _create(name, model, threads)
        backend.reason = backend.reason or "asked for"
        return backend
    skipped = []
    for candidate in AUTO_ORDER:
        try:
            backend = _create(candidate, model, threads)
        except BackendUnavailable as error:
            skipped.append("%s: %s" % (candidate, error))
            if isinstance(error, BackendFailed):
                log.warning("auto: %s failed, falling back: %s", candidate, error)
            else:
                log.debug("auto: %s unavailable (%s)", candidate, error)
            continue
        why = "auto: " + ("; ".join(skipped) + "; " if skipped else "") + "using " + candidate
        if backend.reason:
            why += " (%s)" % backend.reason
        backend.reason = why
        log.info("%s", why)
        return backend
    raise BackendUnavailable("no backend can run here: " + "; ".join(skipped))

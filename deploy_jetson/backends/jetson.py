"""jetson-inference backend: exactly the imagenet.py path.

NOT EXECUTED in this project's CI (needs a Jetson with jetson-inference built):
the module lookup, the constructor/Classify API dispatch and the result
decoding are unit-tested with fake modules that parse their arguments and
read labels.txt as the real bindings do (tests/fakes_jetson.py).

    net = jetson_inference.imageNet(model=M/resnet18.onnx, labels=M/labels.txt,
                                    input_blob='input_0', output_blob='output_0')
    img = jetson_utils.cudaFromNumpy(rgb_uint8)        # rgb8 in CUDA memory
    predictions = net.Classify(img, topK=0)            # [(class, confidence)], all classes

imageNet pre-processes on the GPU (nearest stretch, x/255, ImageNet mean/std,
RGB, NCHW: ``stetho.tensor`` reproduces it), builds and caches its own
TensorRT engine beside the ONNX (``resnet18.onnx.1.1.<trt>.GPU.FP16.engine``,
which the TensorRT backend never touches), and keeps every class above its
threshold; the threshold and imageNet's own smoothing are set to 0 so the
service sees the raw probabilities of all classes.

imageNet loads the ONNX by path, so the file is checked against model.json's
sha256 right before the constructor is called, and its input [1, 3, R, R] and
output count are read from those bytes and checked against the card before
imageNet spends minutes building its engine.  What the bindings accept, from
jetson-inference's python/bindings/PyImageNet.cpp:

* current builds: ``imageNet(network, argv, model, labels, input_blob,
  output_blob)`` by keyword (a bad keyword or type is CPython's TypeError),
  and ``Classify(image, width, height, format, topK)`` whose docstring
  documents topK (topK=0: every class above the threshold, as a list);
* older builds (as shipped in the JetPack 4.6 era): ``imageNet(network,
  argv)`` only, any argument error re-raised as ``Exception('... failed to
  parse args tuple')``, and ``Classify(image, width, height)`` returning only
  the top class.  The service needs every class's probability, so such a
  build is refused before anything is built (its Classify docstring has no
  topK).

Without labels.txt imageNet silently names the classes 'Class #N'
(tensorNet::LoadClassLabels), so a missing labels.txt is refused here.
"""
import importlib
import logging

import numpy as np

from stetho import ConfigError

from . import Backend, BackendFailed, BackendUnavailable, check_io_shapes, onnx_io_shapes

log = logging.getLogger("stetho.jetson")

UPDATE = ("rebuild jetson-inference from a current master (its imageNet takes model=/labels= keywords and "
          "Classify(topK=)) or use --backend tensorrt")


def import_jetson(importer=importlib.import_module):
    """(jetson_inference, jetson_utils) under their new or their old (jetson.inference) names."""
    errors = []
    for inference_name, utils_name in (("jetson_inference", "jetson_utils"), ("jetson.inference", "jetson.utils")):
        try:
            return importer(inference_name), importer(utils_name)
        except ImportError as error:
            errors.append(str(error))
    raise BackendUnavailable("jetson-inference not installed (%s)" % "; ".join(errors))


def classify_has_topk(image_net):
    """True/False when imageNet.Classify's docstring says whether it takes topK (it documents the argument in the
    builds that have it); None when there is no docstring to tell."""
    doc = getattr(getattr(image_net, "Classify", None), "__doc__", None)
    if not doc:
        return None
    return "topK" in doc


def _rejects_keywords(error):
    """True when imageNet(...) refused our keyword arguments themselves: CPython's 'is an invalid keyword
    argument' TypeError, or the old bindings' blanket 'failed to parse args tuple' Exception."""
    text = str(error)
    return (isinstance(error, TypeError) and "invalid keyword argument" in text) or "failed to parse args" in text


def create_net(inference, model):
    """imageNet for the model: keyword arguments (current builds), or argv on a build that has Classify(topK=) but
    not the keywords.  A build without topK is refused (BackendUnavailable) before anything is constructed."""
    if model.labels_path is None:
        raise ConfigError("%s/labels.txt: missing; jetson-inference's imageNet reads the class names from it (without "
                          "it, it names them 'Class #N'); copy the labels.txt exported with this model"
                          % model.model_dir)
    has_topk = classify_has_topk(inference.imageNet)
    if has_topk is False:
        raise BackendUnavailable("this jetson-inference build's imageNet.Classify has no topK (it returns only the "
                                 "top class); " + UPDATE)
    try:
        return inference.imageNet(model=model.onnx_path, labels=model.labels_path, input_blob=model.input_blob,
                                  output_blob=model.output_blob)
    except Exception as error:
        if not _rejects_keywords(error):
            raise BackendFailed("jetson-inference's imageNet cannot load %s (%s: %s)"
                                % (model.onnx_path, type(error).__name__, error))
        if has_topk is not True:  # no topK documented either: an old build, refused before building
            raise BackendUnavailable("this jetson-inference build's imageNet takes no model=/labels= keywords (%s); "
                                     "%s" % (error, UPDATE))
    argv = ["--model=" + model.onnx_path, "--labels=" + model.labels_path, "--input_blob=" + model.input_blob,
            "--output_blob=" + model.output_blob]
    try:
        return inference.imageNet(argv=argv)
    except Exception as error:
        raise BackendFailed("jetson-inference's imageNet cannot load %s (%s: %s)"
                            % (model.onnx_path, type(error).__name__, error))


def decode(predictions, n_classes):
    """imageNet's [(class, confidence), ...] → a probability vector (N,) (classes not listed: 0)."""
    probabilities = np.zeros(n_classes, dtype=np.float32)
    for class_id, confidence in predictions:
        if not 0 <= int(class_id) < n_classes:
            raise ConfigError("imageNet returned class %d but the labels list %d classes" % (class_id, n_classes))
        probabilities[int(class_id)] = confidence
    return probabilities


class JetsonBackend(Backend):
    name = "jetson"

    def __init__(self, model, modules=None):
        Backend.__init__(self, model)
        self.net = None
        inference, self.utils = modules if modules is not None else import_jetson()
        # imageNet reads the file by path: check it now, and its shapes against the card, before it builds an engine
        onnx_bytes = model.read_onnx()  # ConfigError when it is not the ONNX model.json records
        try:
            shapes = onnx_io_shapes(onnx_bytes)
        except ValueError as error:
            raise ConfigError("%s: not an ONNX model (%s)" % (model.onnx_path, error))
        del onnx_bytes
        for blob in (model.input_blob, model.output_blob):
            if blob not in shapes:
                raise ConfigError("%s: no tensor '%s' (the model has %s); pass --input_blob/--output_blob"
                                  % (model.onnx_path, blob, ", ".join(sorted(shapes))))
        self.input_size = check_io_shapes(model, shapes[model.input_blob], shapes[model.output_blob],
                                          model.onnx_path)
        self.net = create_net(inference, model)
        try:
            self._check_net()
        except Exception:
            self.close()
            raise

    def _check_net(self):
        model = self.model
        n = int(self.net.GetNumClasses())
        if n != len(model.classes):
            raise ConfigError("%s: imageNet sees %d classes but the labels list %d" % (model.onnx_path, n,
                                                                                       len(model.classes)))
        describe = getattr(self.net, "GetClassDesc", None)
        for index, name in enumerate(model.classes if describe is not None else ()):
            seen = str(describe(index)).rstrip("\r")
            if seen != name:
                raise ConfigError("%s: imageNet reads class %d as %r but the labels list %r; rename the class "
                                  "(stetho.labels.check_class_names)" % (model.labels_path, index, seen, name))
        for setter, value in (("SetThreshold", 0.0), ("SetSmoothing", 0.0)):
            if hasattr(self.net, setter):
                getattr(self.net, setter)(value)
        probe = self.prepare(np.zeros((8, 8, 3), dtype=np.uint8))
        try:
            result = self.net.Classify(probe, topK=0)
        except Exception as error:  # the old bindings raise a plain Exception for an unknown keyword
            raise BackendUnavailable("this jetson-inference build's imageNet.Classify does not take topK (%s); %s"
                                     % (error, UPDATE))
        if not isinstance(result, list):
            raise BackendUnavailable("imageNet.Classify(topK=0) returned %r, not a list of (class, confidence)"
                                     % (result,))
        self.reason = "imageNet %s" % getattr(self.net, "GetNetworkName", lambda: "custom")()

    def prepare(self, image, levels=None):
        """The rendered RGB image itself, in CUDA memory: imageNet builds the tensor on the GPU (``levels``
        is not needed)."""
        return self.utils.cudaFromNumpy(np.ascontiguousarray(image, dtype=np.uint8))

    def infer(self, cuda_image):
        return self.probabilities(decode(self.net.Classify(cuda_image, topK=0), len(self.model.classes)))

    def close(self):
        self.net = None

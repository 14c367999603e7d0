"""jetson-inference backend: exactly the imagenet.py path.

NOT EXECUTED in this project's CI (needs a Jetson with jetson-inference built):
the module lookup, the constructor/Classify API dispatch and the result
decoding are unit-tested with fake modules.

    net = jetson_inference.imageNet(model=M/resnet18.onnx, labels=M/labels.txt,
                                    input_blob='input_0', output_blob='output_0')
    img = jetson_utils.cudaFromNumpy(rgb_uint8)        # rgb8 in CUDA memory
    predictions = net.Classify(img, topK=0)            # [(class, confidence)], all classes

imageNet pre-processes on the GPU (nearest stretch, x/255, ImageNet mean/std,
RGB, NCHW: ``stetho.tensor`` reproduces it), builds and caches its own
TensorRT engine beside the ONNX, and keeps every class above its threshold;
the threshold and imageNet's own smoothing are set to 0 so the service sees
the raw probabilities of all classes.  Older builds (the JetPack 4.6 era
before 2022) take ``argv=[...]`` instead of keyword arguments (handled) but
return only the top class from Classify: they are refused with a message,
since the service needs every class's probability; use ``--backend tensorrt``
there.
"""
import importlib

import numpy as np

from stetho import ConfigError

from . import Backend, BackendUnavailable


def import_jetson(importer=importlib.import_module):
    """(jetson_inference, jetson_utils) under their new or their old (jetson.inference) names."""
    errors = []
    for inference_name, utils_name in (("jetson_inference", "jetson_utils"), ("jetson.inference", "jetson.utils")):
        try:
            return importer(inference_name), importer(utils_name)
        except ImportError as error:
            errors.append(str(error))
    raise BackendUnavailable("jetson-inference not installed (%s)" % "; ".join(errors))


def create_net(inference, model):
    """imageNet for the model, with keyword arguments (2022+) or argv (older builds)."""
    labels = model.labels_path or ""
    try:
        return inference.imageNet(model=model.onnx_path, labels=labels, input_blob=model.input_blob,
                                  output_blob=model.output_blob)
    except TypeError:
        argv = ["--model=" + model.onnx_path, "--labels=" + labels, "--input_blob=" + model.input_blob,
                "--output_blob=" + model.output_blob]
        return inference.imageNet(argv=argv)


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
        inference, self.utils = modules if modules is not None else import_jetson()
        try:
            self.net = create_net(inference, model)
        except BackendUnavailable:
            raise
        except Exception as error:
            raise ConfigError("%s: jetson-inference's imageNet cannot load the model (%s)" % (model.onnx_path, error))
        n = int(self.net.GetNumClasses())
        if n != len(model.classes):
            raise ConfigError("%s: imageNet sees %d classes but the labels list %d" % (model.onnx_path, n,
                                                                                       len(model.classes)))
        for setter, value in (("SetThreshold", 0.0), ("SetSmoothing", 0.0)):
            if hasattr(self.net, setter):
                getattr(self.net, setter)(value)
        probe = self.prepare(np.zeros((8, 8, 3), dtype=np.uint8))
        try:
            result = self.net.Classify(probe, topK=0)
        except TypeError:
            raise BackendUnavailable("this jetson-inference build's imageNet.Classify has no topK (it returns only the "
                                     "top class); rebuild jetson-inference from a current master or use "
                                     "--backend tensorrt")
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

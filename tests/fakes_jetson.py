"""Fake ``jetson_inference``/``jetson_utils`` modules that parse their arguments and read labels.txt as the real ones.

From jetson-inference's python/bindings/PyImageNet.cpp and c/imageNet.cpp (tensorNet.cpp in later builds):

  current        imageNet(network, argv, model, labels, input_blob, output_blob) parsed by
                 PyArg_ParseTupleAndKeywords("|sOssss"): an unknown keyword or a non-str where 's' is expected
                 is CPython's TypeError.  Classify(image, width, height, format, topK) ("O|iisi"); its docstring
                 documents topK; topK >= 0 returns a list of (class, confidence) sorted by confidence, 0 meaning
                 every class at or above the threshold.  A missing labels file is not an error: the classes are
                 named 'Class #N' (validateClassLabels).  Also GetClassDesc/GetClassLabel, Set/GetThreshold,
                 Set/GetSmoothing.
  old            imageNet(network, argv) ("|sO") only; any argument error is re-raised as
                 Exception("imageNet.__init()__ failed to parse args tuple"); Classify(image, width, height)
                 returns (class, confidence) of the top class; a missing labels file fails the load.

Both read labels.txt line by line with fgets(str, 512): a line with len > 9 (counting its newline),
str[0] == 'n' and str[9] == ' ' is "<synset> <description>" and only the description is kept (its last byte
cut, assuming a newline); other lines are used whole.  Loading more labels than the network has outputs
fails; fewer are padded with 'Class #N'.  The output count is the ONNX output's channel count.

Constructing an imageNet builds its TensorRT engine (minutes on a Nano): ``record['builds']`` lists each.
The network itself is run with onnxruntime on imageNet's pre-processing (stetho.tensor.imagenet_tensor with
ImageNet's mean/std, which imageNet hard-codes for ONNX models).
"""
import types

import numpy as np

from stetho.tensor import imagenet_tensor


def load_class_info(path):
    """The class descriptions jetson-inference's LoadClassInfo/LoadClassLabels reads from ``path``."""
    with open(path, "rb") as handle:
        data = handle.read()
    descriptions, pos = [], 0
    while pos < len(data):
        newline = data.find(b"\n", pos, pos + 511)
        line = data[pos:newline + 1] if newline != -1 else data[pos:pos + 511]  # fgets(str, 512, f)
        pos += len(line)
        if len(line) > 9 and line[0:1] == b"n" and line[9:10] == b" ":
            descriptions.append(line[10:len(line) - 1])  # str[syn] = 0; str[len-1] = 0; desc = str + syn + 1
        elif line:
            descriptions.append(line[:-1] if line.endswith(b"\n") else line)
    return [d.decode("utf-8", "replace") for d in descriptions]


def parse_args(function, kwlist, formats, args, kwargs):
    """CPython's PyArg_ParseTupleAndKeywords for 's' (str) and 'O' (any) formats, with its TypeErrors."""
    if len(args) > len(kwlist):
        raise TypeError("%s takes at most %d arguments (%d given)" % (function, len(kwlist), len(args)))
    values = dict(zip(kwlist, args))
    for key, value in kwargs.items():
        if key not in kwlist:
            raise TypeError("'%s' is an invalid keyword argument for this function" % key)
        if key in values:
            raise TypeError("argument for %s given by name ('%s') and position" % (function, key))
        values[key] = value
    for index, key in enumerate(kwlist):
        if key in values and formats[index] == "s" and not isinstance(values[key], str):
            raise TypeError("%s() argument %d must be str, not %s" % (function, index + 1,
                                                                       type(values[key]).__name__))
        if key in values and formats[index] == "i" and not isinstance(values[key], int):
            raise TypeError("an integer is required (got type %s)" % type(values[key]).__name__)
    return values


def _argv_options(argv):
    options = {}
    for item in argv:
        if item.startswith("--") and "=" in item:
            key, value = item[2:].split("=", 1)
            options[key] = value
    return options


def fake_jetson(era="current"):
    """(jetson_inference, jetson_utils, record) for a ``era`` 'current' build or an 'old' one (JetPack 4.6 era)."""
    import onnxruntime
    record = {"builds": [], "made": []}

    class ImageNet(object):
        def _load(self, model, labels, input_blob, output_blob):
            try:
                session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
            except Exception:
                raise Exception("jetson.inference -- imageNet failed to load network")
            record["builds"].append(model)  # tensorNet::LoadNetwork builds (or loads) the TensorRT engine here
            names = dict((i.name, i) for i in session.get_inputs())
            outputs = dict((o.name, o) for o in session.get_outputs())
            if input_blob not in names or output_blob not in outputs:
                raise Exception("jetson.inference -- imageNet failed to load network")
            self.session, self.input_blob, self.output_blob = session, input_blob, output_blob
            self.size = int(names[input_blob].shape[2])
            self.num_classes = int(outputs[output_blob].shape[1])  # DIMS_C of the output, batch dim shifted off
            try:
                descriptions = load_class_info(labels) if labels else []
            except (IOError, OSError):
                descriptions = None
            if descriptions is None or not descriptions:
                if era == "old":
                    raise Exception("jetson.inference -- imageNet failed to load network")
                descriptions = []
            descriptions += ["Class #%d" % n for n in range(len(descriptions), self.num_classes)]
            if len(descriptions) != self.num_classes:
                raise Exception("jetson.inference -- imageNet failed to load network")
            self.descriptions = descriptions
            self.threshold, self.smoothing = 0.01, 0.0
            record["made"].append({"model": model, "labels": labels, "input_blob": input_blob,
                                   "output_blob": output_blob})

        def _probabilities(self, image):
            tensor = imagenet_tensor(image.array, self.size)
            return self.session.run([self.output_blob], {self.input_blob: tensor})[0].ravel()

        def GetNumClasses(self):
            return self.num_classes

        def GetNetworkName(self):
            return "custom"

        def GetClassDesc(self, index):
            if index >= self.num_classes:
                raise Exception("jetson.inference -- imageNet requested class index is out of bounds")
            return self.descriptions[index]

        def GetClassSynset(self, index):
            return "n%08d" % index

    if era == "current":
        class CurrentImageNet(ImageNet):
            def __init__(self, *args, **kwargs):
                values = parse_args("imageNet", ["network", "argv", "model", "labels", "input_blob",
                                                 "output_blob"], "sOssss", args, kwargs)
                argv = values.get("argv")
                if isinstance(argv, list) and argv:
                    options = _argv_options(argv)
                    self._load(options.get("model"), options.get("labels"), options.get("input_blob", "data"),
                               options.get("output_blob", "prob"))
                else:
                    self._load(values.get("model") or values.get("network", "googlenet"), values.get("labels"),
                               values.get("input_blob", "data"), values.get("output_blob", "prob"))

            def Classify(self, *args, **kwargs):
                """Classify an image and return the object's class and confidence.

                topK (int) -- the number of predictions to return (sorted by confidence); if topK is 0, then all
                valid predictions will be returned"""
                values = parse_args("Classify", ["image", "width", "height", "format", "topK"], "Oiisi",
                                    args, kwargs)
                probabilities = self._probabilities(values["image"])
                top_k = values.get("topK", -1)
                if top_k < 0:
                    best = int(np.argmax(probabilities))
                    return best, float(probabilities[best])
                pairs = sorted(((i, float(p)) for i, p in enumerate(probabilities) if p >= self.threshold),
                               key=lambda pair: -pair[1])
                return pairs if top_k == 0 else pairs[:top_k]

            GetClassLabel = ImageNet.GetClassDesc

            def SetThreshold(self, value):
                self.threshold = float(value)

            def GetThreshold(self):
                return self.threshold

            def SetSmoothing(self, value):
                self.smoothing = float(value)

            def GetSmoothing(self):
                return self.smoothing
        net_class = CurrentImageNet
    else:
        class OldImageNet(ImageNet):
            def __init__(self, *args, **kwargs):
                try:
                    values = parse_args("imageNet", ["network", "argv"], "sO", args, kwargs)
                except TypeError:
                    raise Exception("jetson.inference -- imageNet.__init()__ failed to parse args tuple")
                options = _argv_options(values.get("argv") or [])
                if not options:
                    raise Exception("jetson.inference -- imageNet invalid built-in network was requested")
                self._load(options.get("model"), options.get("labels"), options.get("input_blob", "data"),
                           options.get("output_blob", "prob"))

            def Classify(self, *args, **kwargs):
                """Classify an RGBA image and return the object's class and confidence.

                image (capsule) -- CUDA memory capsule; width, height (int) -- of the image (in pixels).
                Returns (int, float) -- tuple containing the object's class index and confidence"""
                try:
                    values = parse_args("Classify", ["image", "width", "height"], "Oii", args, kwargs)
                except TypeError:
                    raise Exception("jetson.inference -- imageNet.Classify() failed to parse args tuple")
                probabilities = self._probabilities(values["image"])
                best = int(np.argmax(probabilities))
                return best, float(probabilities[best])
        net_class = OldImageNet

    def cuda_from_numpy(array):
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 3:
            raise Exception("jetson.utils -- cudaFromNumpy() unsupported array")
        return types.SimpleNamespace(array=array.copy(), shape=array.shape, format="rgb8")

    inference = types.SimpleNamespace(imageNet=net_class)
    utils = types.SimpleNamespace(cudaFromNumpy=cuda_from_numpy)
    return inference, utils, record

"""onnxruntime backend: TensorRT or CUDA execution providers when this onnxruntime has them, else CPU.

The CPU path is what the tests, the demo and a workstation use; on a Jetson,
onnxruntime-gpu builds add the CUDA/TensorRT providers.  ``threads`` sets
``intra_op_num_threads`` (1 keeps a Nano's other cores free for audio and
rendering); graph optimisations are onnxruntime's defaults.

The session is built from the ONNX's bytes as checked against model.json's
sha256 (``Model.read_onnx``), so the model checked is the model run; its input
[1, 3, R, R] and its output (one value per class) are checked against the card
when the session is made (``check_io_shapes``).
"""
import numpy as np

from stetho import ConfigError

from . import Backend, BackendUnavailable, check_io_shapes

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available):
    """The providers to ask for, best first, among ``available`` (CPU always last)."""
    chosen = [p for p in PREFERRED_PROVIDERS if p in available and p != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]


def _dims(shape):
    """onnxruntime's shape (ints, and str or None for symbolic dims) with None for every symbolic dim."""
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model, threads=1, ort=None):
        Backend.__init__(self, model)
        self.session = None
        if ort is None:
            try:
                import onnxruntime as ort
            except ImportError as error:
                raise BackendUnavailable("onnxruntime is not installed (%s)" % error)
        onnx_bytes = model.read_onnx()  # ConfigError when it is not the ONNX model.json records
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = choose_providers(ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(onnx_bytes, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError("%s: onnxruntime cannot load the model (%s)" % (model.onnx_path, error))
        del onnx_bytes
        inputs = dict((i.name, i) for i in self.session.get_inputs())
        outputs = dict((o.name, o) for o in self.session.get_outputs())
        if model.input_blob not in inputs:
            raise ConfigError("%s: no input named '%s' (the model has %s); pass --input_blob"
                              % (model.onnx_path, model.input_blob, ", ".join(inputs)))
        if model.output_blob not in outputs:
            raise ConfigError("%s: no output named '%s' (the model has %s); pass --output_blob"
                              % (model.onnx_path, model.output_blob, ", ".join(outputs)))
        self.input_size = check_io_shapes(model, _dims(inputs[model.input_blob].shape),
                                          _dims(outputs[model.output_blob].shape), model.onnx_path)
        self.providers = self.session.get_providers()
        self.threads = int(threads)
        self.reason = "providers %s, %d thread%s" % (",".join(self.providers), self.threads,
                                                     "" if self.threads == 1 else "s")

    def infer(self, tensor):
        output = self.session.run([self.model.output_blob], {self.model.input_blob: tensor})[0]
        return self.probabilities(np.asarray(output))

    def close(self):
        self.session = None

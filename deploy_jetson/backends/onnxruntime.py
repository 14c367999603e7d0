"""onnxruntime backend: TensorRT or CUDA execution providers when this onnxruntime has them, else CPU.

The CPU path is what the tests, the demo and a workstation use; on a Jetson,
onnxruntime-gpu builds add the CUDA/TensorRT providers.  ``threads`` sets
``intra_op_num_threads`` (1 keeps a Nano's other cores free for audio and
rendering); graph optimisations are onnxruntime's defaults.
"""
import numpy as np

from stetho import ConfigError

from . import Backend, BackendUnavailable

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available):
    """The providers to ask for, best first, among ``available`` (CPU always last)."""
    chosen = [p for p in PREFERRED_PROVIDERS if p in available and p != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model, threads=1, ort=None):
        Backend.__init__(self, model)
        if ort is None:
            try:
                import onnxruntime as ort
            except ImportError as error:
                raise BackendUnavailable("onnxruntime is not installed (%s)" % error)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = choose_providers(ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(model.onnx_path, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError("%s: onnxruntime cannot load the model (%s)" % (model.onnx_path, error))
        inputs = dict((i.name, i) for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        if model.input_blob not in inputs:
            raise ConfigError("%s: no input named '%s' (the model has %s); pass --input_blob"
                              % (model.onnx_path, model.input_blob, ", ".join(inputs)))
        if model.output_blob not in outputs:
            raise ConfigError("%s: no output named '%s' (the model has %s); pass --output_blob"
                              % (model.onnx_path, model.output_blob, ", ".join(outputs)))
        shape = inputs[model.input_blob].shape
        if len(shape) == 4 and isinstance(shape[2], int):
            self.input_size = int(shape[2])
            if model.resolution and model.resolution != self.input_size:
                raise ConfigError("%s: the network takes %d×%d images but model.json says %d"
                                  % (model.onnx_path, shape[2], shape[3], model.resolution))
        self.providers = self.session.get_providers()
        self.threads = int(threads)
        self.reason = "providers %s, %d thread%s" % (",".join(self.providers), self.threads,
                                                     "" if self.threads == 1 else "s")

    def infer(self, tensor):
        output = self.session.run([self.model.output_blob], {self.model.input_blob: tensor})[0]
        return self.probabilities(np.asarray(output))

"""Fake ``tensorrt`` and ``pycuda`` modules, shaped per TensorRT version like the real ones and strict where they are.

Neither library can run here, so the TensorRT backend is run against these.  Per version, what the real Python
bindings offer (python/src/infer/pyCore.cpp of 8.2; TensorRT-API.pdf 8.4.0 EA and 8.5.1 "API changes"; the
TensorRT 8.x to 10.x migration guide's "Removed Python APIs"):

  8.0, 8.2   the binding-index API (num_bindings, get_binding_name/shape/dtype, binding_is_input),
             execute_async_v2, config.max_workspace_size, Builder.build_engine (deprecated) and
             build_serialized_network, EXPLICIT_BATCH needed by the ONNX parser; no TensorIOMode,
             MemoryPoolType, set_memory_pool_limit, num_io_tensors, set_tensor_address, execute_async_v3.
  8.5, 8.6   both APIs; the binding-index calls (deprecated in 8.5) and max_workspace_size (deprecated in 8.4)
             warn DeprecationWarning, as the real bindings' deprecated members do.
  10         only the name-based API, set_memory_pool_limit and build_serialized_network: the binding-index
             calls, execute_async_v2, max_workspace_size and build_engine are gone (AttributeError).

Strict like the real thing:
  * an engine whose Runtime was garbage-collected fails: destroying a runtime before the engines it
    deserialized is undefined behaviour in TensorRT (NVIDIA/TensorRT#4436);
  * device memory freed, or an engine/context/runtime destroyed, after pycuda.autoinit's context was popped
    (its atexit hook) is recorded in ``cuda.errors``: real TensorRT then reports "Cuda Runtime (invalid device
    context)" or crashes (NVIDIA/TensorRT#1632);
  * execute_async_v3 returns False unless every I/O tensor has an address (enqueueV3 does);
  * deserialize_cuda_engine returns None for bytes that are not an engine of this fake (a corrupt file);
  * ``trt.nptype`` only knows TensorRT's DataType values, not numpy dtypes.

The "engine" runs the very ONNX it was built from with onnxruntime, on the bytes the backend copies through
the fake device memory, so buffer plumbing, tensor names and binding order are exercised for real.
What this cannot show: that real TensorRT builds and runs the model.
"""
import types
import warnings
import weakref

import numpy as np

VERSIONS = ("8.0.1.6", "8.2.1.8", "8.5.2.2", "8.6.1.6", "10.3.0.26")
ENGINE_MAGIC = b"FAKEPLAN"


def api_of(version):
    """What TensorRT ``version``'s Python API has (see the module docstring)."""
    major, minor = [int(v) for v in version.split(".")[:2]]
    return {
        "bindings": major < 10,
        "bindings_deprecated": (major, minor) >= (8, 5),
        "tensors": (major, minor) >= (8, 5),
        "pool": (major, minor) >= (8, 4),
        "workspace": major < 10,
        "workspace_deprecated": (major, minor) >= (8, 4),
        "build_engine": major < 10,
        "v2": major < 10,
        "v3": (major, minor) >= (8, 5),
        "needs_explicit_batch": major < 10,
    }


# ---- pycuda ------------------------------------------------------------------------------------------------------

class FakeCuda(object):
    """pycuda.driver as the backend uses it, plus pycuda.autoinit's context and its atexit pop.

    ``memory``: the live device allocations (address → bytes); ``errors``: what real CUDA would have refused.
    """

    def __init__(self, gpu="NVIDIA Tegra X1", capability=(5, 3)):
        self.gpu, self.capability = gpu, tuple(capability)
        self.memory, self.next_address, self.errors = {}, 4096, []
        self.context_alive = True
        cuda = self

        class Device(object):
            def __init__(self, index):
                assert index == 0

            def name(self):
                return cuda.gpu

            def compute_capability(self):
                return cuda.capability

        class Stream(object):
            handle = 1234

            def synchronize(self):
                cuda._check("stream synchronize")

        class DeviceAllocation(object):
            def __init__(self, address):
                self.address, self.freed = address, False

            def __int__(self):
                return self.address

            def free(self):
                if not self.freed:
                    cuda.destroyed("device memory at %d" % self.address)
                    cuda.memory.pop(self.address, None)
                    self.freed = True

            def __del__(self):  # pycuda frees an allocation when it is garbage-collected
                self.free()

        self.Device, self.Stream, self.DeviceAllocation = Device, Stream, DeviceAllocation

    def _check(self, what):
        if not self.context_alive:
            raise RuntimeError("cuda: %s after the context was popped: invalid device context" % what)

    def destroyed(self, what):
        """Record ``what`` being released after pycuda.autoinit popped the context (an error in real CUDA)."""
        if not self.context_alive:
            self.errors.append("%s released after the CUDA context was popped" % what)

    def pop_context(self):
        """What pycuda.autoinit's ``atexit.register(context.pop)`` does at interpreter exit."""
        self.context_alive = False

    def pagelocked_empty(self, size, dtype):
        return np.empty(size, dtype)

    def mem_alloc(self, nbytes):
        self._check("mem_alloc")
        address = self.next_address
        self.next_address += int(nbytes) + 256
        self.memory[address] = np.zeros(int(nbytes), np.uint8)
        return self.DeviceAllocation(address)

    def _live(self, device):
        address = int(device)
        if address not in self.memory:
            raise RuntimeError("cuda: %d is not live device memory (freed?)" % address)
        return self.memory[address]

    def memcpy_htod_async(self, device, host, stream):
        self._check("memcpy")
        self._live(device)[:] = np.frombuffer(host.tobytes(), np.uint8)

    def memcpy_dtoh_async(self, host, device, stream):
        self._check("memcpy")
        host[:] = np.frombuffer(self._live(device).tobytes(), host.dtype)


# ---- tensorrt ----------------------------------------------------------------------------------------------------

def fake_tensorrt(version, cuda, builds=None, fail=()):
    """A module-like object with TensorRT ``version``'s Python API (see the module docstring).

    ``builds`` (a list) gets one record per engine built; ``fail`` names steps that fail as they do in real
    TensorRT: 'parse' (parser errors), 'build' (build_serialized_network returns None), 'context'
    (create_execution_context returns None).  ``trt.builders`` counts Builder objects made; ``trt.engines``
    holds the engines alive.
    """
    api = api_of(version)
    builds = builds if builds is not None else []
    trt = types.SimpleNamespace(__version__=version, builders=0, engines=weakref.WeakSet())
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    trt.DataType = types.SimpleNamespace(FLOAT="DataType.FLOAT", HALF="DataType.HALF")
    if api["pool"]:
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="MemoryPoolType.WORKSPACE")
    if api["tensors"]:
        trt.TensorIOMode = types.SimpleNamespace(INPUT="TensorIOMode.INPUT", OUTPUT="TensorIOMode.OUTPUT")

    def nptype(data_type):
        table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
        if data_type not in table:
            raise TypeError("nptype(): incompatible function arguments (%r)" % (data_type,))
        return table[data_type]
    trt.nptype = nptype

    def deprecated(what):
        warnings.warn("%s is deprecated in TensorRT %s" % (what, version), DeprecationWarning, stacklevel=3)

    class Network(object):
        def __init__(self, flags):
            self.flags, self.onnx = flags, None

    class Config(object):
        __slots__ = ("flags", "pool", "_workspace")  # pybind11 objects refuse attributes they do not define

        def __init__(self):
            self.flags, self.pool, self._workspace = set(), None, 0

        def set_flag(self, flag):
            self.flags.add(flag)

    if api["workspace"]:
        def _set_workspace(self, value):
            if api["workspace_deprecated"]:
                deprecated("IBuilderConfig.max_workspace_size")
            self._workspace = value
        Config.max_workspace_size = property(lambda self: self._workspace, _set_workspace)
    if api["pool"]:
        def set_memory_pool_limit(self, pool, size):
            assert pool == trt.MemoryPoolType.WORKSPACE
            self.pool = (pool, size)
        Config.set_memory_pool_limit = set_memory_pool_limit

    class Builder(object):
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            trt.builders += 1

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            builds.append({"version": version, "flags": network.flags, "fp16": "fp16" in config.flags,
                           "workspace": config.pool if config.pool is not None else config._workspace})
            if "build" in fail:
                return None
            return memoryview(ENGINE_MAGIC + network.onnx)  # IHostMemory: a buffer, not bytes

    if api["build_engine"]:
        Builder.build_engine = lambda self, network, config: None  # deprecated in 8.0, gone in 10

    class OnnxParser(object):
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

        def parse(self, model):
            import onnxruntime
            if api["needs_explicit_batch"] and not self.network.flags & 1:
                self.errors = ["Network must have explicit batch dimension (EXPLICIT_BATCH)"]
                return False
            if "parse" in fail:
                self.errors = ["In node 0 (importModel): UNSUPPORTED_NODE: fake unsupported operator"]
                return False
            try:
                onnxruntime.InferenceSession(bytes(model), providers=["CPUExecutionProvider"])
            except Exception as error:
                self.errors = ["Failed to parse ONNX model: %s" % error]
                return False
            self.network.onnx = bytes(model)
            return True

    class Engine(object):
        """Runs the ONNX it was 'built' from with onnxruntime; every call fails once its Runtime is gone."""

        def __init__(self, onnx_bytes, runtime):
            import onnxruntime
            self._runtime = weakref.ref(runtime)  # no strong reference: the caller must keep the Runtime
            self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
            self.io = [(inp.name, True, tuple(inp.shape)), (out.name, False, tuple(out.shape))]
            trt.engines.add(self)

        def _alive(self):
            if self._runtime() is None:
                raise RuntimeError("[runtime.cpp::~Runtime] Destroying a runtime before destroying deserialized "
                                   "engines created by the runtime leads to undefined behavior")
            return self

        def create_execution_context(self):
            self._alive()
            return None if "context" in fail else Context(self)

        def __del__(self):
            cuda.destroyed("engine")

    def _io(engine, index):
        return engine._alive().io[index]

    def _by_name(engine, name):
        for entry in engine._alive().io:
            if entry[0] == name:
                return entry
        raise RuntimeError("no tensor %r" % name)

    if api["bindings"]:
        def binding_call(what, function):
            def call(self, *args):
                if api["bindings_deprecated"]:
                    deprecated("ICudaEngine.%s" % what)
                return function(self, *args)
            return call
        Engine.num_bindings = property(binding_call("num_bindings", lambda self: len(self._alive().io)))
        Engine.get_binding_name = binding_call("get_binding_name", lambda self, i: _io(self, i)[0])
        Engine.binding_is_input = binding_call("binding_is_input", lambda self, i: _io(self, i)[1])
        Engine.get_binding_shape = binding_call("get_binding_shape", lambda self, i: _io(self, i)[2])
        Engine.get_binding_dtype = binding_call("get_binding_dtype", lambda self, i: trt.DataType.FLOAT)
    if api["tensors"]:
        Engine.num_io_tensors = property(lambda self: len(self._alive().io))
        Engine.get_tensor_name = lambda self, i: _io(self, i)[0]
        Engine.get_tensor_mode = lambda self, name: (trt.TensorIOMode.INPUT if _by_name(self, name)[1]
                                                     else trt.TensorIOMode.OUTPUT)
        Engine.get_tensor_shape = lambda self, name: _by_name(self, name)[2]
        Engine.get_tensor_dtype = lambda self, name: trt.DataType.FLOAT

    class Context(object):
        def __init__(self, engine):
            self.engine, self.addresses = engine, {}  # the context keeps its engine (keep_alive<0, 1>)

        def _run(self, addresses):
            self.engine._alive()
            cuda._check("execute")
            (name_in, _, shape_in), (name_out, _, _) = self.engine.io
            tensor = np.frombuffer(cuda._live(addresses[name_in]).tobytes(), np.float32).reshape(shape_in)
            out = self.engine.session.run([name_out], {name_in: tensor})[0].astype(np.float32)
            cuda._live(addresses[name_out])[:] = np.frombuffer(out.tobytes(), np.uint8)
            return True

        def __del__(self):
            cuda.destroyed("execution context")

    if api["v2"]:
        def execute_async_v2(self, bindings, stream_handle, input_consumed=None):
            return self._run(dict((n, b) for (n, _, _), b in zip(self.engine.io, bindings)))
        Context.execute_async_v2 = execute_async_v2
    if api["v3"]:
        def set_tensor_address(self, name, address):
            _by_name(self.engine, name)
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            if set(self.addresses) != set(n for n, _, _ in self.engine.io):
                return False  # enqueueV3 fails when a tensor has no address
            return self._run(self.addresses)
        Context.set_tensor_address, Context.execute_async_v3 = set_tensor_address, execute_async_v3

    class Runtime(object):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            if not data.startswith(ENGINE_MAGIC):
                return None  # real TensorRT logs "Serialization assertion ... failed" and returns None
            try:
                return Engine(data[len(ENGINE_MAGIC):], self)
            except Exception:
                return None

        def __del__(self):
            cuda.destroyed("runtime")

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt

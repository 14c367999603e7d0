"""TensorRT backend: build an engine from the ONNX once, cache it beside the model, run it with pycuda.

NOT EXECUTED in this project's CI (no GPU, no TensorRT): its pure parts (cache
key, cache file names, staleness, API-version dispatch) are unit-tested with
fake ``tensorrt``/``pycuda`` modules; on a Jetson it needs JetPack's
``tensorrt`` and ``pycuda`` Python packages.

Engine cache
    ``<model-dir>/<arch>.<key>.engine`` with ``key`` = first 16 hex digits of
    sha256("<onnx sha256>|<TensorRT version>|<GPU name>|fp16|fp32"), plus a
    ``.json`` sidecar recording those fields.  An engine is reused only when
    its sidecar matches; engines of the same arch with another key (older ONNX,
    another JetPack, another GPU) are stale and removed after a rebuild.
    TensorRT engines are specific to the TensorRT version and GPU, so a JetPack
    upgrade rebuilds automatically (several minutes on a Nano: the first start
    after an upgrade is slow, later starts load the cache in seconds).

Two TensorRT Python APIs, chosen by what the module has, not by version numbers:
    8.0 / 8.2 (JetPack 4.6): ``engine.num_bindings``, ``get_binding_name/shape/dtype``,
    ``binding_is_input``, ``context.execute_async_v2(bindings, stream_handle)``,
    ``config.max_workspace_size``.
    8.5+ / 10 (JetPack 5/6): ``engine.num_io_tensors``, ``get_tensor_name/shape/dtype/mode``,
    ``context.set_tensor_address(name, ptr)`` + ``execute_async_v3(stream_handle)``,
    ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``.
    Building uses ``builder.build_serialized_network`` (8.0+), else
    ``build_engine(...).serialize()`` (7.x).  FP16 is enabled when
    ``builder.platform_has_fast_fp16`` (the Nano's Maxwell GPU has it).
"""
import glob
import hashlib
import json
import logging
import os

import numpy as np

from stetho import ConfigError

from . import Backend, BackendUnavailable

log = logging.getLogger("stetho.tensorrt")

WORKSPACE_BYTES = 1 << 28  # 256 MiB: enough for ResNet18 tactics, small enough for a 4 GB Nano


# ------------------------------------------------------------------------------------------------
# Pure parts (unit-tested): cache key, file names, staleness, API dispatch


def engine_key(onnx_sha256, trt_version, gpu_name, fp16):
    """16 hex digits identifying an engine built from this ONNX with this TensorRT on this GPU."""
    text = "|".join([onnx_sha256, str(trt_version), str(gpu_name), "fp16" if fp16 else "fp32"])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def engine_path(model_dir, arch, key):
    """``<model_dir>/<arch>.<key>.engine``."""
    return os.path.join(model_dir, "%s.%s.engine" % (arch, key))


def engine_metadata(onnx_sha256, trt_version, gpu_name, fp16):
    return {"onnx_sha256": onnx_sha256, "tensorrt": str(trt_version), "gpu": str(gpu_name), "fp16": bool(fp16)}


def cached_engine(model_dir, arch, metadata):
    """Path of a usable cached engine for ``metadata``, or None (missing, no sidecar, sidecar disagrees)."""
    path = engine_path(model_dir, arch, engine_key(metadata["onnx_sha256"], metadata["tensorrt"],
                                                   metadata["gpu"], metadata["fp16"]))
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    try:
        with open(path + ".json") as handle:
            recorded = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    if any(recorded.get(k) != v for k, v in metadata.items()):
        return None
    return path


def stale_engines(model_dir, arch, keep):
    """Other ``<arch>.*.engine`` files in ``model_dir`` (built from another ONNX, TensorRT or GPU)."""
    keep = os.path.abspath(keep) if keep else None
    return sorted(p for p in glob.glob(os.path.join(model_dir, "%s.*.engine" % glob.escape(arch)))
                  if os.path.abspath(p) != keep)


def save_engine(path, blob, metadata):
    """Write the serialized engine and its sidecar atomically (``.part`` then rename)."""
    for target, data in ((path, bytes(blob)), (path + ".json", json.dumps(metadata, indent=2).encode("utf-8"))):
        tmp = target + ".part"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)


def io_api(engine):
    """'tensors' (TensorRT 8.5+/10 name-based I/O) or 'bindings' (8.0/8.2), by what the engine offers."""
    if hasattr(engine, "num_io_tensors") and hasattr(engine, "get_tensor_name"):
        return "tensors"
    if hasattr(engine, "num_bindings") and hasattr(engine, "get_binding_name"):
        return "bindings"
    raise BackendUnavailable("this TensorRT engine object has neither the bindings nor the tensor I/O API")


def io_tensors(trt, engine):
    """[(name, is_input, shape tuple, numpy dtype)] for every engine input/output, in engine order."""
    out = []
    if io_api(engine) == "tensors":
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            out.append((name, is_input, tuple(engine.get_tensor_shape(name)),
                        np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
    else:
        for i in range(engine.num_bindings):
            out.append((engine.get_binding_name(i), bool(engine.binding_is_input(i)),
                        tuple(engine.get_binding_shape(i)), np.dtype(trt.nptype(engine.get_binding_dtype(i)))))
    return out


def trt_major(trt):
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def build_serialized_engine(trt, onnx_bytes, fp16, logger, workspace=WORKSPACE_BYTES, where="model.onnx"):
    """Parse the ONNX and build a serialized engine with whichever builder API this TensorRT has."""
    builder = trt.Builder(logger)
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is not None and hasattr(creation, "EXPLICIT_BATCH") and trt_major(trt) < 10:
        flags = 1 << int(creation.EXPLICIT_BATCH)  # required on 8.x, the default (deprecated flag) on 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConfigError("%s: TensorRT cannot parse the ONNX: %s" % (where, "; ".join(errors) or "unknown error"))
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if hasattr(builder, "build_serialized_network"):
        blob = builder.build_serialized_network(network, config)
    else:
        engine = builder.build_engine(network, config)
        blob = engine.serialize() if engine is not None else None
    if blob is None:
        raise ConfigError("%s: TensorRT failed to build an engine (see the TensorRT log above)" % where)
    return blob


def wants_fp16(trt, logger, precision="auto"):
    """FP16 when asked ('fp16'), never ('fp32'), or where the GPU has fast FP16 ('auto')."""
    if precision in ("fp16", "fp32"):
        return precision == "fp16"
    builder = trt.Builder(logger)
    return bool(getattr(builder, "platform_has_fast_fp16", False))


# ------------------------------------------------------------------------------------------------
# The backend (needs a GPU, TensorRT and pycuda)


def _import_gpu():
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailable("TensorRT Python bindings not installed (%s)" % error)
    try:
        import pycuda.driver as cuda
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context on device 0)
    except ImportError as error:
        raise BackendUnavailable("pycuda not installed (%s)" % error)
    except Exception as error:  # pycuda raises its own LogicError/RuntimeError without a GPU
        raise BackendUnavailable("no usable CUDA device (%s)" % error)
    return trt, cuda


class TensorRTBackend(Backend):
    """Run the model's TensorRT engine (built and cached on first use) on pycuda buffers and a stream."""

    name = "tensorrt"

    def __init__(self, model, precision="auto", trt=None, cuda=None, workspace=WORKSPACE_BYTES):
        Backend.__init__(self, model)
        if trt is None or cuda is None:
            trt, cuda = _import_gpu()
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        gpu = cuda.Device(0).name()
        fp16 = wants_fp16(trt, self.logger, precision)
        metadata = engine_metadata(model.sha256(), trt.__version__, gpu, fp16)
        path = cached_engine(model.model_dir, model.arch, metadata)
        if path is None:
            path = engine_path(model.model_dir, model.arch, engine_key(metadata["onnx_sha256"], metadata["tensorrt"],
                                                                      gpu, fp16))
            log.warning("building the TensorRT engine for %s (TensorRT %s, %s, %s): this takes minutes on a Nano, "
                        "once", model.onnx_path, trt.__version__, gpu, "FP16" if fp16 else "FP32")
            with open(model.onnx_path, "rb") as handle:
                blob = build_serialized_engine(trt, handle.read(), fp16, self.logger, workspace, model.onnx_path)
            save_engine(path, blob, metadata)
            for stale in stale_engines(model.model_dir, model.arch, path):
                log.info("removing stale engine %s", stale)
                for victim in (stale, stale + ".json"):
                    if os.path.exists(victim):
                        os.remove(victim)
            how = "built"
        else:
            how = "cached"
        with open(path, "rb") as handle:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise ConfigError("%s: TensorRT could not load this engine; delete it to rebuild" % path)
        self.engine_path = path
        self.api = io_api(self.engine)
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self._allocate(io_tensors(trt, self.engine))
        self.reason = "%s engine %s, TensorRT %s (%s API), %s, %s" % (
            how, os.path.basename(path), trt.__version__, self.api, gpu, "FP16" if fp16 else "FP32")

    def _allocate(self, tensors):
        names = [t[0] for t in tensors]
        for blob in (self.model.input_blob, self.model.output_blob):
            if blob not in names:
                raise ConfigError("%s: the engine has no tensor '%s' (it has %s)"
                                  % (self.engine_path, blob, ", ".join(names)))
        self.host, self.device, self.order = {}, {}, []
        for name, is_input, shape, dtype in tensors:
            if any(d < 0 for d in shape):
                raise ConfigError("%s: tensor '%s' has a dynamic shape %s; export with static shapes"
                                  % (self.model.onnx_path, name, shape))
            host = self.cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            self.host[name] = host
            self.device[name] = self.cuda.mem_alloc(host.nbytes)
            self.order.append(name)
            if is_input and name == self.model.input_blob and len(shape) == 4:
                self.input_size = int(shape[2])
        if self.api == "tensors":
            for name in self.order:
                self.context.set_tensor_address(name, int(self.device[name]))

    def infer(self, tensor):
        cuda, name_in, name_out = self.cuda, self.model.input_blob, self.model.output_blob
        np.copyto(self.host[name_in], np.asarray(tensor, dtype=self.host[name_in].dtype).ravel())
        cuda.memcpy_htod_async(self.device[name_in], self.host[name_in], self.stream)
        if self.api == "tensors":
            ok = self.context.execute_async_v3(stream_handle=self.stream.handle)
        else:
            ok = self.context.execute_async_v2(bindings=[int(self.device[n]) for n in self.order],
                                               stream_handle=self.stream.handle)
        if ok is False:
            raise RuntimeError("TensorRT execution failed for %s" % self.engine_path)
        cuda.memcpy_dtoh_async(self.host[name_out], self.device[name_out], self.stream)
        self.stream.synchronize()
        return self.probabilities(self.host[name_out].copy())

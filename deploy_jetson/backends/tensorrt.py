"""TensorRT backend: build an engine from the ONNX once, cache it beside the model, run it with pycuda.

NOT EXECUTED in this project's CI (no GPU, no TensorRT): it is run against fake
``tensorrt``/``pycuda`` modules shaped like TensorRT 8.0, 8.2, 8.5, 8.6 and 10
(tests/fakes_tensorrt.py: an API absent from a version is absent from its fake,
a deprecated one warns, an engine whose Runtime was freed fails); on a Jetson it
needs JetPack's ``tensorrt`` and ``pycuda`` Python packages.

Integrity
    The engine is built from the very bytes checked against model.json's
    sha256 (``Model.read_onnx``); a cached engine is keyed by that sha256, and
    the ONNX is still checked on every start.  A mismatch is a ConfigError,
    which 'auto' never falls back from.

Engine cache
    ``<model-dir>/<arch>.<key>.engine`` with ``key`` = first 16 hex digits of
    sha256("<onnx sha256>|<TensorRT version>|<GPU name>|fp16|fp32"), plus a
    ``.json`` sidecar recording those fields.  An engine is reused only when
    its sidecar matches; one TensorRT cannot load (corrupt, truncated) is
    rebuilt.  After a rebuild, other engines *of our own naming* (``<arch>.<16
    hex>.engine`` whose sidecar holds our fields and their key) are stale and
    removed; nothing else is touched, in particular not jetson-inference's own
    cache beside the ONNX (``resnet18.onnx.1.1.8201.GPU.FP16.engine``).
    Files are written to a temporary name of this process
    (``<engine>.<pid>.<random>.part``) and renamed into place, so concurrent
    builds never share a file; parts left by a process that no longer runs are
    removed.  TensorRT engines are specific to the TensorRT version and GPU, so
    a JetPack upgrade rebuilds automatically (minutes on a Nano, once).  When
    the folder is not writable the engine just built is run from memory, with a
    warning (the next start builds again).

Failures
    A TensorRT that cannot parse the ONNX, build or load an engine, or create
    its execution context raises :class:`BackendFailed`, so ``--backend auto``
    falls back to jetson-inference, then onnxruntime, saying why; a model that
    disagrees with its card (shapes, classes, blob names) is a ConfigError.

Lifetimes
    The Runtime is kept for as long as its engine (destroying a runtime before
    the engines it deserialized is undefined behaviour: NVIDIA/TensorRT#4436;
    the 8.2+ bindings add ``py::keep_alive<0, 1>`` to deserialize_cuda_engine,
    python/src/infer/pyCore.cpp, but nothing older promises it).  ``close()``
    frees the pycuda buffers, then the execution context, engine and runtime,
    while pycuda.autoinit's context still exists: it runs on every error path
    of the constructor and, through an atexit hook registered after
    pycuda.autoinit's own ``atexit.register(context.pop)`` (so it runs first),
    at exit (otherwise TensorRT frees into a popped context: "Cuda Runtime
    (invalid device context)", NVIDIA/TensorRT#1632).

Two TensorRT Python APIs, chosen by what the module has, not by version numbers:
    8.0 / 8.2 (JetPack 4.6): ``engine.num_bindings``, ``get_binding_name/shape/dtype``,
    ``binding_is_input``, ``context.execute_async_v2(bindings, stream_handle)``,
    ``config.max_workspace_size`` (pyCore.cpp of 8.2).
    8.5 / 8.6 have both; the name-based API (added in 8.5, which deprecates the
    binding-index one) and ``set_memory_pool_limit`` (added in 8.4, which
    deprecates max_workspace_size) are used (TensorRT-API.pdf 8.5.1, "API
    changes").  10 has only those: ``engine.num_io_tensors``,
    ``get_tensor_name/shape/dtype/mode``, ``context.set_tensor_address(name, ptr)``
    + ``execute_async_v3(stream_handle)``,
    ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` (TensorRT
    8.x→10.x migration guide).  Building uses ``builder.build_serialized_network``
    (8.0+), else ``build_engine(...).serialize()`` (7.x).

Precision
    FP16 where the GPU computes it at full rate, read from pycuda's compute
    capability (5.3, 6.0, 6.2, 7.0 and up: the CUDA C programming guide's
    arithmetic throughput table; the Nano's Maxwell is 5.3), so a start with a
    cached engine creates no ``trt.Builder`` at all.
"""
import atexit
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import weakref

import numpy as np

from stetho import ConfigError

from . import Backend, BackendFailed, BackendUnavailable, check_io_shapes

log = logging.getLogger("stetho.tensorrt")

WORKSPACE_BYTES = 1 << 28  # 256 MiB: enough for ResNet18 tactics, small enough for a 4 GB Nano
METADATA_KEYS = ("onnx_sha256", "tensorrt", "gpu", "fp16")
register_exit = atexit.register  # tests replace it to run the exit hooks themselves


# ------------------------------------------------------------------------------------------------
# Pure parts: cache key, file names, staleness, API dispatch, precision


def engine_key(onnx_sha256, trt_version, gpu_name, fp16):
    """16 hex digits identifying an engine built from this ONNX with this TensorRT on this GPU."""
    text = "|".join([onnx_sha256, str(trt_version), str(gpu_name), "fp16" if fp16 else "fp32"])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def engine_path(model_dir, arch, key):
    """``<model_dir>/<arch>.<key>.engine``."""
    return os.path.join(model_dir, "%s.%s.engine" % (arch, key))


def engine_metadata(onnx_sha256, trt_version, gpu_name, fp16):
    return {"onnx_sha256": onnx_sha256, "tensorrt": str(trt_version), "gpu": str(gpu_name), "fp16": bool(fp16)}


def read_sidecar(path):
    """The metadata dict of engine ``path`` when its ``.json`` sidecar is ours (our fields, and the key in the
    file name is the key of those fields), else None."""
    try:
        with open(path + ".json") as handle:
            recorded = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or any(k not in recorded for k in METADATA_KEYS):
        return None
    key = engine_key(str(recorded["onnx_sha256"]), recorded["tensorrt"], recorded["gpu"], recorded["fp16"])
    if not os.path.basename(path).endswith(".%s.engine" % key):
        return None
    return recorded


def cached_engine(model_dir, arch, metadata):
    """Path of a usable cached engine for ``metadata``, or None (missing, no sidecar, sidecar disagrees)."""
    path = engine_path(model_dir, arch, engine_key(metadata["onnx_sha256"], metadata["tensorrt"],
                                                   metadata["gpu"], metadata["fp16"]))
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    recorded = read_sidecar(path)
    if recorded is None or any(recorded.get(k) != v for k, v in metadata.items()):
        return None
    return path


def _own_engine_pattern(arch):
    return re.compile(r"^%s\.[0-9a-f]{16}\.engine$" % re.escape(arch))


def stale_engines(model_dir, arch, keep):
    """Other engines of our own naming in ``model_dir``: ``<arch>.<16 hex>.engine`` with our sidecar (built from
    another ONNX, TensorRT or GPU).  Anything else (jetson-inference's ``<arch>.onnx.1.1.<trt>.GPU.FP16.engine``,
    an engine without our sidecar) is never listed."""
    keep = os.path.abspath(keep) if keep else None
    pattern = _own_engine_pattern(arch)
    out = []
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if pattern.match(name) and os.path.abspath(path) != keep and read_sidecar(path) is not None:
            out.append(path)
    return out


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno != errno.ESRCH  # EPERM: it runs, as another user
    return True


def abandoned_parts(model_dir, arch):
    """Temporary files of our naming (``<arch>.<16 hex>.engine[.json].<pid>.<random>.part``) whose writing process
    no longer runs: what a build killed mid-write left behind."""
    pattern = re.compile(r"^%s\.[0-9a-f]{16}\.engine(\.json)?\.(\d+)\.[A-Za-z0-9_]+\.part$" % re.escape(arch))
    out = []
    for name in sorted(os.listdir(model_dir)):
        match = pattern.match(name)
        if match and int(match.group(2)) != os.getpid() and not _pid_running(int(match.group(2))):
            out.append(os.path.join(model_dir, name))
    return out


def _write_atomically(target, data):
    """Write ``data`` to a temporary file of this process beside ``target``, then rename it into place."""
    folder, name = os.path.split(target)
    handle, tmp = tempfile.mkstemp(prefix="%s.%d." % (name, os.getpid()), suffix=".part", dir=folder or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_engine(path, blob, metadata):
    """Write the serialized engine, then its sidecar, each atomically under a name of this process, so concurrent
    builds never write the same file and a reader never sees half an engine (OSError when the folder is not
    writable)."""
    _write_atomically(path, bytes(blob))
    _write_atomically(path + ".json", json.dumps(metadata, indent=2).encode("utf-8"))


def remove_stale(model_dir, arch, keep):
    """Remove the stale engines (and their sidecars) and abandoned parts of our naming; returns what went."""
    removed = []
    victims = [p for stale in stale_engines(model_dir, arch, keep) for p in (stale, stale + ".json")]
    for victim in victims + abandoned_parts(model_dir, arch):
        try:
            os.remove(victim)
        except OSError as error:  # gone already (another process swept it), or not ours to remove
            if error.errno != errno.ENOENT:
                log.warning("cannot remove stale %s (%s)", victim, error.strerror or error)
            continue
        log.info("removed stale %s", victim)
        removed.append(victim)
    return removed


def io_api(engine):
    """'tensors' (TensorRT 8.5+/10 name-based I/O) or 'bindings' (8.0/8.2), by what the engine offers."""
    if hasattr(engine, "num_io_tensors") and hasattr(engine, "get_tensor_name"):
        return "tensors"
    if hasattr(engine, "num_bindings") and hasattr(engine, "get_binding_name"):
        return "bindings"
    raise BackendFailed("this TensorRT engine object has neither the bindings nor the tensor I/O API")


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
    """Parse the ONNX and build a serialized engine with whichever builder API this TensorRT has.

    BackendFailed when TensorRT cannot parse the ONNX or build an engine (an operator this TensorRT lacks, too
    little memory): another backend may still run the model.
    """
    builder = trt.Builder(logger)
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is not None and hasattr(creation, "EXPLICIT_BATCH") and trt_major(trt) < 10:
        flags = 1 << int(creation.EXPLICIT_BATCH)  # required on 8.x, the default (deprecated flag) on 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendFailed("%s: TensorRT cannot parse the ONNX: %s" % (where, "; ".join(errors) or "unknown error"))
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # 8.4+; max_workspace_size is deprecated there, gone in 10
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
        raise BackendFailed("%s: TensorRT failed to build an engine (see the TensorRT log above)" % where)
    return blob


def has_fast_fp16(capability):
    """True for compute capabilities with full-rate FP16 arithmetic: 5.3 (Tegra X1, the Nano), 6.0, 6.2 and 7.0
    up; not 5.0-5.2 (no FP16 arithmetic) nor 6.1 (FP16 at 1/64 rate)."""
    capability = tuple(int(v) for v in capability)
    return capability in ((5, 3), (6, 0), (6, 2)) or capability >= (7, 0)


def wants_fp16(capability, precision="auto"):
    """FP16 when asked ('fp16'), never ('fp32'), or where the GPU (compute capability (major, minor)) has fast
    FP16 ('auto')."""
    if precision in ("fp16", "fp32"):
        return precision == "fp16"
    return has_fast_fp16(capability)


# ------------------------------------------------------------------------------------------------
# The backend (needs a GPU, TensorRT and pycuda)


def _import_gpu():
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailable("TensorRT Python bindings not installed (%s)" % error)
    try:
        import pycuda.driver as cuda
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context on device 0, pops it at exit)
    except ImportError as error:
        raise BackendUnavailable("pycuda not installed (%s)" % error)
    except Exception as error:  # pycuda raises its own LogicError/RuntimeError without a GPU
        raise BackendUnavailable("no usable CUDA device (%s)" % error)
    return trt, cuda


def _close_at_exit(reference):
    def close():
        backend = reference()
        if backend is not None:
            backend.close()
    return close


class TensorRTBackend(Backend):
    """Run the model's TensorRT engine (built and cached on first use) on pycuda buffers and a stream."""

    name = "tensorrt"

    def __init__(self, model, precision="auto", trt=None, cuda=None, workspace=WORKSPACE_BYTES):
        Backend.__init__(self, model)
        self.runtime = self.engine = self.context = self.stream = None
        self.host, self.device, self.order = {}, {}, []
        self.engine_path = None
        if trt is None or cuda is None:
            trt, cuda = _import_gpu()
        self.trt, self.cuda = trt, cuda
        onnx_bytes = model.read_onnx()  # ConfigError when it is not the ONNX model.json records: never fallen back
        register_exit(_close_at_exit(weakref.ref(self)))  # after pycuda.autoinit's, so it runs before its pop
        try:
            self._start(onnx_bytes, precision, workspace)
        except (ConfigError, BackendUnavailable):
            self.close()
            raise
        except Exception as error:  # pycuda's and TensorRT's own errors (out of memory, an API it lacks...)
            self.close()
            log.debug("TensorRT failed", exc_info=True)
            raise BackendFailed("%s: TensorRT failed (%s: %s)" % (model.onnx_path, type(error).__name__, error))

    def _start(self, onnx_bytes, precision, workspace):
        trt, cuda, model = self.trt, self.cuda, self.model
        self.logger = trt.Logger(trt.Logger.WARNING)
        device = cuda.Device(0)
        gpu = device.name()
        fp16 = wants_fp16(device.compute_capability(), precision)
        digest = model.card.onnx_sha256 if model.card is not None else hashlib.sha256(onnx_bytes).hexdigest()
        metadata = engine_metadata(digest, trt.__version__, gpu, fp16)
        self.engine_path = path = engine_path(model.model_dir, model.arch,
                                              engine_key(digest, metadata["tensorrt"], gpu, fp16))
        self.runtime = trt.Runtime(self.logger)  # kept as long as the engine it deserializes
        how, notes = "cached", []
        if cached_engine(model.model_dir, model.arch, metadata) is not None:
            self.engine = self._deserialize_file(path)
            if self.engine is None:
                log.warning("%s: TensorRT cannot load this cached engine (corrupt or truncated); rebuilding it", path)
                how, notes = "rebuilt", ["the cached one would not load"]
        if self.engine is None:
            log.warning("building the TensorRT engine for %s (TensorRT %s, %s, %s): this takes minutes on a Nano, "
                        "once", model.onnx_path, trt.__version__, gpu, "FP16" if fp16 else "FP32")
            blob = build_serialized_engine(trt, onnx_bytes, fp16, self.logger, workspace, model.onnx_path)
            how = "built" if how == "cached" else how
            try:
                save_engine(path, blob, metadata)
            except (IOError, OSError) as error:
                notes.append("not cached: %s" % (error.strerror or error))
                log.warning("%s: cannot cache the engine (%s): running it from memory; the next start builds it "
                            "again", path, error.strerror or error)
            else:
                remove_stale(model.model_dir, model.arch, path)
            self.engine = self._deserialize(blob)
            del blob
            if self.engine is None:
                raise BackendFailed("%s: TensorRT could not load the engine it has just built" % path)
        self.api = io_api(self.engine)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendFailed("%s: TensorRT could not create an execution context (GPU memory?)" % path)
        self.stream = cuda.Stream()
        self._allocate(io_tensors(trt, self.engine))
        self.reason = "%s engine %s%s, TensorRT %s (%s API), %s, %s" % (
            how, os.path.basename(path), " (%s)" % "; ".join(notes) if notes else "", trt.__version__, self.api, gpu,
            "FP16" if fp16 else "FP32")

    def _deserialize(self, blob):
        try:
            return self.runtime.deserialize_cuda_engine(blob)
        except Exception as error:  # some builds raise instead of returning None
            log.warning("TensorRT cannot deserialize the engine (%s: %s)", type(error).__name__, error)
            return None

    def _deserialize_file(self, path):
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except (IOError, OSError) as error:
            log.warning("%s: cannot read the cached engine (%s)", path, error)
            return None
        return self._deserialize(blob)

    def _allocate(self, tensors):
        names = [t[0] for t in tensors]
        for blob in (self.model.input_blob, self.model.output_blob):
            if blob not in names:
                raise ConfigError("%s: the engine has no tensor '%s' (it has %s)"
                                  % (self.engine_path, blob, ", ".join(names)))
        shapes = dict((name, shape) for name, _, shape, _ in tensors)
        for name, shape in shapes.items():
            if any(int(d) < 0 for d in shape):
                raise ConfigError("%s: tensor '%s' has a dynamic shape %s; export with static shapes"
                                  % (self.model.onnx_path, name, list(shape)))
        self.input_size = check_io_shapes(self.model, shapes[self.model.input_blob], shapes[self.model.output_blob],
                                          "%s (TensorRT engine %s)" % (self.model.onnx_path,
                                                                       os.path.basename(self.engine_path)))
        for name, is_input, shape, dtype in tensors:
            host = self.cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            self.host[name] = host
            self.device[name] = self.cuda.mem_alloc(host.nbytes)
            self.order.append(name)
        if self.api == "tensors":
            for name in self.order:
                self.context.set_tensor_address(name, int(self.device[name]))

    def infer(self, tensor):
        if self.context is None:
            raise RuntimeError("TensorRT backend for %s is closed" % self.model.onnx_path)
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

    def close(self):
        """Free the device buffers, then the execution context, engine and runtime (that order), while the CUDA
        context pycuda.autoinit made still exists; safe to call twice."""
        device, self.device, self.host, self.order = self.device, {}, {}, []
        for name, allocation in device.items():
            free = getattr(allocation, "free", None)
            if free is not None:
                try:
                    free()
                except Exception as error:  # already gone with its context: nothing left to free
                    log.debug("freeing TensorRT buffer %s: %s", name, error)
        del device
        self.context = None
        self.engine = None
        self.runtime = None
        self.stream = None

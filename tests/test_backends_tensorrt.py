"""The TensorRT backend against fake TensorRT 8.0, 8.2, 8.5, 8.6 and 10 (tests/fakes_tensorrt.py).

Each fake has only the API of its version, warns where that version deprecates, fails an engine whose Runtime
was freed and records CUDA objects released after pycuda.autoinit's context was popped.  Issue 28, items 7-10
and 12: the engine cache sweeps only its own files, the Runtime lives as long as its engine, failures fall
back, close() frees everything while the context exists, builds never share a temporary file, and the
network's shapes are checked against the card.
"""
import gc
import json
import os
import threading
import warnings

import numpy as np
import pytest

from stetho import ConfigError, preset, render_segment, synth

from deploy_jetson.backends import BackendFailed, load_model
from deploy_jetson.backends import tensorrt as trt_backend
from deploy_jetson.backends.onnxruntime import OnnxRuntimeBackend
from fakes_models import copy_model, recard
from fakes_tensorrt import VERSIONS, FakeCuda, api_of, fake_tensorrt
from test_service_support import make_model

TensorRTBackend = trt_backend.TensorRTBackend


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def model(model_dir, tmp_path):
    return load_model(str(copy_model(model_dir, tmp_path / "model")))


@pytest.fixture(scope="module")
def image():
    return render_segment(synth.heart_sound("normal", duration_s=3.0, rate=2000, seed=4), preset("heart", size=32))


@pytest.fixture
def exit_hooks(monkeypatch):
    """The hooks the backend registers for interpreter exit (run by the test, not at pytest's exit)."""
    hooks = []
    monkeypatch.setattr(trt_backend, "register_exit", hooks.append, raising=False)
    return hooks


def engines_in(folder):
    return sorted(n for n in os.listdir(str(folder)) if n.endswith(".engine"))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_version_builds_caches_and_runs_with_its_own_api(model, image, exit_hooks, version):
    """Item 12: the backend on each version's API (absent calls raise, deprecated ones are errors here); item 8:
    the engine works after garbage collection (its Runtime is kept); item 10: a cached start makes no Builder."""
    cuda, builds = FakeCuda(), []
    trt = fake_tensorrt(version, cuda, builds)
    api = api_of(version)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # 8.5/8.6: the deprecated API is not used
        backend = TensorRTBackend(model, trt=trt, cuda=cuda)
        gc.collect()  # a Runtime nobody holds is gone now, and its engine with it
        reference = OnnxRuntimeBackend(model).classify(image)
        np.testing.assert_allclose(backend.classify(image), reference, atol=1e-6)
        assert backend.api == ("tensors" if api["tensors"] else "bindings")
        assert builds[0]["flags"] == (1 if api["needs_explicit_batch"] else 0)
        assert builds[0]["workspace"] == (("MemoryPoolType.WORKSPACE", trt_backend.WORKSPACE_BYTES) if api["pool"]
                                          else trt_backend.WORKSPACE_BYTES)
        assert "built engine" in backend.reason and "FP16" in backend.reason and trt.builders == 1
        again = TensorRTBackend(model, trt=trt, cuda=cuda)
        gc.collect()
        assert "cached engine" in again.reason and len(builds) == 1
        assert trt.builders == 1  # no throwaway Builder to ask for FP16: the compute capability says it
        np.testing.assert_allclose(again.classify(image), reference, atol=1e-6)


def test_an_engine_outlives_nothing_it_needs_and_close_frees_everything(model, image, exit_hooks):
    """Items 8 and 10: the Runtime stays while its engine does; close() frees buffers, context, engine, runtime."""
    cuda = FakeCuda()
    trt = fake_tensorrt("8.2.1.8", cuda)
    backend = TensorRTBackend(model, trt=trt, cuda=cuda)
    gc.collect()
    assert backend.runtime is not None and len(cuda.memory) == 2
    backend.classify(image)
    backend.close()
    gc.collect()
    assert cuda.memory == {} and list(trt.engines) == [] and cuda.errors == []
    backend.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        backend.classify(image)


def test_at_exit_everything_is_freed_before_pycuda_pops_its_context(model, image, exit_hooks):
    """Item 10: atexit runs last-registered first; the backend's hook (registered after pycuda.autoinit's
    context.pop) frees the GPU objects while the context still exists."""
    cuda = FakeCuda()
    trt = fake_tensorrt("10.3.0.26", cuda)
    backend = TensorRTBackend(model, trt=trt, cuda=cuda)
    backend.classify(image)
    for hook in reversed(exit_hooks):  # the interpreter exits: our hooks, then pycuda.autoinit's pop
        hook()
    cuda.pop_context()
    del backend
    gc.collect()
    assert cuda.errors == [] and cuda.memory == {} and list(trt.engines) == []


@pytest.mark.parametrize("how", ["missing blob", "output count", "input size", "build", "context"])
def test_error_paths_free_what_was_made(model_dir, tmp_path, exit_hooks, how):
    """Item 10: an error in the constructor leaves no device memory, context or engine behind (the exception's
    traceback still holds the half-made backend); item 2: shapes are checked against the card at start-up."""
    folder = copy_model(model_dir, tmp_path / "m")
    if how == "output count":
        recard(folder, classes=["murmur", "normal"])
    if how == "input size":
        recard(folder, size=64)
    model = load_model(str(folder))
    if how == "missing blob":
        model.output_blob = "prob"
    cuda = FakeCuda()
    trt = fake_tensorrt("8.6.1.6", cuda, fail=(how,))
    expected = {"missing blob": (ConfigError, "engine has no tensor 'prob'"),
                "output count": (ConfigError, "outputs 3 values but labels list 2 classes"),
                "input size": (ConfigError, "takes 32×32 images but model.json says 64"),
                "build": (BackendFailed, "failed to build an engine"),
                "context": (BackendFailed, "could not create an execution context")}[how]
    with pytest.raises(expected[0], match=expected[1]) as caught:
        TensorRTBackend(model, trt=trt, cuda=cuda)
    gc.collect()
    assert caught.value is not None  # the traceback, and the backend it holds, are still alive here
    assert cuda.memory == {} and list(trt.engines) == [] and cuda.errors == []


def test_a_corrupt_cached_engine_is_rebuilt(model, image, exit_hooks):
    """Item 9: an engine TensorRT cannot load (truncated by a power cut, say) is rebuilt, not fatal."""
    cuda, builds = FakeCuda(), []
    trt = fake_tensorrt("8.2.1.8", cuda, builds)
    first = TensorRTBackend(model, trt=trt, cuda=cuda)
    first.close()
    with open(first.engine_path, "r+b") as handle:
        handle.write(b"garbage!")
    backend = TensorRTBackend(model, trt=trt, cuda=cuda)
    assert len(builds) == 2 and backend.reason.startswith("rebuilt engine resnet18.") and "(the cached one would not load)" in backend.reason
    np.testing.assert_allclose(backend.classify(image), OnnxRuntimeBackend(model).classify(image), atol=1e-6)
    assert TensorRTBackend(model, trt=trt, cuda=cuda).reason.startswith("cached engine")


def test_the_stale_sweep_removes_only_engines_of_its_own_naming(model, exit_hooks):
    """Item 7: jetson-inference's cache, an engine without our sidecar and other files are never deleted."""
    folder = model.model_dir
    cuda = FakeCuda()
    TensorRTBackend(model, trt=fake_tensorrt("8.0.1.6", cuda), cuda=cuda).close()
    ours_old = engines_in(folder)
    foreign = {"resnet18.onnx.1.1.8201.GPU.FP16.engine": b"jetson-inference's engine",
               "resnet18.0123456789abcdef.engine": b"no sidecar",
               "resnet18.fedcba9876543210.engine": b"a sidecar that is not ours",
               "resnet18.fedcba9876543210.engine.json": json.dumps({"made by": "someone else"}).encode(),
               "resnet18.onnx.1.1.8201.GPU.FP16.engine.part": b"half of jetson-inference's"}
    for name, data in foreign.items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
    backend = TensorRTBackend(model, trt=fake_tensorrt("8.2.1.8", cuda), cuda=cuda)  # a JetPack upgrade
    left = sorted(os.listdir(folder))
    assert ours_old[0] not in left and ours_old[0] + ".json" not in left  # our stale engine went
    assert os.path.basename(backend.engine_path) in left
    for name in foreign:
        assert name in left, name


def test_concurrent_builds_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Item 10: two processes (threads here) saving the same engine at once both succeed, and the engine in
    place is one of them, whole: each writes its own temporary file and renames it into place."""
    path = str(tmp_path / "resnet18.0123456789abcdef.engine")
    blobs = [b"A" * 100000, b"B" * 100000]
    metadata = trt_backend.engine_metadata("ab" * 32, "8.2.1", "X1", True)
    barrier = threading.Barrier(2, timeout=5)
    real_replace = os.replace

    def replace_together(source, target):
        barrier.wait()  # both writers have written: now both rename
        return real_replace(source, target)
    monkeypatch.setattr(os, "replace", replace_together)
    errors = []

    def save(blob):
        try:
            trt_backend.save_engine(path, blob, metadata)
        except Exception as error:  # noqa: B902 (reported below)
            errors.append(repr(error))
            barrier.abort()
    threads = [threading.Thread(target=save, args=(blob,)) for blob in blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    with open(path, "rb") as handle:
        assert handle.read() in blobs
    assert sorted(os.listdir(str(tmp_path))) == ["resnet18.0123456789abcdef.engine",
                                                 "resnet18.0123456789abcdef.engine.json"]


def test_parts_left_by_a_dead_build_are_removed_and_a_running_builds_are_not(tmp_path):
    folder = str(tmp_path)
    dead = 2 ** 22 + 12345  # above Linux's pid_max default: no such process
    live = os.getppid()
    names = ["resnet18.0123456789abcdef.engine.%d.k2j4h.part" % dead,
             "resnet18.0123456789abcdef.engine.json.%d.x9q1w.part" % dead,
             "resnet18.0123456789abcdef.engine.%d.a1b2c.part" % live,
             "resnet18.onnx.1.1.8201.GPU.FP16.engine.%d.a1b2c.part" % dead]
    for name in names:
        open(os.path.join(folder, name), "wb").close()
    assert trt_backend.abandoned_parts(folder, "resnet18") == sorted(os.path.join(folder, n) for n in names[:2])


@pytest.mark.parametrize("capability, fp16", [((5, 3), True), ((5, 2), False), ((6, 1), False), ((6, 2), True),
                                              ((7, 2), True), ((8, 7), True)])
def test_fp16_is_chosen_from_the_compute_capability(capability, fp16):
    assert trt_backend.wants_fp16(capability) is fp16
    assert trt_backend.wants_fp16(capability, "fp32") is False and trt_backend.wants_fp16(capability, "fp16") is True


def test_a_gpu_without_fast_fp16_gets_an_fp32_engine(model, exit_hooks):
    cuda, builds = FakeCuda(gpu="GeForce GTX 1080", capability=(6, 1)), []
    backend = TensorRTBackend(model, trt=fake_tensorrt("8.2.1.8", cuda, builds), cuda=cuda)
    assert "FP32" in backend.reason and builds[0]["fp16"] is False


def test_the_fakes_reject_what_the_real_modules_reject(model_dir):
    """The fakes can fail: a freed Runtime, an API absent from a version, a deprecated one, a popped context."""
    cuda = FakeCuda()
    trt8, trt10 = fake_tensorrt("8.2.1.8", cuda), fake_tensorrt("10.3.0.26", cuda)
    blob = trt_backend.build_serialized_engine(trt8, (model_dir / "resnet18.onnx").read_bytes(), True,
                                               trt8.Logger(2))
    engine = trt8.Runtime(None).deserialize_cuda_engine(blob)  # the old code: the Runtime is a temporary
    gc.collect()
    with pytest.raises(RuntimeError, match="Destroying a runtime before destroying deserialized engines"):
        engine.create_execution_context()
    runtime8 = trt8.Runtime(None)
    context8 = runtime8.deserialize_cuda_engine(blob).create_execution_context()
    assert not hasattr(context8, "execute_async_v3") and not hasattr(context8, "set_tensor_address")
    assert not hasattr(context8.engine, "num_io_tensors") and not hasattr(trt8, "TensorIOMode")
    assert not hasattr(trt8.Builder(None).create_builder_config(), "set_memory_pool_limit")
    config10 = trt10.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config10.max_workspace_size = 1
    assert not hasattr(trt10.Builder(None), "build_engine")
    runtime = trt10.Runtime(None)
    engine10 = runtime.deserialize_cuda_engine(trt_backend.build_serialized_engine(
        trt10, (model_dir / "resnet18.onnx").read_bytes(), True, trt10.Logger(2)))
    assert not hasattr(engine10, "num_bindings") and not hasattr(engine10.create_execution_context(),
                                                                 "execute_async_v2")
    assert engine10.create_execution_context().execute_async_v3(stream_handle=1) is False  # no addresses set
    trt86 = fake_tensorrt("8.6.1.6", cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning):
            trt86.Builder(None).create_builder_config().max_workspace_size = 1
    assert trt8.Runtime(None).deserialize_cuda_engine(b"not an engine") is None
    with pytest.raises(BackendFailed, match="explicit batch"):
        network = trt8.Builder(None).create_network(0)
        parser = trt8.OnnxParser(network, None)
        if not parser.parse((model_dir / "resnet18.onnx").read_bytes()):
            raise BackendFailed(parser.get_error(0))
    allocation = cuda.mem_alloc(16)
    cuda.pop_context()
    allocation.free()
    assert cuda.errors == ["device memory at %d released after the CUDA context was popped" % int(allocation)]

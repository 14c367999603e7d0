"""Backends: onnxruntime for real; TensorRT and jetson-inference through fake modules (neither can run here).

The fake ``tensorrt`` comes in the two API shapes the backend must handle: 8.0/8.2 (bindings,
execute_async_v2, max_workspace_size, EXPLICIT_BATCH) and 10 (tensor names and addresses,
execute_async_v3, set_memory_pool_limit).  Its "engine" runs the very ONNX with onnxruntime on the bytes
the backend copies through a fake pycuda, so buffer plumbing, name lookup, cache reuse and staleness are
all exercised, and the result is compared with the onnxruntime backend.  What this cannot show: that
real TensorRT builds and runs the model, which was never executed in this project's CI.
"""
import json
import logging
import os
import sys
import types

import numpy as np
import pytest

from stetho import ConfigError, preset, render_segment, synth
from stetho.modelcard import ModelCard

from deploy_jetson.backends import BackendUnavailable, load_backend, load_model
from deploy_jetson.backends import tensorrt as trt_backend
from deploy_jetson.backends.jetson import JetsonBackend, decode, import_jetson
from deploy_jetson.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
from test_service_support import make_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def model(model_dir, tmp_path):
    """A private copy of the model folder (engines get cached beside it)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in os.listdir(str(model_dir)):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    return load_model(str(folder))


@pytest.fixture(scope="module")
def image():
    return render_segment(synth.heart_sound("murmur", duration_s=3.0, rate=2000, seed=2), preset("heart", size=32))


# ---- a fake pycuda ----------------------------------------------------------------------------------------------

class FakeCuda(object):
    """pycuda.driver's calls the backend uses; 'device memory' is a dict of byte arrays keyed by address."""

    def __init__(self, gpu="Fake Tegra X1"):
        self.memory, self.next_address, self.gpu = {}, 4096, gpu
        cuda = self

        class Device(object):
            def __init__(self, index):
                pass

            def name(self):
                return cuda.gpu

        class Stream(object):
            handle = 1234

            def synchronize(self):
                pass
        self.Device, self.Stream = Device, Stream

    def pagelocked_empty(self, size, dtype):
        return np.empty(size, dtype)

    def mem_alloc(self, nbytes):
        address = self.next_address
        self.next_address += nbytes + 256
        self.memory[address] = np.zeros(nbytes, np.uint8)
        return address

    def memcpy_htod_async(self, device, host, stream):
        self.memory[int(device)][:] = np.frombuffer(host.tobytes(), np.uint8)

    def memcpy_dtoh_async(self, host, device, stream):
        host[:] = np.frombuffer(self.memory[int(device)].tobytes(), host.dtype)


# ---- a fake tensorrt, in two API generations ----------------------------------------------------------------------

def fake_tensorrt(version, cuda, builds):
    """A module-like object with TensorRT ``version``'s Python API shape (8.x bindings or 10.x tensors)."""
    major = int(version.split(".")[0])
    trt = types.SimpleNamespace(__version__=version)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype

    class Network(object):
        def __init__(self, flags):
            self.flags, self.onnx = flags, None

    class Config(object):
        def __init__(self):
            self.flags, self.pool = set(), None
            if major < 10:
                self.max_workspace_size = 0

        def set_flag(self, flag):
            self.flags.add(flag)

    if major >= 10:
        Config.set_memory_pool_limit = lambda self, kind, size: setattr(self, "pool", (kind, size))

    class Builder(object):
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            if major < 10:
                assert flags == 1, "TensorRT 8 needs the EXPLICIT_BATCH flag"
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            builds.append({"version": version, "flags": network.flags, "fp16": "fp16" in config.flags,
                           "workspace": config.pool if major >= 10 else config.max_workspace_size})
            return b"ENGINE" + network.onnx

    class OnnxParser(object):
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data):
            self.network.onnx = bytes(data)
            self.num_errors = int(data[:2] == b"XX")
            return not self.num_errors

        def get_error(self, i):
            return "fake parse error"

    class Engine(object):
        """Runs the ONNX the engine was 'built' from with onnxruntime, through the fake device memory."""

        def __init__(self, onnx_bytes):
            import onnxruntime
            self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
            self.io = [(inp.name, True, tuple(inp.shape)), (out.name, False, tuple(out.shape))]

        def create_execution_context(self):
            return Context(self)

    if major >= 10:
        Engine.num_io_tensors = property(lambda self: len(self.io))
        Engine.get_tensor_name = lambda self, i: self.io[i][0]
        Engine.get_tensor_mode = lambda self, name: trt.TensorIOMode.INPUT if dict(
            (n, i) for n, i, _ in self.io)[name] else trt.TensorIOMode.OUTPUT
        Engine.get_tensor_shape = lambda self, name: dict((n, s) for n, _, s in self.io)[name]
        Engine.get_tensor_dtype = lambda self, name: np.float32
    else:
        Engine.num_bindings = property(lambda self: len(self.io))
        Engine.get_binding_name = lambda self, i: self.io[i][0]
        Engine.binding_is_input = lambda self, i: self.io[i][1]
        Engine.get_binding_shape = lambda self, i: self.io[i][2]
        Engine.get_binding_dtype = lambda self, i: np.float32

    class Context(object):
        def __init__(self, engine):
            self.engine, self.addresses = engine, {}

        def _run(self, addresses):
            (name_in, _, shape_in), (name_out, _, shape_out) = self.engine.io
            tensor = np.frombuffer(cuda.memory[addresses[name_in]].tobytes(), np.float32).reshape(shape_in)
            out = self.engine.session.run([name_out], {name_in: tensor})[0].astype(np.float32)
            cuda.memory[addresses[name_out]][:] = np.frombuffer(out.tobytes(), np.uint8)
            return True

    if major >= 10:
        Context.set_tensor_address = lambda self, name, ptr: self.addresses.__setitem__(name, ptr)
        Context.execute_async_v3 = lambda self, stream_handle: self._run(self.addresses)
    else:
        Context.execute_async_v2 = lambda self, bindings, stream_handle: self._run(
            dict((n, b) for (n, _, _), b in zip(self.engine.io, bindings)))

    class Runtime(object):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine(bytes(blob)[len(b"ENGINE"):]) if bytes(blob).startswith(b"ENGINE") else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


# ---- TensorRT: pure parts ---------------------------------------------------------------------------------------

def test_engine_key_changes_with_each_thing_an_engine_depends_on():
    base = trt_backend.engine_key("ab" * 32, "8.2.1", "NVIDIA Tegra X1", True)
    assert len(base) == 16 and base == trt_backend.engine_key("ab" * 32, "8.2.1", "NVIDIA Tegra X1", True)
    others = [trt_backend.engine_key("cd" * 32, "8.2.1", "NVIDIA Tegra X1", True),
              trt_backend.engine_key("ab" * 32, "10.3.0", "NVIDIA Tegra X1", True),
              trt_backend.engine_key("ab" * 32, "8.2.1", "Orin", True),
              trt_backend.engine_key("ab" * 32, "8.2.1", "NVIDIA Tegra X1", False)]
    assert len(set(others + [base])) == 5
    assert trt_backend.engine_path("/m", "resnet18", base) == "/m/resnet18.%s.engine" % base


def test_cache_lookup_needs_a_matching_sidecar_and_finds_stale_engines(tmp_path):
    meta = trt_backend.engine_metadata("ab" * 32, "8.2.1", "X1", True)
    key = trt_backend.engine_key("ab" * 32, "8.2.1", "X1", True)
    path = trt_backend.engine_path(str(tmp_path), "resnet18", key)
    assert trt_backend.cached_engine(str(tmp_path), "resnet18", meta) is None
    trt_backend.save_engine(path, b"plan", meta)
    assert trt_backend.cached_engine(str(tmp_path), "resnet18", meta) == path
    with open(path + ".json", "w") as handle:
        json.dump(dict(meta, gpu="another"), handle)
    assert trt_backend.cached_engine(str(tmp_path), "resnet18", meta) is None  # sidecar disagrees: rebuild
    (tmp_path / "resnet18.0123456789abcdef.engine").write_bytes(b"old")
    (tmp_path / "resnet34.0123456789abcdef.engine").write_bytes(b"other arch")
    assert trt_backend.stale_engines(str(tmp_path), "resnet18", path) == [
        str(tmp_path / "resnet18.0123456789abcdef.engine")]


def test_io_api_dispatch_by_what_the_engine_offers():
    assert trt_backend.io_api(types.SimpleNamespace(num_io_tensors=2, get_tensor_name=None)) == "tensors"
    assert trt_backend.io_api(types.SimpleNamespace(num_bindings=2, get_binding_name=None)) == "bindings"
    with pytest.raises(BackendUnavailable):
        trt_backend.io_api(object())


# ---- TensorRT: the backend on fake modules ------------------------------------------------------------------------

def test_tensorrt_8_builds_caches_and_classifies_like_onnxruntime(model, image):
    cuda, builds = FakeCuda(), []
    trt8 = fake_tensorrt("8.2.1.8", cuda, builds)
    backend = trt_backend.TensorRTBackend(model, trt=trt8, cuda=cuda)
    assert backend.api == "bindings" and "built engine" in backend.reason and "FP16" in backend.reason
    assert builds == [{"version": "8.2.1.8", "flags": 1, "fp16": True, "workspace": trt_backend.WORKSPACE_BYTES}]
    assert backend.input_size == 32
    reference = OnnxRuntimeBackend(model).classify(image)
    np.testing.assert_allclose(backend.classify(image), reference, atol=1e-6)
    again = trt_backend.TensorRTBackend(model, trt=trt8, cuda=cuda)
    assert len(builds) == 1 and "cached engine" in again.reason  # loaded, not rebuilt
    np.testing.assert_allclose(again.classify(image), reference, atol=1e-6)


def test_tensorrt_10_uses_tensor_addresses_and_a_jetpack_upgrade_rebuilds(model, image):
    cuda, builds = FakeCuda(), []
    trt_backend.TensorRTBackend(model, trt=fake_tensorrt("8.2.1.8", cuda, builds), cuda=cuda)
    old = [n for n in os.listdir(model.model_dir) if n.endswith(".engine")]
    backend = trt_backend.TensorRTBackend(model, trt=fake_tensorrt("10.3.0", cuda, builds), cuda=cuda)
    assert backend.api == "tensors" and len(builds) == 2
    assert builds[1]["flags"] == 0 and builds[1]["workspace"] == ("workspace", trt_backend.WORKSPACE_BYTES)
    engines = [n for n in os.listdir(model.model_dir) if n.endswith(".engine")]
    assert len(engines) == 1 and engines != old  # the 8.2 engine was stale and is gone
    np.testing.assert_allclose(backend.classify(image), OnnxRuntimeBackend(model).classify(image), atol=1e-6)
    fp32 = trt_backend.TensorRTBackend(model, precision="fp32", trt=fake_tensorrt("10.3.0", cuda, builds), cuda=cuda)
    assert "FP32" in fp32.reason and builds[-1]["fp16"] is False


def test_tensorrt_refuses_a_model_it_cannot_parse_or_whose_blobs_are_missing(model):
    cuda, builds = FakeCuda(), []
    with open(model.onnx_path, "rb") as handle:
        data = handle.read()
    with open(model.onnx_path, "wb") as handle:
        handle.write(b"XX" + data)
    model.card = None  # no recorded sha256 for the altered file
    with pytest.raises(ConfigError, match="TensorRT cannot parse the ONNX: fake parse error"):
        trt_backend.TensorRTBackend(model, trt=fake_tensorrt("8.2.1", cuda, builds), cuda=cuda)
    with open(model.onnx_path, "wb") as handle:
        handle.write(data)
    model.output_blob = "prob"
    with pytest.raises(ConfigError, match="no tensor 'prob'"):
        trt_backend.TensorRTBackend(model, trt=fake_tensorrt("8.2.1", cuda, builds), cuda=cuda)


# ---- jetson-inference on fake modules ------------------------------------------------------------------------------

class FakeImageNet(object):
    """imageNet with the 2022+ API: keyword construction, Classify(img, topK=) → [(class, confidence)]."""
    made = []

    def __init__(self, model=None, labels=None, input_blob=None, output_blob=None, **unexpected):
        assert not unexpected
        FakeImageNet.made.append((model, labels, input_blob, output_blob))
        self.threshold, self.smoothing, self.reference = 0.01, 0, None

    def GetNumClasses(self):
        return 3

    def SetThreshold(self, value):
        self.threshold = value

    def SetSmoothing(self, value):
        self.smoothing = value

    def Classify(self, image, topK=-1):
        probs = self.reference.classify(image.array) if self.reference else np.array([0.2, 0.7, 0.1])
        pairs = sorted(((i, float(p)) for i, p in enumerate(probs) if p >= self.threshold), key=lambda x: -x[1])
        return pairs if topK == 0 else pairs[:topK]


class OldImageNet(FakeImageNet):
    """The JetPack 4.6-era API: argv construction, Classify(img) → (class, confidence) only."""

    def __init__(self, network="googlenet", argv=None):
        FakeImageNet.__init__(self)
        self.argv = argv

    def Classify(self, image):
        return 1, 0.7


def fake_jetson(net_class):
    utils = types.SimpleNamespace(cudaFromNumpy=lambda array: types.SimpleNamespace(array=array))
    return types.SimpleNamespace(imageNet=net_class), utils


def test_jetson_backend_is_the_imagenet_path_with_all_class_confidences(model, image):
    inference, utils = fake_jetson(FakeImageNet)
    backend = JetsonBackend(model, modules=(inference, utils))
    assert FakeImageNet.made[-1] == (model.onnx_path, model.labels_path, "input_0", "output_0")
    assert backend.net.threshold == 0.0 and backend.net.smoothing == 0.0
    backend.net.reference = OnnxRuntimeBackend(model)
    cuda_image = backend.prepare(image)
    assert cuda_image.array.dtype == np.uint8 and cuda_image.array.shape == (32, 32, 3)  # RGB, as rendered
    np.testing.assert_allclose(backend.infer(cuda_image), backend.net.reference.classify(image), atol=1e-6)
    np.testing.assert_allclose(decode([(2, 0.5), (0, 0.25)], 3), [0.25, 0.0, 0.5])


def test_an_old_jetson_inference_without_topk_is_refused_with_a_way_out(model):
    with pytest.raises(BackendUnavailable, match="no topK.*--backend tensorrt"):
        JetsonBackend(model, modules=fake_jetson(OldImageNet))


def test_jetson_modules_are_found_under_old_and_new_names():
    def only_old(name):
        if name.startswith("jetson_"):
            raise ImportError("No module named %r" % name)
        return name
    assert import_jetson(only_old) == ("jetson.inference", "jetson.utils")
    with pytest.raises(BackendUnavailable, match="jetson-inference not installed"):
        import_jetson(lambda name: (_ for _ in ()).throw(ImportError(name)))


# ---- onnxruntime, auto selection, model loading -------------------------------------------------------------------

def test_onnxruntime_prefers_gpu_providers_and_reports_its_threads(model):
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    backend = OnnxRuntimeBackend(model, threads=2)
    assert backend.reason == "providers CPUExecutionProvider, 2 threads" and backend.input_size == 32


def test_logits_are_turned_into_probabilities_once_with_a_warning(model, caplog):
    backend = OnnxRuntimeBackend(model)
    with caplog.at_level(logging.WARNING):
        p = backend.probabilities([2.0, 0.0, -1.0])
        backend.probabilities([2.0, 0.0, -1.0])
    assert abs(p.sum() - 1) < 1e-6 and p.argmax() == 0
    assert sum("not softmax probabilities" in r.message for r in caplog.records) == 1
    np.testing.assert_array_equal(backend.probabilities([0.2, 0.3, 0.5]), np.float32([0.2, 0.3, 0.5]))
    with pytest.raises(ConfigError, match="outputs 2 values but labels list 3"):
        backend.probabilities([0.5, 0.5])


def test_auto_says_why_it_chose_onnxruntime(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on a machine without TensorRT
    monkeypatch.setitem(sys.modules, "jetson_inference", None)
    monkeypatch.setitem(sys.modules, "jetson", None)
    backend = load_backend("auto", model)
    assert backend.name == "onnxruntime"
    assert backend.reason.startswith("auto: tensorrt: TensorRT Python bindings not installed")
    assert "jetson: jetson-inference not installed" in backend.reason and "using onnxruntime" in backend.reason
    with pytest.raises(BackendUnavailable):
        load_backend("tensorrt", model)


def test_model_loading_checks_that_the_files_belong_together(model_dir, tmp_path):
    loaded = load_model(str(model_dir / "resnet18.onnx"))
    assert loaded.classes == ["extra", "murmur", "normal"] and loaded.contract.size == 32
    other = tmp_path / "other"
    other.mkdir()
    for name in ("resnet18.onnx", "labels.txt"):
        (other / name).write_bytes((model_dir / name).read_bytes())
    card = ModelCard.load(str(model_dir))
    card.onnx_sha256 = "0" * 64
    card.save(str(other))
    with pytest.raises(ConfigError, match="does not match model.json"):
        load_model(str(other)).sha256()
    (other / "model.json").unlink()
    with pytest.raises(ConfigError, match="model.json: missing"):
        load_model(str(other))
    bare = load_model(str(other / "resnet18.onnx"), require_card=False)  # imagenet.py-style: ONNX + labels
    assert bare.card is None and bare.classes == ["extra", "murmur", "normal"]
    with pytest.raises(ConfigError, match="no spectrogram contract"):
        bare.contract


def test_the_fast_tensor_path_has_the_bits_of_imagenet_tensor(model):
    from stetho.tensor import imagenet_tensor
    backend = OnnxRuntimeBackend(model)
    rng = np.random.RandomState(0)
    for shape in ((32, 32, 3), (32, 32, 4), (48, 20, 3)):  # R×R (lookup tables), RGBA, another size (stretch)
        image = rng.randint(0, 256, shape).astype(np.uint8)
        fast = backend.prepare(image)
        assert fast.dtype == np.float32 and fast.shape == (1, 3, 32, 32)
        np.testing.assert_array_equal(fast, imagenet_tensor(image, 32, model.mean, model.std))


@pytest.mark.parametrize("rows_first", [False, True])
def test_the_tensor_looked_up_from_levels_is_the_tensor_of_the_image(model, monkeypatch, rows_first):
    """The service hands the backend the levels its image was coloured from: one lookup, the same bits
    (both ways of looking it up: the one numpy 2 is quick at, and the one numpy 1.19 is)."""
    from stetho.spectrogram import colour
    from stetho.tensor import imagenet_tensor
    import deploy_jetson.backends as backends
    monkeypatch.setattr(backends, "TAKE_ROWS_FIRST", rows_first)
    backend = OnnxRuntimeBackend(model)
    contract = model.contract
    levels = np.random.RandomState(1).randint(0, 256, (contract.size, contract.size)).astype(np.uint8)
    levels[0, :256] = np.arange(min(256, contract.size))   # every level the first row can hold
    image = colour(levels, contract.spectrogram)
    tensor = backend.prepare(image, levels)
    assert tensor.dtype == np.float32 and tensor.flags["C_CONTIGUOUS"] and tensor.shape == (1, 3) + levels.shape
    np.testing.assert_array_equal(tensor, imagenet_tensor(image, contract.size, model.mean, model.std))
    np.testing.assert_array_equal(tensor, backend.prepare(image))

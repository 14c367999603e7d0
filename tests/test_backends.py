"""Backends: onnxruntime for real; TensorRT and jetson-inference through fake modules (neither can run here).

The fakes (tests/fakes_tensorrt.py, tests/fakes_jetson.py) take the API shape of each real version and reject
what it rejects; their "engines" run the very ONNX with onnxruntime, so buffer plumbing, name lookup, cache
reuse and staleness are exercised and the result is compared with the onnxruntime backend.  What this cannot
show: that real TensorRT or jetson-inference build and run the model, never executed in this project's CI.
Per-version TensorRT behaviour is in test_backends_tensorrt.py, jetson-inference's in test_backends_jetson.py;
here: model loading and integrity, the onnxruntime backend, 'auto', and the earlier per-backend tests.
"""
import json
import logging
import os
import sys
import types

import numpy as np
import pytest

from stetho import ConfigError, preset, render_segment, synth

from deploy_jetson.backends import (BackendFailed, BackendUnavailable, check_io_shapes, load_backend, load_model,
                                    onnx_io_shapes)
from deploy_jetson.backends import tensorrt as trt_backend
from deploy_jetson.backends.jetson import JetsonBackend, decode, import_jetson
from deploy_jetson.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
from fakes_jetson import fake_jetson
from fakes_models import copy_model, recard
from fakes_tensorrt import FakeCuda, fake_tensorrt
from test_service_support import make_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def other_onnx(tmp_path_factory):
    """Another network of the same shape (another seed): a valid ONNX that answers other classes."""
    return make_model(tmp_path_factory.mktemp("o") / "other", seed=1) / "resnet18.onnx"


@pytest.fixture
def model(model_dir, tmp_path):
    """A private copy of the model folder (engines get cached beside it)."""
    return load_model(str(copy_model(model_dir, tmp_path / "model")))


@pytest.fixture(scope="module")
def image():
    return render_segment(synth.heart_sound("murmur", duration_s=3.0, rate=2000, seed=2), preset("heart", size=32))


def install_fake_gpu(monkeypatch, version="8.2.1.8", fail=()):
    """Make ``import tensorrt``, ``import pycuda.driver`` and ``import pycuda.autoinit`` find fakes; returns them."""
    cuda = FakeCuda()
    trt = fake_tensorrt(version, cuda, fail=fail)
    trt_module = types.ModuleType("tensorrt")
    trt_module.__dict__.update(vars(trt))
    pycuda = types.ModuleType("pycuda")
    driver = types.ModuleType("pycuda.driver")
    driver.__dict__.update(dict((k, getattr(cuda, k)) for k in dir(cuda) if not k.startswith("__")))
    autoinit = types.ModuleType("pycuda.autoinit")
    pycuda.driver, pycuda.autoinit = driver, autoinit
    for name, module in (("tensorrt", trt_module), ("pycuda", pycuda), ("pycuda.driver", driver),
                         ("pycuda.autoinit", autoinit)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(trt_backend, "register_exit", lambda hook: None, raising=False)
    return trt, cuda


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
    old_meta = trt_backend.engine_metadata("cd" * 32, "8.2.1", "X1", True)
    old = trt_backend.engine_path(str(tmp_path), "resnet18", trt_backend.engine_key("cd" * 32, "8.2.1", "X1", True))
    trt_backend.save_engine(old, b"old plan", old_meta)
    (tmp_path / "resnet18.0123456789abcdef.engine").write_bytes(b"no sidecar: not ours")
    (tmp_path / "resnet18.onnx.1.1.8201.GPU.FP16.engine").write_bytes(b"jetson-inference's own cache")
    (tmp_path / "resnet34.0123456789abcdef.engine").write_bytes(b"other arch")
    assert trt_backend.stale_engines(str(tmp_path), "resnet18", path) == [old]


def test_io_api_dispatch_by_what_the_engine_offers():
    assert trt_backend.io_api(types.SimpleNamespace(num_io_tensors=2, get_tensor_name=None)) == "tensors"
    assert trt_backend.io_api(types.SimpleNamespace(num_bindings=2, get_binding_name=None)) == "bindings"
    with pytest.raises(BackendUnavailable):
        trt_backend.io_api(object())


# ---- TensorRT: the backend on fake modules (every version: test_backends_tensorrt.py) ----------------------------

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
    assert builds[1]["flags"] == 0
    assert builds[1]["workspace"] == ("MemoryPoolType.WORKSPACE", trt_backend.WORKSPACE_BYTES)
    engines = [n for n in os.listdir(model.model_dir) if n.endswith(".engine")]
    assert len(engines) == 1 and engines != old  # the 8.2 engine was stale and is gone
    np.testing.assert_allclose(backend.classify(image), OnnxRuntimeBackend(model).classify(image), atol=1e-6)
    fp32 = trt_backend.TensorRTBackend(model, precision="fp32", trt=fake_tensorrt("10.3.0", cuda, builds), cuda=cuda)
    assert "FP32" in fp32.reason and builds[-1]["fp16"] is False


def test_tensorrt_refuses_a_model_it_cannot_parse_or_whose_blobs_are_missing(model):
    cuda, builds = FakeCuda(), []
    with pytest.raises(BackendFailed, match="TensorRT cannot parse the ONNX: .*fake unsupported operator"):
        trt_backend.TensorRTBackend(model, trt=fake_tensorrt("8.2.1", cuda, builds, fail=("parse",)), cuda=cuda)
    model.output_blob = "prob"
    with pytest.raises(ConfigError, match="no tensor 'prob'"):
        trt_backend.TensorRTBackend(model, trt=fake_tensorrt("8.2.1", cuda, builds), cuda=cuda)
    assert cuda.memory == {} and cuda.errors == []


# ---- jetson-inference on fake modules (more: test_backends_jetson.py) ---------------------------------------------

def test_jetson_backend_is_the_imagenet_path_with_all_class_confidences(model, image):
    inference, utils, record = fake_jetson("current")
    backend = JetsonBackend(model, modules=(inference, utils))
    assert record["made"] == [{"model": model.onnx_path, "labels": model.labels_path, "input_blob": "input_0",
                               "output_blob": "output_0"}]
    assert backend.net.threshold == 0.0 and backend.net.smoothing == 0.0
    cuda_image = backend.prepare(image)
    assert cuda_image.array.dtype == np.uint8 and cuda_image.array.shape == (32, 32, 3)  # RGB, as rendered
    np.testing.assert_allclose(backend.infer(cuda_image), OnnxRuntimeBackend(model).classify(image), atol=1e-6)
    np.testing.assert_allclose(decode([(2, 0.5), (0, 0.25)], 3), [0.25, 0.0, 0.5])


def test_an_old_jetson_inference_without_topk_is_refused_with_a_way_out(model):
    inference, utils, record = fake_jetson("old")
    with pytest.raises(BackendUnavailable, match="no topK.*--backend tensorrt"):
        JetsonBackend(model, modules=(inference, utils))
    assert record["builds"] == []  # refused before imageNet built its engine


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


@pytest.mark.parametrize("failure, message", [("parse", "cannot parse the ONNX"), ("build", "failed to build"),
                                              ("context", "could not create an execution context")])
def test_auto_falls_back_past_a_tensorrt_that_fails_and_says_why(model, monkeypatch, caplog, failure, message):
    """Item 9: a TensorRT that cannot parse, build or run the model is passed over, with the reason logged."""
    install_fake_gpu(monkeypatch, fail=(failure,))
    monkeypatch.setitem(sys.modules, "jetson_inference", None)
    monkeypatch.setitem(sys.modules, "jetson", None)
    with caplog.at_level(logging.WARNING):
        backend = load_backend("auto", model)
    assert backend.name == "onnxruntime"
    assert backend.reason.startswith("auto: tensorrt: ") and message in backend.reason
    assert any("tensorrt failed, falling back" in r.message and message in r.message for r in caplog.records)
    with pytest.raises(BackendFailed, match=message):
        load_backend("tensorrt", model)  # asked for by name: the failure is the answer


def test_a_tensorrt_that_cannot_save_its_engine_runs_it_from_memory(model, monkeypatch, image):
    """A read-only model folder (PermissionError) no longer stops the service: the built engine runs uncached."""
    def refuse(path, blob, metadata):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(trt_backend, "save_engine", refuse)
    install_fake_gpu(monkeypatch)
    backend = load_backend("auto", model)
    assert backend.name == "tensorrt" and "(not cached: Permission denied)" in backend.reason
    np.testing.assert_allclose(backend.classify(image), OnnxRuntimeBackend(model).classify(image), atol=1e-6)
    assert not [n for n in os.listdir(model.model_dir) if ".engine" in n]


def test_an_onnx_changed_after_loading_stops_every_backend_and_auto_never_falls_back(model, other_onnx, monkeypatch):
    """Item 2: each backend checks the bytes it runs; an integrity error is never a reason to fall back."""
    with open(str(other_onnx), "rb") as handle:
        swapped = handle.read()
    with open(model.onnx_path, "wb") as handle:  # after load_model checked it
        handle.write(swapped)
    with pytest.raises(ConfigError, match="does not match model.json"):
        OnnxRuntimeBackend(model)
    with pytest.raises(ConfigError, match="does not match model.json"):
        JetsonBackend(model, modules=fake_jetson("current")[:2])
    with pytest.raises(ConfigError, match="does not match model.json"):
        cuda = FakeCuda()
        trt_backend.TensorRTBackend(model, trt=fake_tensorrt("8.2.1.8", cuda), cuda=cuda)
    install_fake_gpu(monkeypatch, fail=("parse",))
    inference, utils, record = fake_jetson("current")
    monkeypatch.setitem(sys.modules, "jetson_inference", inference)
    monkeypatch.setitem(sys.modules, "jetson_utils", utils)
    with pytest.raises(ConfigError, match="does not match model.json"):
        load_backend("auto", model)
    assert record["builds"] == []
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "jetson_inference", None)
    monkeypatch.setitem(sys.modules, "jetson", None)
    with pytest.raises(ConfigError, match="does not match model.json"):
        load_backend("auto", model)  # onnxruntime alone: it used to run the other network silently


def test_model_loading_checks_that_the_files_belong_together(model_dir, other_onnx, tmp_path, caplog):
    loaded = load_model(str(model_dir / "resnet18.onnx"))
    assert loaded.classes == ["extra", "murmur", "normal"] and loaded.contract.size == 32
    assert loaded.integrity == "sha256 checked against model.json"
    other = copy_model(model_dir, tmp_path / "other")
    (other / "resnet18.onnx").write_bytes(other_onnx.read_bytes())  # a valid ONNX, another network
    with pytest.raises(ConfigError, match="resnet18.onnx: sha256 .* does not match model.json"):
        load_model(str(other))  # refused at load, for every backend and tool
    with pytest.raises(ConfigError, match="does not match model.json"):
        load_model(str(other / "resnet18.onnx"), require_card=False)  # a card beside it is always checked
    (other / "resnet18.onnx").write_bytes((model_dir / "resnet18.onnx").read_bytes())
    (other / "copy.onnx").write_bytes(other_onnx.read_bytes())
    with pytest.raises(ConfigError, match="model.json describes resnet18.onnx, not copy.onnx"):
        load_model(str(other / "copy.onnx"))  # the card cannot vouch for a file it does not name
    data = json.loads((other / "model.json").read_text())
    for digest in ("", None):
        if digest is None:
            data.pop("onnx_sha256")
        else:
            data["onnx_sha256"] = digest
        (other / "model.json").write_text(json.dumps(data))
        with pytest.raises(ConfigError, match="onnx_sha256|missing key"):
            load_model(str(other))  # an empty or missing digest is an error, not a skipped check
    (other / "model.json").unlink()
    with pytest.raises(ConfigError, match="model.json: missing"):
        load_model(str(other))
    with caplog.at_level(logging.WARNING):
        bare = load_model(str(other / "resnet18.onnx"), require_card=False)  # imagenet.py-style: ONNX + labels
    assert bare.card is None and bare.classes == ["extra", "murmur", "normal"]
    assert bare.integrity == "unchecked (no model.json)"
    assert any("integrity is unchecked" in r.message and "resnet18.onnx" in r.message for r in caplog.records)
    with pytest.raises(ConfigError, match="no spectrogram contract"):
        bare.contract
    OnnxRuntimeBackend(bare)  # still runs


def test_the_network_is_checked_against_the_card_when_the_backend_is_built(model_dir, tmp_path):
    """Item 2: output count and input size are checked at start-up, not at the first loud window."""
    two = load_model(str(recard(copy_model(model_dir, tmp_path / "two"), classes=["murmur", "normal"])))
    with pytest.raises(ConfigError, match="outputs 3 values but labels list 2 classes"):
        OnnxRuntimeBackend(two)
    big = load_model(str(recard(copy_model(model_dir, tmp_path / "big"), size=64)))
    with pytest.raises(ConfigError, match="takes 32×32 images but model.json says 64"):
        OnnxRuntimeBackend(big)


def test_io_shapes_are_read_from_the_onnx_bytes_as_onnxruntime_reads_them(model_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    import onnxruntime
    from onnx import TensorProto, helper
    blob = (model_dir / "resnet18.onnx").read_bytes()
    assert onnx_io_shapes(blob) == {"input_0": (1, 3, 32, 32), "output_0": (1, 3)}
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 48, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    small = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]).SerializeToString()
    session = onnxruntime.InferenceSession(small, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 48, 40]
    assert onnx_io_shapes(small) == {"x": (None, 3, 48, 40), "y": (None, 3)}
    model = load_model(str(model_dir))
    with pytest.raises(ConfigError, match=r"input 'input_0' has shape \[\?, 3, 48, 40\]"):
        check_io_shapes(model, (None, 3, 48, 40), (None, 3), "small.onnx")
    assert check_io_shapes(model, (None, 3, 32, 32), (None, 3), "small.onnx") == 32
    with pytest.raises(ValueError):
        onnx_io_shapes(b"not an onnx model at all")


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

"""The jetson-inference backend against fakes of its current and old Python bindings (tests/fakes_jetson.py),
and labels.txt against imageNet's own reading of it.  Issue 28, items 2 and 11: the ONNX is checked right
before imageNet is constructed, the network's shapes before its engine is built, a missing labels.txt is an
error, constructor TypeErrors are not masked, an old build is refused before it builds anything, and class
names imageNet would read otherwise are refused where labels are written.
"""
import os

import numpy as np
import pytest

from stetho import ConfigError, preset, render_segment, synth
from stetho.labels import check_class_names, write_labels

from deploy_jetson.backends import BackendFailed, BackendUnavailable, load_model
from deploy_jetson.backends.jetson import JetsonBackend
from deploy_jetson.backends.onnxruntime import OnnxRuntimeBackend
from fakes_jetson import fake_jetson, load_class_info
from fakes_models import copy_model, recard
from test_service_support import make_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def folder(model_dir, tmp_path):
    return copy_model(model_dir, tmp_path / "model")


@pytest.fixture(scope="module")
def image():
    return render_segment(synth.heart_sound("extra", duration_s=3.0, rate=2000, seed=5), preset("heart", size=32))


def test_the_current_bindings_give_every_class_like_onnxruntime(folder, image):
    model = load_model(str(folder))
    inference, utils, record = fake_jetson("current")
    backend = JetsonBackend(model, modules=(inference, utils))
    assert len(record["builds"]) == 1 and backend.input_size == 32 and backend.reason == "imageNet custom"
    np.testing.assert_allclose(backend.classify(image), OnnxRuntimeBackend(model).classify(image), atol=1e-6)
    backend.close()
    assert backend.net is None


def test_the_onnx_is_checked_right_before_imagenet_is_made(folder, model_dir):
    model = load_model(str(folder))
    data = bytearray((folder / "resnet18.onnx").read_bytes())
    data[-5] ^= 0xFF  # one byte changed after load_model checked the file
    (folder / "resnet18.onnx").write_bytes(bytes(data))
    inference, utils, record = fake_jetson("current")
    with pytest.raises(ConfigError, match="does not match model.json"):
        JetsonBackend(model, modules=(inference, utils))
    assert record["builds"] == []


def test_a_missing_labels_file_is_a_clear_error(folder):
    model = load_model(str(folder))
    os.remove(str(folder / "labels.txt"))
    model = load_model(str(folder))  # the card has the classes: onnxruntime and TensorRT do not need the file
    assert model.labels_path is None
    inference, utils, record = fake_jetson("current")
    with pytest.raises(ConfigError, match="labels.txt: missing; jetson-inference's imageNet reads the class names"):
        JetsonBackend(model, modules=(inference, utils))
    assert record["builds"] == []  # the real imageNet would have loaded, naming the classes 'Class #N'


def test_an_old_build_is_refused_before_it_builds_its_engine(folder):
    inference, utils, record = fake_jetson("old")
    with pytest.raises(BackendUnavailable, match="no topK") as caught:
        JetsonBackend(load_model(str(folder)), modules=(inference, utils))
    assert "--backend tensorrt" in str(caught.value) and record["builds"] == []


def test_constructor_type_errors_are_reported_not_retried_another_way(folder):
    inference, utils, record = fake_jetson("current")

    class Strict(inference.imageNet):  # a build that refuses one of the values (not the keywords) we pass
        def __init__(self, *args, **kwargs):
            if "model" in kwargs:
                raise TypeError("imageNet() argument 3 must be str, not PosixPath")
            inference.imageNet.__init__(self, *args, **kwargs)
    inference.imageNet = Strict
    with pytest.raises(BackendFailed, match="TypeError: imageNet\\(\\) argument 3 must be str"):
        JetsonBackend(load_model(str(folder)), modules=(inference, utils))
    assert record["builds"] == []  # not retried with argv=


def test_the_class_count_and_input_size_are_checked_before_the_engine_is_built(folder, tmp_path, model_dir):
    inference, utils, record = fake_jetson("current")
    two = load_model(str(recard(folder, classes=["murmur", "normal"])))
    with pytest.raises(ConfigError, match="outputs 3 values but labels list 2 classes"):
        JetsonBackend(two, modules=(inference, utils))
    big = load_model(str(recard(copy_model(model_dir, tmp_path / "big"), size=64)))
    with pytest.raises(ConfigError, match="takes 32×32 images but model.json says 64"):
        JetsonBackend(big, modules=(inference, utils))
    assert record["builds"] == []


@pytest.mark.parametrize("name, refused", [
    ("nocturnal wheeze", True),    # 'n' at [0], ' ' at [9]: imageNet shows 'wheeze'
    ("n01440764 tench", True),
    ("normal123 x", True),
    ("nocturnal", False),          # 9 bytes: [9] is the newline
    ("nocturnal-wheeze", False),
    ("n1 wheeze", False),
    ("Nocturnal wheeze", False),   # the rule is case-sensitive
    ("nöcturnal wheeze", False),   # bytes, not characters: 'ö' is two, so [9] is 'l'
    ("x" * 510, False),
    ("x" * 511, True),             # fgets(str, 512) would split it into two classes
])
def test_class_names_are_refused_exactly_when_imagenet_would_read_them_otherwise(tmp_path, name, refused):
    """Item 11: check_class_names (called by prepare.py, the model card and labels.txt) refuses a name exactly
    when jetson-inference's LoadClassInfo would not read it back as written."""
    names = [name, "normal"]
    path = tmp_path / "labels.txt"
    path.write_bytes(("\n".join(names) + "\n").encode("utf-8"))
    assert (load_class_info(str(path)) != names) is refused
    if refused:
        with pytest.raises(ConfigError):
            check_class_names(names, "labels.txt")
        with pytest.raises(ConfigError):
            write_labels(str(tmp_path / "written.txt"), names)
    else:
        assert check_class_names(names, "labels.txt") == names


def test_imagenet_reads_back_every_accepted_labels_file_and_the_backend_checks(folder):
    """The class names imageNet reads are compared with the labels at start-up (CRLF files included)."""
    (folder / "labels.txt").write_bytes(b"extra\r\nmurmur\r\nnormal\r\n")
    model = load_model(str(folder))
    backend = JetsonBackend(model, modules=fake_jetson("current")[:2])
    assert [backend.net.GetClassDesc(i) for i in range(3)] == ["extra\r", "murmur\r", "normal\r"]

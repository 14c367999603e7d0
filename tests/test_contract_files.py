"""model.json, labels.txt, PNG and the network tensor: the files and numbers the device relies on."""
import json
import subprocess
import sys

import numpy as np
import pytest

from stetho import ConfigError, ModelCard, preset
from stetho.labels import read_labels, write_labels
from stetho.modelcard import sha256_file
from stetho.png import PngError, encode_png, read_png, write_png
from stetho.tensor import imagenet_tensor, nearest_indices


def _card(**changes):
    values = dict(classes=["AS", "MR", "N"], contract=preset("heart", size=64), onnx_sha256="ab" * 32)
    values.update(changes)
    return ModelCard(**values)


def test_model_card_round_trips(tmp_path):
    card = _card(training={"epochs": 3}, metrics={"accuracy": 0.9}, pretrained={"used": False, "reason": "offline"})
    card.save(tmp_path)
    loaded = ModelCard.load(tmp_path)
    assert loaded.to_dict() == card.to_dict()
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["input_blob"] == "input_0" and data["output_blob"] == "output_0"
    assert data["input_shape"] == [1, 3, 64, 64] and data["output_shape"] == [1, 3]
    assert data["mean"] == [0.485, 0.456, 0.406] and data["std"] == [0.229, 0.224, 0.225]


def test_future_schema_version_is_refused_by_name(tmp_path):
    data = _card().to_dict()
    data["schema_version"] = 7
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="schema_version 7 is not supported"):
        ModelCard.load(tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("classes"), "missing key"),
    (lambda d: d.__setitem__("resolution", 128), "resolution 128 differs"),
    (lambda d: d["contract"]["spectrogram"].__setitem__("n_fft", "big"), "n_fft"),
    (lambda d: d["contract"]["segmentation"].__setitem__("windw_s", 1), "unknown field"),
    (lambda d: d.__setitem__("classes", ["only"]), "at least two classes"),
])
def test_malformed_cards_get_clear_errors(tmp_path, mutate, message):
    data = _card().to_dict()
    mutate(data)
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as caught:
        ModelCard.load(tmp_path)
    assert "model.json" in str(caught.value)


def test_not_json_names_the_file(tmp_path):
    (tmp_path / "model.json").write_text("{oops")
    with pytest.raises(ConfigError, match="model.json: not valid JSON"):
        ModelCard.load(tmp_path)


def test_onnx_hash_is_checked(tmp_path):
    (tmp_path / "resnet18.onnx").write_bytes(b"model bytes")
    card = _card(onnx_sha256=sha256_file(tmp_path / "resnet18.onnx"))
    assert card.verify_onnx(tmp_path) == card.onnx_sha256
    (tmp_path / "resnet18.onnx").write_bytes(b"other bytes")
    with pytest.raises(ConfigError, match="does not match model.json"):
        card.verify_onnx(tmp_path)


def test_labels_file_rules(tmp_path):
    path = tmp_path / "labels.txt"
    write_labels(path, ["AS", "MR", "normal"])
    assert path.read_bytes() == b"AS\nMR\nnormal\n"
    assert read_labels(path) == ["AS", "MR", "normal"]
    for bad in (["n01440764", "normal"], ["a", ""], ["a", "a"], ["one"], [" padded", "x"]):
        with pytest.raises(ConfigError):
            write_labels(path, bad)
    path.write_bytes(b"a\n\nb\n")
    with pytest.raises(ConfigError, match="blank line 2"):
        read_labels(path)


def test_png_round_trip_and_reading_pil_files(tmp_path):
    image = np.random.RandomState(0).randint(0, 256, size=(40, 56, 3)).astype(np.uint8)
    write_png(tmp_path / "a.png", image)
    assert np.array_equal(read_png(tmp_path / "a.png"), image)
    Image = pytest.importorskip("PIL.Image")
    assert np.array_equal(np.asarray(Image.open(str(tmp_path / "a.png")).convert("RGB")), image)
    for mode, optimize in (("RGB", True), ("RGBA", True), ("L", True), ("P", False)):
        pil = Image.fromarray(image).convert(mode)
        pil.save(str(tmp_path / "pil.png"), optimize=optimize)   # PIL uses adaptive filters 1–4
        expected = np.asarray(pil.convert("RGB"))
        assert np.array_equal(read_png(tmp_path / "pil.png"), expected), mode


def test_png_errors_name_the_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"GIF89a")
    with pytest.raises(PngError, match="x.png: not a PNG"):
        read_png(tmp_path / "x.png")
    data = encode_png(np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "t.png").write_bytes(data[:40])
    with pytest.raises(PngError, match="t.png"):
        read_png(tmp_path / "t.png")


def test_tensor_is_what_imagenet_computes():
    image = np.random.RandomState(3).randint(0, 256, size=(64, 64, 3)).astype(np.uint8)
    tensor = imagenet_tensor(image, 64)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    expected = (image.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std
    np.testing.assert_allclose(tensor[0], expected, atol=1e-6)


def test_nearest_stretch_matches_the_cuda_kernel_formula():
    # gpuTensorNormMean: dx = int(float(x) * (in/out)); identity when sizes match
    assert list(nearest_indices(4, 8)) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(nearest_indices(224, 224)) == list(range(224))
    assert list(nearest_indices(10, 4)) == [0, 2, 5, 7]


def test_device_code_needs_nothing_newer_than_python_3_6(repo):
    """vermin: the shared core and deploy_jetson must run on the Nano's Python 3.6."""
    vermin = pytest.importorskip("vermin")
    result = subprocess.run([sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())", "-q", "--no-tips", "--violations", "-t=3.6-", "--eval-annotations",
                             "stetho", "deploy_jetson"], cwd=str(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def test_device_code_imports_no_workstation_libraries(repo):
    """No scipy/librosa/numba/torch/PIL at module level on the device path."""
    import ast
    forbidden = {"scipy", "librosa", "numba", "torch", "torchvision", "PIL", "sklearn", "matplotlib", "cv2"}
    for folder in ("stetho", "deploy_jetson"):
        for path in (repo / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:   # module level only: lazy imports inside functions are allowed
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in forbidden, "%s imports %s" % (path, name)

"""Export: the ONNX file jetson-inference's imageNet loads, its verification, labels.txt, model.json, evaluation."""
import csv
import json
import os
import shutil
import subprocess
import sys

if "OMP_WAIT_POLICY" not in os.environ:  # see train_host/train.py; before torch is imported
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision

from stetho import ModelCard
from stetho.errors import ConfigError
from stetho.modelcard import sha256_file
from stetho.png import read_png
from stetho.tensor import imagenet_tensor
from train_host import export as E
from train_host import train
from train_host.data import load_prepared, read_image, to_tensor
from train_host.evaluate import evaluate, read_predictions
from train_host.models import ARCHS, build_model, with_softmax
from trainkit import synthetic_heart

torch.set_num_threads(2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(log=lambda *args: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic dataset (NOT clinical, 32×32) and a 1-epoch model of it, not yet exported."""
    root = tmp_path_factory.mktemp("export")
    data = synthetic_heart(root / "data", size=32)
    model_dir = root / "model"
    assert train.main([data, "--model-dir", str(model_dir), "--epochs", "1", "--no-pretrained", "--threads", "2",
                       "--no-progress", "-b", "8", "--no-export"]) == 0
    return data, model_dir


@pytest.fixture(scope="module")
def exported(trained):
    data, model_dir = trained
    result = E.export(str(model_dir), **QUIET)
    return data, model_dir, result


def copy_model(model_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(model_dir, target)
    return target


def test_onnx_is_what_imagenet_loads(exported):
    data, model_dir, result = exported
    path = model_dir / "resnet18.onnx"
    assert result["onnx"] == str(path)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [11]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input_0" and out.name == "output_0"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 3]
    assert not any(d.dim_param for v in (inp, out) for d in v.type.tensor_type.shape.dim)  # no dynamic axes
    assert model.graph.node[-1].op_type == "Softmax"
    # one file: no external weights, nothing beside it but the known files
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not [f for f in os.listdir(model_dir) if f.endswith((".data", ".part", ".onnx_data"))]
    # onnxruntime on the imageNet tensor = PyTorch + softmax on the training tensor, probabilities summing to 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checkpoint = E.load_checkpoint(str(model_dir / "model_best.pth.tar"))
    network = with_softmax(E.model_from_checkpoint(checkpoint)).eval()
    dataset = load_prepared(data)
    for entry in dataset.split("test"):
        file = os.path.join(data, entry["path"])
        onnx_probs = session.run(["output_0"], {"input_0": imagenet_tensor(read_png(file), 32)})[0]
        with torch.no_grad():
            torch_probs = network(to_tensor(read_image(file, 32))[None]).numpy()
        assert abs(onnx_probs.sum() - 1) < 1e-5
        np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    checks = result["verification"]
    assert checks["top1_agreement"] and checks["max_abs_diff_onnxruntime_vs_torch"] < 1e-4
    assert checks["split"] == "test" and checks["images"] == 6


def test_labels_and_model_card(exported):
    data, model_dir, result = exported
    # labels.txt: class names in output order, LF, final newline, no blank line
    assert (model_dir / "labels.txt").read_bytes() == b"extra\nmurmur\nnormal\n"
    card = ModelCard.load(str(model_dir))
    dataset = load_prepared(data)
    assert card.classes == dataset.classes and card.contract == dataset.contract and card.resolution == 32
    assert card.onnx_file == "resnet18.onnx" and card.onnx_sha256 == sha256_file(str(model_dir / "resnet18.onnx"))
    assert card.verify_onnx(str(model_dir)) == card.onnx_sha256
    assert card.dataset["fingerprint"] == dataset.fingerprint
    assert card.pretrained == {"used": False, "requested": "none"}
    assert card.extra["graph"]["opset"] == 11 and card.extra["exporter"].startswith("torch.onnx.export(dynamo=False)")


def test_jetson_inference_onnx_export_can_read_the_checkpoint(exported):
    """What jetson-inference's onnx_export.py does: torch.load, torchvision arch, reshape fc, strict load."""
    _, model_dir, _ = exported
    checkpoint = torch.load(str(model_dir / "model_best.pth.tar"), map_location="cpu")
    model = torchvision.models.__dict__[checkpoint["arch"]]()
    model.fc = torch.nn.Linear(model.fc.in_features, checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["resolution"] == 32 and checkpoint["classes"] == ["extra", "murmur", "normal"]


def test_another_datasets_model_is_not_overwritten_without_force(exported, tmp_path):
    data, model_dir, _ = exported
    target = copy_model(model_dir, tmp_path)
    other = synthetic_heart(tmp_path / "other", size=32, seed=5)
    before = (target / "resnet18.onnx").read_bytes()
    cli = subprocess.run([sys.executable, "train_host/export.py", "--model-dir", str(target), "--data", other],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert cli.returncode == 1 and "another dataset" in cli.stderr and "--force" in cli.stderr
    assert (target / "resnet18.onnx").read_bytes() == before
    E.export(str(target), data=other, force=True, **QUIET)
    assert ModelCard.load(str(target)).dataset["fingerprint"] == load_prepared(other).fingerprint


def test_synset_shaped_class_names_are_refused(exported, tmp_path):
    _, model_dir, _ = exported
    target = copy_model(model_dir, tmp_path)
    checkpoint = torch.load(str(target / "model_best.pth.tar"), weights_only=True)
    checkpoint["classes"] = ["n01440764 tench", "murmur", "normal"]
    torch.save(checkpoint, str(target / "bad.pth.tar"))
    with pytest.raises(ConfigError, match="synset"):
        E.export(str(target), "bad.pth.tar", **QUIET)


def test_a_failed_verification_publishes_nothing(trained, tmp_path, monkeypatch):
    data, model_dir = trained
    target = tmp_path / "fresh"
    target.mkdir()
    shutil.copy(str(model_dir / "model_best.pth.tar"), str(target))
    monkeypatch.setattr(E, "TOLERANCE", 0.0)
    with pytest.raises(E.ExportError, match="differ by"):
        E.export(str(target), **QUIET)
    assert sorted(os.listdir(target)) == ["model_best.pth.tar"]


def test_architectures_keep_torchvision_keys_and_cbam_exports(tmp_path):
    for arch in sorted(ARCHS):
        ours = build_model(arch, 4).state_dict()
        reference = torchvision.models.__dict__[arch](num_classes=4).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}, arch
    cbam = build_model("resnet18", 3, cbam=True).eval()
    assert any(".cbam." in key for key in cbam.state_dict())
    path = str(tmp_path / "cbam.onnx")
    E.onnx_export(cbam, 32, path)
    E.check_graph(path, 32, 3)
    x = torch.randn(1, 3, 32, 32)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input_0": x.numpy()})[0], with_softmax(cbam)(x).numpy(),
                                   atol=1e-5)


def test_evaluate_onnxruntime_and_torch_agree(exported, tmp_path):
    data, model_dir, _ = exported
    target = copy_model(model_dir, tmp_path)
    summary = evaluate(str(target), data, "test", progress=False, **QUIET)
    rows, onnx_probs, classes = read_predictions(str(target / "predictions.csv"))
    assert classes == ["extra", "murmur", "normal"] and len(rows) == 6
    assert {r["recording"] for r in rows} == {"syn_%s_test0" % k for k in classes}
    for name in ("confusion_matrix.png", "roc.png", "training_curves.png"):
        assert (target / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["window"]["n"] == 6 and metrics["recording"]["n"] == 3
    assert metrics["window"]["accuracy"] == summary["window"]["accuracy"]
    assert ModelCard.load(str(target)).metrics["test"]["n_images"] == 6
    assert "| accuracy |" in (target / "report.md").read_text()
    # the checkpoint on training-side tensors gives the same probabilities (CLI, --backend torch)
    cli = subprocess.run([sys.executable, "train_host/evaluate.py", "--model-dir", str(target), data,
                          "--backend", "torch"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True)
    assert cli.returncode == 0, cli.stdout
    _, torch_probs, _ = read_predictions(str(target / "predictions.csv"))
    np.testing.assert_allclose(torch_probs, onnx_probs, atol=1e-5)
    with open(target / "predictions.csv") as handle:
        assert next(csv.reader(handle)) == ["path", "recording", "label", "prediction", "p_extra", "p_murmur",
                                            "p_normal"]


def test_evaluate_refuses_another_contract(exported, tmp_path):
    _, model_dir, _ = exported
    other = synthetic_heart(tmp_path / "r48", size=48)
    with pytest.raises(ConfigError, match=r"different contract.*spectrogram\.size \d+ → 48"):
        evaluate(str(model_dir), other, progress=False, **QUIET)

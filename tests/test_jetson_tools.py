"""jetson-inference's own classification tools (train.py, onnx_export.py) on this project's datasets and checkpoints.

The real scripts (../shared/peers/jetson-inference-classification, dusty-nv/pytorch-classification @ 3e9cf8c) run
unchanged through ../shared/peers/run_on_cpu.py (CUDA calls become no-ops; the ImageNet download they always ask
for fails here on purpose, so they start from seeded random weights and touch no network).  Skipped cleanly
without ../shared/peers, the recordings in ../shared/data, or tensorboard (their train.py imports it; the dev
extra installs it).

- layout: every split holds every class folder, so their ImageFolder numbers the classes as labels.txt does in
  every split, and refuses (rather than renumbers) a split where a class has no image (ICBHI's official split);
- their train.py trains one epoch on a Yaseen subset that prepare.py made, and resumes our checkpoint;
- their onnx_export.py exports our checkpoint: the same outputs as our ONNX within 1e-5, adopted by
  train_host/export.py --jetson-onnx, then run by our service.py and classify.py;
- a model they trained and exported, adopted the same way, runs in our service; exported by our export.py
  (opset 11) it runs on the Nano's stack too (.venv-device), where their opset-20 file is refused;
- the default time roll follows the contract (none for peak-cut cycles).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ:  # see train_host/train.py; before torch is imported
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numpy as np
import pytest
import torch

from stetho import ModelCard, preset, synth
from stetho.labels import read_labels
from stetho.modelcard import sha256_file
from stetho.png import read_png
from stetho.tensor import imagenet_tensor
from train_host import export as E
from train_host import prepare, train
from train_host.data import load_prepared
from trainkit import write_dataset

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "shared" / "peers"
TOOLS = PEERS / "jetson-inference-classification"
RUN_ON_CPU = PEERS / "run_on_cpu.py"
DEVICE_PYTHON = REPO / ".venv-device" / "bin" / "python"
YASEEN_MAP = "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"
CLIPS = ("010", "050", "090", "130", "170", "195")  # far apart: no two share audio, so each is its own group
R = 32
QUIET = dict(log=lambda *args: None)
OURS = ["--no-pretrained", "--threads", "2", "--no-progress", "-b", "8", "--workers", "0"]
THEIRS = ["--arch", "resnet18", "--resolution", str(R), "-b", "8", "--workers", "0", "--lr", "0.001", "--seed", "0"]

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tools():
    if not (TOOLS / "train.py").is_file() or not RUN_ON_CPU.is_file():
        pytest.skip("jetson-inference's tools not available (%s missing)" % TOOLS)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pytest.skip("tensorboard is not installed (jetson-inference's train.py imports it; pip install -e '.[dev]')")
    return TOOLS


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Environment for their scripts: an empty torch hub cache and a proxy that refuses, so the ImageNet weights
    their train.py and onnx_export.py ask for are never downloaded (no network in tests, same weights each run)."""
    env = dict(os.environ, TORCH_HOME=str(tmp_path_factory.mktemp("torch-home")), OMP_NUM_THREADS="2",
               no_proxy="", NO_PROXY="")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = "http://127.0.0.1:9"
    return env


def jetson(script, *args, env=None, cwd=None):
    """Run one of their scripts through run_on_cpu.py; returns the CompletedProcess (stdout + stderr in .stdout)."""
    return subprocess.run([sys.executable, str(RUN_ON_CPU), str(TOOLS / script)] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                          cwd=str(cwd or REPO), timeout=300)


def ours(script, *args, python=sys.executable):
    return subprocess.run([str(python), str(REPO / script)] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, cwd=str(REPO), timeout=300)


@pytest.fixture(scope="module")
def data(tools, shared_data, tmp_path_factory):
    """prepare.py on 6 Yaseen clips per class (R=32, split 2/2/2 recordings per class)."""
    source = shared_data / "yaseen2018"
    if not source.is_dir():
        pytest.skip("%s missing" % source)
    root = tmp_path_factory.mktemp("jetson-data")
    for cls in ("AS", "MR", "MS", "MVP", "N"):
        (root / "src" / ("%s_New" % cls)).mkdir(parents=True)
        for clip in CLIPS:
            name = "%s_New/New_%s_%s.wav" % (cls, cls, clip)
            os.symlink(str(source / name), str(root / "src" / name))
    dest = root / "yaseen"
    assert prepare.main([str(root / "src"), str(dest), "--preset", "heart", "--size", str(R), "--class-map",
                         YASEEN_MAP, "--split", "0.34,0.33,0.33", "--workers", "1"]) == 0
    dataset = load_prepared(str(dest))
    assert all(n == 2 for s in ("train", "val", "test") for n in dataset.counts(s).values())
    return dest


def probabilities(onnx_path, dataset, entries):
    """onnxruntime's output_0 for each entry's PNG, through the tensor jetson-inference's imageNet builds."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["output_0"], {"input_0": imagenet_tensor(
        read_png(os.path.join(dataset.root, e["path"])), dataset.size)})[0] for e in entries])


def serve_and_classify(model_dir, dataset, onnx_name="resnet18.onnx"):
    """Run our service.py and classify.py on one test recording with the model folder's model.json; both must
    give the probabilities of the ONNX on that recording's prepared image (the same rendering, the same file)."""
    entry = dataset.split("test")[0]
    expected = probabilities(Path(model_dir) / onnx_name, dataset, [entry])[0]
    out = Path(model_dir).parent / ("served-" + Path(model_dir).name)
    run = ours("deploy_jetson/service.py", "--model-dir", model_dir, "--source", "file:" + entry["source"], "--fast",
               "--quiet", "--smooth", "1", "--output", out)
    assert run.returncode == 0, run.stderr
    (first,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()][:1]
    assert first["start_s"] == entry["offset_s"] == 0.0
    np.testing.assert_allclose([first["probabilities"][c] for c in dataset.classes], expected, atol=1e-5)
    run = ours("deploy_jetson/classify.py", "--model=%s" % (Path(model_dir) / onnx_name),
               "--labels=%s" % (Path(model_dir) / "labels.txt"), "--min-s", "0", entry["source"])
    assert run.returncode == 0, run.stderr
    top = int(expected.argmax())
    assert "imagenet:  %05.2f%% class #%d (%s)" % (100 * expected[top], top, dataset.classes[top]) in run.stdout
    return first


# ---- 1. the layout ----------------------------------------------------------------------------------------------

def test_every_split_has_every_class_folder_in_labels_txt_order(data):
    from torchvision.datasets import ImageFolder
    labels = read_labels(str(data / "labels.txt"))
    assert labels == load_prepared(str(data)).classes == ["AS", "MR", "MS", "MVP", "N"]
    for split in ("train", "val", "test"):
        folder = ImageFolder(str(data / split))
        assert folder.classes == labels and folder.class_to_idx == dict((c, i) for i, c in enumerate(labels))
        assert len(folder) == 10


def test_icbhi_official_split_keeps_every_class_folder_and_their_train_py_refuses_it(tools, shared_data, offline,
                                                                                     tmp_path, capsys):
    """ICBHI's official split has no crackle in train and no val: empty folders, a warning naming the class and
    the split, and their ImageFolder stops with the class's name instead of training on shifted indices."""
    from torchvision.datasets import ImageFolder
    dest = tmp_path / "icbhi"
    assert prepare.main([str(shared_data / "icbhi2017_sample"), str(dest), "--adapter", "icbhi2017", "--preset",
                         "lung", "--size", str(R), "--split", "official", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    meta = json.loads((dest / "prepare.json").read_text())
    classes = meta["classes"]
    assert classes == ["crackle", "normal", "wheeze"] == read_labels(str(dest / "labels.txt"))
    for split in ("train", "val", "test"):
        assert sorted(os.listdir(str(dest / split))) == classes, split
    assert meta["counts"]["train"]["crackle"] == 0 and not sum(meta["counts"]["val"].values())
    assert "WARNING class crackle has no images in train (train 0, val 0, test 1): train/crackle is empty, and " \
           "jetson-inference's train.py (torchvision ImageFolder) will refuse this dataset" in out
    assert re.search(r"WARNING val is empty .*will refuse this dataset \(empty folders val/crackle, val/normal, "
                     r"val/wheeze\)", out)
    assert ImageFolder(str(dest / "test")).class_to_idx == {"crackle": 0, "normal": 1, "wheeze": 2}
    with pytest.raises(FileNotFoundError, match="crackle"):
        ImageFolder(str(dest / "train"))
    run = jetson("train.py", dest, "--model-dir", tmp_path / "m", "--epochs", "1", *THEIRS, env=offline)
    assert run.returncode != 0 and "Found no valid file for the classes crackle" in run.stdout, run.stdout[-2000:]
    assert not (tmp_path / "m" / "checkpoint.pth.tar").exists()


def test_layout_functions_name_every_empty_class_folder(tmp_path):
    """remove_stale gives every split every class folder and drops folders of classes gone since an earlier run;
    coverage_warnings names each class and split without images, and what refuses it."""
    for rel in ("train/a/x.png", "train/b/y.png", "val/a/z.png", "test/gone/old.png", "test/a/old.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"png")
    prepare.remove_stale(str(tmp_path), {"train/a/x.png", "train/b/y.png", "val/a/z.png"})
    for split in ("train", "val", "test"):
        assert sorted(os.listdir(str(tmp_path / split))) == ["a", "b"], split
    assert not os.listdir(str(tmp_path / "test" / "a")) and (tmp_path / "train" / "a" / "x.png").exists()
    counts = {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 0}, "test": {"a": 0, "b": 2}}
    assert prepare.coverage_warnings(counts, ["a", "b"]) == [
        "class a has no images in test (train 1, val 1, test 0): test/a is empty, so ImageFolder refuses test/ "
        "(jetson-inference's train.py reads only train/ and val/)",
        "class b has no images in val (train 1, val 0, test 2): val/b is empty, and jetson-inference's train.py "
        "(torchvision ImageFolder) will refuse this dataset"]
    test_only = {"train": {"a": 0, "b": 0}, "val": {"a": 0, "b": 0}, "test": {"a": 3, "b": 2}}  # --split test
    assert [w.split(":")[0] for w in prepare.coverage_warnings(test_only, ["a", "b"])] == [
        "train/ holds no images", "val is empty (too few groups to take one out for validation); model selection "
        "has nothing to select on, and jetson-inference's train.py (torchvision ImageFolder) will refuse this dataset "
        "(empty folders val/a, val/b)"]


# ---- 2. our checkpoints in their tools -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def our_model(data, tmp_path_factory):
    """Our train.py, 1 epoch from scratch (AdamW), exported by our export.py (opset 11)."""
    model_dir = tmp_path_factory.mktemp("ours") / "model"
    assert train.main([str(data), "--model-dir", str(model_dir), "--epochs", "1", "--no-export"] + OURS) == 0
    E.export(str(model_dir), **QUIET)
    return model_dir


def test_their_train_py_resumes_our_checkpoint(tools, data, our_model, offline, tmp_path):
    checkpoint = torch.load(str(our_model / "checkpoint.pth.tar"), weights_only=True)  # as their torch.load reads it
    assert checkpoint["own_optimizer"]["name"] == "adamw"
    assert set(checkpoint["optimizer"]["param_groups"][0]) >= {"momentum", "weight_decay", "dampening", "nesterov"}
    run = jetson("train.py", data, "--model-dir", tmp_path / "resumed", "--epochs", "2", "--resume",
                 our_model / "checkpoint.pth.tar", *THEIRS, env=offline)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "=> loaded checkpoint '%s' (epoch 0)" % (our_model / "checkpoint.pth.tar") in run.stdout
    assert "Epoch: [1] completed" in run.stdout and "Epoch: [0]" not in run.stdout
    theirs = torch.load(str(tmp_path / "resumed" / "checkpoint.pth.tar"), weights_only=True)
    assert theirs["epoch"] == 1 and theirs["classes"] == load_prepared(str(data)).classes


def test_our_train_py_keeps_its_own_optimizer_state(data, our_model, capsys):
    """--resume reads our AdamW state from our key; a different --optimizer is refused by name."""
    checkpoint = E.load_checkpoint(str(our_model / "checkpoint.pth.tar"))
    state = E.own_optimizer_state(checkpoint, "adamw", "ckpt")
    assert "exp_avg_sq" in state["state"][0]
    assert train.main([str(data), "--model-dir", str(our_model), "--epochs", "2", "--resume", "--optimizer", "sgd",
                       "--no-export"] + OURS) == 2
    assert "trained with --optimizer adamw; resume it with --optimizer adamw (not sgd)" in capsys.readouterr().err


def test_their_onnx_export_of_our_checkpoint_equals_ours_and_runs_in_our_service(tools, data, our_model, offline,
                                                                                 tmp_path, capsys):
    dataset = load_prepared(str(data))
    folder = tmp_path / "their-export"
    folder.mkdir()
    run = jetson("onnx_export.py", "--input", our_model / "model_best.pth.tar", "--output", folder / "resnet18.onnx",
                 env=offline)
    assert run.returncode == 0, run.stdout[-3000:]
    entries = dataset.images
    theirs_raw = probabilities(folder / "resnet18.onnx", dataset, entries)  # as their exporter wrote it
    mine = probabilities(our_model / "resnet18.onnx", dataset, entries)
    assert np.abs(theirs_raw - mine).max() < 1e-5
    assert np.allclose(theirs_raw.sum(axis=1), 1.0, atol=1e-5)

    assert E.main(["--model-dir", str(folder), "--checkpoint", str(our_model / "model_best.pth.tar"),
                   "--jetson-onnx", "resnet18.onnx"]) == 0  # the command docs/deploy.md shows
    assert "=> verified resnet18.onnx" in capsys.readouterr().out
    card = ModelCard.load(str(folder))
    ours_card = ModelCard.load(str(our_model))
    assert card.contract == ours_card.contract == dataset.contract and card.classes == dataset.classes
    assert card.onnx_sha256 == sha256_file(str(folder / "resnet18.onnx")) != ours_card.onnx_sha256
    assert card.dataset["fingerprint"] == dataset.fingerprint and card.dataset["name"] == "yaseen"
    assert card.extra["verification"]["max_abs_diff_onnxruntime_vs_torch"] < 1e-4
    text = (folder / "model.json").read_text()
    assert str(data.parent) not in text and str(our_model) not in text  # no paths of the training machine
    assert read_labels(str(folder / "labels.txt")) == dataset.classes
    # folded or not, the adopted file computes what their exporter's file computed
    assert np.abs(probabilities(folder / "resnet18.onnx", dataset, entries) - theirs_raw).max() < 1e-6
    serve_and_classify(folder, dataset)


# ---- 3. a model they trained, exported by their script --------------------------------------------------------------

@pytest.fixture(scope="module")
def their_model(tools, data, offline, tmp_path_factory):
    """Their train.py (1 epoch) and onnx_export.py (torch.onnx.export's defaults) on our dataset."""
    model_dir = tmp_path_factory.mktemp("theirs") / "model"
    run = jetson("train.py", data, "--model-dir", model_dir, "--epochs", "1", *THEIRS, env=offline)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "random initial weights" in run.stdout  # offline: nothing was downloaded
    run = jetson("onnx_export.py", "--model-dir", model_dir, env=offline)
    assert run.returncode == 0, run.stdout[-3000:]
    return model_dir


def test_a_model_they_trained_and_exported_runs_in_our_service(data, their_model, tmp_path):
    dataset = load_prepared(str(data))
    checkpoint = torch.load(str(their_model / "model_best.pth.tar"), weights_only=True)
    assert checkpoint["classes"] == dataset.classes == read_labels(str(their_model / "labels.txt"))
    model_dir = tmp_path / "model"
    shutil.copytree(str(their_model), str(model_dir))
    before = (model_dir / "resnet18.onnx").read_bytes()
    # our export does not replace their ONNX unasked
    with pytest.raises(E.ExportError, match="no model.json describes it.*--jetson-onnx resnet18.onnx"):
        E.export(str(model_dir), data=str(data), **QUIET)
    assert (model_dir / "resnet18.onnx").read_bytes() == before
    # the dataset is required (their checkpoint does not name it), and must be the one it was trained on
    with pytest.raises(E.ExportError, match="pass --data DATA"):
        E.adopt(str(model_dir), "resnet18.onnx", **QUIET)
    result = E.adopt(str(model_dir), "resnet18.onnx", data=str(data), **QUIET)
    card = ModelCard.load(str(model_dir))
    assert card.onnx_sha256 == result["sha256"] and card.classes == dataset.classes
    assert card.training["tool"] == "jetson-inference train.py" and card.pretrained["used"] is None
    assert card.extra["graph"]["opset"] == result["graph"]["opset"]
    assert (card.extra["device"] is not None) == (result["graph"]["opset"] > E.DEVICE_ONNX["opset"]
                                                  or result["graph"]["ir_version"] > E.DEVICE_ONNX["ir_version"])
    json.dumps(card.to_dict(), allow_nan=False)  # their NaN val loss, if any, is not in the card
    first = serve_and_classify(model_dir, dataset)
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-5


def test_adopt_refuses_a_model_of_another_dataset_or_a_broken_file(data, their_model, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(str(their_model), str(model_dir))
    other = write_dataset(tmp_path / "other", [("r%d" % i, label, split, synth.heart_sound(kind, duration_s=3.5,
                                                                                           rate=2000, seed=i))
                                               for i, (label, kind, split) in enumerate(
                                                   [("A", "normal", "train"), ("B", "murmur", "train")])],
                          preset("heart", size=R), "heart")
    with pytest.raises(E.ExportError, match="do not match the checkpoint's"):
        E.adopt(str(model_dir), "resnet18.onnx", data=other, **QUIET)
    (model_dir / "broken.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(E.ExportError, match="broken.onnx: not a valid ONNX model"):
        E.adopt(str(model_dir), "broken.onnx", data=str(data), **QUIET)
    with pytest.raises(Exception, match="plain file name"):
        E.adopt(str(model_dir), "../resnet18.onnx", data=str(data), **QUIET)
    assert not (model_dir / "model.json").exists()
    assert E.main(["--model-dir", str(model_dir), "--jetson-onnx", "broken.onnx", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("export: ") and "broken.onnx: not a valid ONNX model" in err and len(err.splitlines()) == 1


def test_their_model_on_the_nano_stack(data, their_model, tmp_path):
    """onnxruntime 1.10 (JetPack 4.6's, .venv-device) runs their checkpoint as our export.py writes it (opset 11),
    and refuses what torch.onnx.export's defaults wrote here when that is newer than it reads."""
    if not DEVICE_PYTHON.exists():
        pytest.skip("no device Python (%s missing: `make venv` builds it where Python 3.6 is installed)"
                    % DEVICE_PYTHON)
    dataset = load_prepared(str(data))
    entry = dataset.split("test")[0]
    nano = tmp_path / "nano"
    nano.mkdir()
    shutil.copy(str(their_model / "model_best.pth.tar"), str(nano))
    result = E.export(str(nano), data=str(data), **QUIET)
    assert result["graph"]["opset"] == E.OPSET
    run = ours("deploy_jetson/service.py", "--model-dir", nano, "--source", "file:" + entry["source"], "--fast",
               "--quiet", "--smooth", "1", "--output", tmp_path / "out", python=DEVICE_PYTHON)
    assert run.returncode == 0, run.stderr
    served = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    expected = probabilities(nano / "resnet18.onnx", dataset, [entry])[0]
    np.testing.assert_allclose([served["probabilities"][c] for c in dataset.classes], expected, atol=1e-5)
    adopted = tmp_path / "adopted"
    shutil.copytree(str(their_model), str(adopted))
    if E.adopt(str(adopted), "resnet18.onnx", data=str(data), **QUIET)["device"] is None:
        return  # an exporter that writes what the Nano reads: nothing to refuse
    run = ours("deploy_jetson/service.py", "--model-dir", adopted, "--source", "file:" + entry["source"], "--fast",
               "--quiet", "--output", tmp_path / "out2", python=DEVICE_PYTHON)
    assert run.returncode != 0 and "onnxruntime cannot load the model" in run.stderr, run.stderr


# ---- 4. the default augmentation follows the contract ----------------------------------------------------------------

def test_the_default_time_roll_follows_the_contract(tmp_path, capsys):
    contract = preset("heart", size=R)
    peaks = contract.replace(segmentation=contract.segmentation.replace(mode="peaks"))
    rng = np.random.RandomState(0)
    recordings = [("%s_%s%d" % (kind, split, i), kind, split,
                   synth.heart_sound(kind, bpm=rng.uniform(60, 90), duration_s=4.0, rate=2000, seed=10 * n + i))
                  for n, kind in enumerate(("murmur", "normal")) for split, count in (("train", 2), ("val", 1))
                  for i in range(count)]
    data = write_dataset(tmp_path / "peaks", recordings, peaks, "heart")
    assert train.main([data, "--model-dir", str(tmp_path / "m1"), "--epochs", "1", "--no-export"] + OURS) == 0
    out = capsys.readouterr().out
    assert "=> augment: time roll up to 0 of the width (the contract's segmentation.mode 'peaks': cycles start at " \
           "a peak, no roll)" in out
    assert E.load_checkpoint(str(tmp_path / "m1" / "checkpoint.pth.tar"))["training"]["augment"]["shift"] == 0.0


def test_windows_keep_the_time_roll(our_model):
    """A windowed contract (Yaseen, heart preset): windows start at any phase, so the roll stays on."""
    assert E.load_checkpoint(str(our_model / "checkpoint.pth.tar"))["training"]["augment"]["shift"] == 1.0

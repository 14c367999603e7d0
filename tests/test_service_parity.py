"""Train/serve parity on real recordings: what the Jetson service sees and says is what training saw and said.

A tiny real run (Yaseen, 4 clips per class, R=32, one epoch on CPU: accuracy is meaningless here and not
checked) goes through train_host/prepare.py → train.py (which exports the ONNX and runs evaluate.py on
test) and then through the service, classify.py and render.py:

- every test-split image the service renders is byte-identical to prepare.py's PNG for the same
  recording and offset (and render.py's);
- the service's probabilities equal evaluate.py's predictions.csv within 1e-5;
- classify.py's per-window and recording-level probabilities agree with both.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_service_support import REPO, read_jsonl, run_service

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
TINY = ["--no-pretrained", "--threads", "2", "--no-progress", "-b", "8", "--epochs", "1"]


def _run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable] + [str(a) for a in args], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, **kwargs)
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.fixture(scope="module")
def trained(yaseen, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    with open(str(root / "manifest.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for folder in sorted(p for p in os.listdir(str(yaseen)) if os.path.isdir(str(yaseen / p))):
            # clips 1, 26, 51, 76: neighbouring clips are overlapping cuts of one recording, which prepare.py
            # would refuse to see on both sides of a split
            names = sorted(n for n in os.listdir(str(yaseen / folder)) if n.endswith(".wav"))[::25][:4]
            for name, split in zip(names, ["train", "train", "val", "test"]):
                writer.writerow([str(yaseen / folder / name), folder.replace("_New", ""), split])
    _run(["train_host/prepare.py", root / "manifest.csv", root / "data", "--adapter", "csv", "--preset", "heart",
          "--size", "32", "--split", "official", "--workers", "1"])
    _run(["train_host/train.py", root / "data", "--model-dir", root / "model"] + TINY)
    with open(str(root / "data" / "prepare.json")) as handle:
        prepared = json.load(handle)
    tests = [image for image in prepared["images"] if image["split"] == "test"]
    sources = sorted(set(image["source"] for image in tests))
    folder = root / "test_wavs"
    folder.mkdir()
    for source in sources:
        os.symlink(source, str(folder / os.path.basename(source)))
    served = run_service("--model-dir", root / "model", "--source", "file:%s" % folder, "--fast", "--quiet",
                         "--no-quality", "--smooth", "1", "--output", root / "served", "--save-images",
                         root / "served_images")
    assert served.returncode == 0, served.stderr
    return root, tests, read_jsonl(root / "served" / "results.jsonl")


def _served_for(results, image):
    stream = os.path.splitext(os.path.basename(image["source"]))[0]
    matches = [r for r in results if r["stream"] == stream and abs(r["start_s"] - image["offset_s"]) < 1e-6]
    assert len(matches) == 1, (stream, image["offset_s"])
    return matches[0]


def test_the_service_renders_exactly_the_images_prepare_wrote(trained):
    root, tests, results = trained
    assert len(tests) >= 5 and len(results) == len(tests)  # the same windows, no more, no fewer
    for image in tests:
        result = _served_for(results, image)
        served_png = root / "served_images" / ("%s__%04d.png" % (result["stream"], result["window"]))
        assert served_png.read_bytes() == (root / "data" / image["path"]).read_bytes(), image["path"]


def test_render_py_draws_the_same_images_too(trained):
    root, tests, results = trained
    source = tests[0]["source"]
    _run(["deploy_jetson/render.py", "--model-dir", root / "model", source, root / "rendered"])
    stem = os.path.splitext(os.path.basename(source))[0]
    rendered = sorted(os.listdir(str(root / "rendered")))
    assert rendered and all(name.startswith(stem + "__") for name in rendered)
    for name in rendered:
        assert (root / "rendered" / name).read_bytes() == (root / "served_images" / name).read_bytes()


def test_the_service_says_what_evaluate_said(trained):
    root, tests, results = trained
    with open(str(root / "model" / "predictions.csv")) as handle:
        rows = dict((row["path"], row) for row in csv.DictReader(handle))
    assert set(rows) == set(image["path"] for image in tests)
    for image in tests:
        result = _served_for(results, image)
        row = rows[image["path"]]
        served = [result["probabilities"][c] for c in sorted(result["probabilities"])]
        evaluated = [float(row["p_" + c]) for c in sorted(result["probabilities"])]
        np.testing.assert_allclose(served, evaluated, atol=1e-5, err_msg=image["path"])
        assert result["label"] == row["prediction"]


def test_classify_agrees_with_the_service_and_evaluate_per_window_and_per_recording(trained):
    root, tests, results = trained
    source = tests[-1]["source"]
    _run(["deploy_jetson/classify.py", "--model=%s" % (root / "model" / "resnet18.onnx"),
          "--labels=%s" % (root / "model" / "labels.txt"), "--min-s", "0", "--json", root / "classify.json", source])
    answer = json.loads((root / "classify.json").read_text())
    stream = os.path.splitext(os.path.basename(source))[0]
    served = [r for r in results if r["stream"] == stream]
    assert [w["start_s"] for w in answer["windows"]] == [r["start_s"] for r in served]
    for window, result in zip(answer["windows"], served):
        np.testing.assert_allclose(window["probabilities"], [result["probabilities"][c] for c in answer["classes"]],
                                   atol=1e-6)
    with open(str(root / "model" / "predictions.csv")) as handle:
        rows = [row for row in csv.DictReader(handle) if row["path"] in
                set(i["path"] for i in tests if i["source"] == source)]
    recording = np.mean([[float(row["p_" + c]) for c in answer["classes"]] for row in rows], axis=0)
    np.testing.assert_allclose(answer["probabilities"], recording, atol=1e-5)
    assert Path(source).is_file()

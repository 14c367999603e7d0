"""The device's exam verdict is the workstation's recording-level figure, on real PhysioNet recordings.

For a window contract and a peak-cycle contract, a tiny real run (PhysioNet training-a, R=32, one epoch: the
accuracy is meaningless and not checked) goes prepare.py → train.py (which exports, chooses the decision rule
on val and runs evaluate.py on test); then each test recording is replayed through service.py (--fast: a file
is one exam) and classify.py.  The exam's mean probabilities equal evaluate.py's recording-level means (the
mean of predictions.csv's window rows) within 1e-5, every window passed the quality gate, and the verdict is
the stored rule's on evaluate.py's mean.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stetho.decision import DecisionRule

from test_service_support import REPO, read_jsonl, run_service

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
TINY = ["--no-pretrained", "--threads", "2", "--no-progress", "-b", "8", "--epochs", "1", "--aug-shift", "0"]
SPLITS = {"train": (["a0131", "a0090", "a0058", "a0087"], ["a0323", "a0385", "a0035", "a0071"]),
          "val": (["a0100", "a0104"], ["a0235", "a0408"]),
          # a0369 and a0393: recordings whose level or rhythm changes, where a live search over the last 8 s puts
          # one peak elsewhere than a search of the whole recording (a file that arrives whole is cut as one)
          "test": (["a0336", "a0296", "a0395", "a0369"], ["a0238", "a0405", "a0050", "a0393"])}
CONTRACTS = {"windows": [], "peaks": ["--segment", "peaks", "--window", "1.5", "--hop", "3.0"]}


def _run(args):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable] + [str(a) for a in args], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.fixture(scope="module", params=sorted(CONTRACTS))
def trained(request, shared_data, tmp_path_factory):
    site = shared_data / "physionet2016" / "training-a"
    if not site.is_dir():
        pytest.skip("%s missing" % site)
    root = tmp_path_factory.mktemp("exam-parity-" + request.param)
    with open(str(root / "manifest.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split, (abnormal, normal) in sorted(SPLITS.items()):
            for label, records in (("abnormal", abnormal), ("normal", normal)):
                for record in records:
                    writer.writerow([str(site / (record + ".wav")), label, split])
    _run(["train_host/prepare.py", root / "manifest.csv", root / "data", "--adapter", "csv", "--preset", "heart",
          "--size", "32", "--split", "official", "--workers", "1"] + CONTRACTS[request.param])
    _run(["train_host/train.py", root / "data", "--model-dir", root / "model"] + TINY)
    folder = root / "test_wavs"
    folder.mkdir()
    for abnormal_or_normal in SPLITS["test"]:
        for record in abnormal_or_normal:
            os.symlink(str(site / (record + ".wav")), str(folder / (record + ".wav")))
    served = run_service("--model-dir", root / "model", "--source", "file:%s" % folder, "--fast", "--quiet",
                         "--output", root / "served", "--exam-min-s", "4", timeout=300)
    assert served.returncode == 0, served.stderr
    return root, request.param


def _evaluated(root):
    """{recording: mean of its window probabilities in predictions.csv}, classes."""
    with open(str(root / "model" / "predictions.csv")) as handle:
        rows = list(csv.DictReader(handle))
    classes = [key[2:] for key in rows[0] if key.startswith("p_")]
    means = {}
    for recording in sorted(set(row["recording"] for row in rows)):
        means[recording] = np.mean([[float(row["p_" + c]) for c in classes] for row in rows
                                    if row["recording"] == recording], axis=0)
    return means, classes


def test_exam_probabilities_and_verdicts_are_evaluate_py_s_recording_level(trained):
    root, kind = trained
    means, classes = _evaluated(root)
    exams = dict((e["stream"], e) for e in read_jsonl(root / "served" / "exams.jsonl"))
    assert sorted(exams) == sorted(means) and len(exams) == 8
    card = json.loads((root / "model" / "model.json").read_text())
    rule = DecisionRule(card.get("decision"), classes)
    assert card["decision"]["chosen_on"]["split"] == "val"
    for recording, mean in means.items():
        exam = exams[recording]
        assert exam["windows_rejected"] == {}, (kind, recording)  # real recordings pass the gate
        np.testing.assert_allclose([exam["mean_probabilities"][c] for c in classes], mean, atol=1e-5,
                                   err_msg="%s %s" % (kind, recording))
        assert exam["verdict"] == rule.decide(mean).label
        assert exam["rule"] == rule.rule and exam["ended"] == "end of file"


def test_classify_gives_the_same_verdict(trained):
    root, kind = trained
    means, classes = _evaluated(root)
    recording = sorted(means)[0]
    wav = root / "test_wavs" / (recording + ".wav")
    run = subprocess.run([sys.executable, str(REPO / "deploy_jetson" / "classify.py"), "--model",
                          str(root / "model" / "resnet18.onnx"), "--min-s", "4", "--json", str(root / "c.json"),
                          str(wav)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert run.returncode == 0, run.stderr + run.stdout
    answer = json.loads((root / "c.json").read_text())
    np.testing.assert_allclose(answer["probabilities"], means[recording], atol=1e-5)
    exam = dict((e["stream"], e) for e in read_jsonl(root / "served" / "exams.jsonl"))[recording]
    assert answer["verdict"] == exam["verdict"] and "classify: verdict %s" % exam["verdict"] in run.stdout

"""bench/accuracy.py's operating point chosen on val: the threshold comes from val recordings only, and the
test counts are those of that threshold applied to evaluate.py's test predictions (recording = mean of windows)."""
import collections
import csv
import importlib.util

import numpy as np
import pytest

from stetho import preset, synth
from train_host import metrics as M
from train_host.evaluate import evaluate
from trainkit import write_dataset
from test_service_support import REPO, make_model


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", str(REPO / "bench" / "accuracy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recording_means(model_dir, split_rows):
    by = collections.OrderedDict()
    for row in split_rows:
        by.setdefault(row["recording"], (row["label"], []))[1].append(float(row["p_abnormal"]))
    return [(label == "abnormal", float(np.mean(p))) for label, p in by.values()]


def test_val_operating_point_uses_val_for_the_threshold_and_test_for_the_figures(tmp_path):
    contract = preset("heart", size=32)
    recordings = []
    for kind, label in (("murmur", "abnormal"), ("normal", "normal")):
        for split, n in (("val", 4), ("test", 4)):
            for i in range(n):
                audio = synth.heart_sound(kind, bpm=60 + 7 * i, duration_s=4.5, rate=2000, seed=i + 10 * n)
                recordings.append(("%s_%s%d" % (label, split, i), label, split, audio))
    data = write_dataset(tmp_path / "data", recordings, contract, "heart")
    model = make_model(tmp_path / "model", classes=("abnormal", "normal"), size=32, seed=3)
    evaluate(str(model), data, "test", threads=1, log=lambda *a: None, progress=False)
    point = load_bench().val_operating_point(data, str(model))

    # the threshold is the one val's recordings give, found again here from evaluate.py's val predictions
    evaluate(str(model), data, "val", threads=1, log=lambda *a: None, progress=False)
    with open(str(model / "predictions.csv"), newline="") as handle:
        val = recording_means(model, list(csv.DictReader(handle)))
    threshold, val_macc = M.balanced_threshold([v[0] for v in val], [v[1] for v in val])
    # (predictions.csv keeps 10 digits)
    assert point["threshold_p_abnormal"] == pytest.approx(threshold, abs=1e-8) and point["val_macc"] == val_macc
    assert point["val_recordings"] == 8

    # the test figures are that threshold applied to the test recordings, counted by hand
    evaluate(str(model), data, "test", threads=1, log=lambda *a: None, progress=False)
    with open(str(model / "predictions.csv"), newline="") as handle:
        test = recording_means(model, list(csv.DictReader(handle)))
    tp = sum(pos and p >= threshold for pos, p in test)
    tn = sum((not pos) and p < threshold for pos, p in test)
    assert (point["tp"], point["tn"], point["tp"] + point["fn"], point["tn"] + point["fp"]) == (tp, tn, 4, 4)
    assert point["macc"] == (tp / 4.0 + tn / 4.0) / 2


def test_figures_added_later_are_filled_in_from_what_a_finished_fold_keeps(tmp_path):
    bench = load_bench()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "metrics.json").write_text(
        '{"window": {"roc_auc": 0.81}, "recording": {"roc_auc": 0.87}}')
    (tmp_path / "model" / "model.json").write_text(
        '{"training": {"device": "cpu", "amp": "bfloat16", "best_epoch": 17, "train_seconds": 1101.2}}')
    done = {"test": {"window": {"macc": 0.7}, "recording": {"macc": 0.75}, "val_operating_point": {"macc": 0.76}}}
    assert bench.add_later_figures("physionet-cv5", done, str(tmp_path))
    assert done["test"]["window"]["auc"] == 0.81 and done["test"]["recording"]["auc"] == 0.87
    assert done["test"]["val_operating_point"] == {"macc": 0.76}            # present already: left alone
    assert done["training"] == {"device": "cpu", "precision": "bfloat16", "best_epoch": 17, "seconds": 1101.2}
    assert not bench.add_later_figures("physionet-cv5", done, str(tmp_path))  # nothing left to add
    # a Yaseen fold gets only the training record; a model.json of a float32 run (amp false) says float32, and
    # one that names no device leaves it unknown (None), not guessed
    (tmp_path / "model" / "model.json").write_text('{"training": {"amp": false, "best_epoch": 29}}')
    yaseen = {"test": {"window": {}, "recording": {}}}
    assert bench.add_later_figures("yaseen-cv5", yaseen, str(tmp_path))
    assert yaseen == {"test": {"window": {}, "recording": {}},
                      "training": {"device": None, "precision": "float32", "best_epoch": 29, "seconds": None}}

"""bench/baseline.py: the MFCC + SVM baseline trains on a fold's train + val recordings only, scores its test
recordings one answer per recording, and separates classes that differ in what MFCCs see."""
import importlib.util
import json
import zlib

import numpy as np
import pytest

from stetho import preset, synth, write_wav
from stetho.errors import StethoError
from test_service_support import REPO


def load_baseline():
    spec = importlib.util.spec_from_file_location("bench_baseline", str(REPO / "bench" / "baseline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fold(tmp_path, per_split=(("train", 8), ("val", 2), ("test", 4)), missing=None):
    """A prepare.json (the fields baseline.py reads) over real WAV files: murmur = abnormal, normal = normal."""
    contract = preset("heart", size=32)
    images = []
    for kind, label in (("murmur", "abnormal"), ("normal", "normal")):
        for split, n in per_split:
            for i in range(n):
                name = "%s_%s%d" % (label, split, i)
                path = tmp_path / ("%s.wav" % name)
                if name != missing:
                    audio = synth.heart_sound(kind, bpm=58 + 5 * i, duration_s=6.0, rate=2000, seed=zlib.crc32(name.encode()) % 1000)
                    write_wav(str(path), audio, 2000)
                for window in range(2):  # two windows of the recording: the baseline must count it once
                    images.append({"path": "%s/%s/%s__%04d.png" % (split, label, name, window), "split": split,
                                   "label": label, "recording": name, "site": None, "source": str(path)})
    prepared = tmp_path / "prepare.json"
    prepared.write_text(json.dumps({"contract": contract.to_dict(), "classes": ["abnormal", "normal"],
                                    "images": images}))
    return str(prepared)


def test_mfcc_statistics_are_80_finite_numbers_that_tell_a_murmur_from_a_normal_heart():
    baseline = load_baseline()
    murmur = synth.heart_sound("murmur", bpm=70, duration_s=5.0, rate=2000, seed=1)
    normal = synth.heart_sound("normal", bpm=70, duration_s=5.0, rate=2000, seed=1)
    a, b = (baseline.mfcc_statistics(x, 2000, 800.0) for x in (murmur, normal))
    assert a.shape == b.shape == (80,) and np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert not np.allclose(a, b, rtol=0.05)


def test_a_fold_trains_on_train_and_val_and_scores_each_test_recording_once(tmp_path, monkeypatch):
    baseline = load_baseline()
    fitted = {}
    real_fit = baseline.fit_svm

    def spying_fit(features, labels, seed):
        fitted["n"], fitted["labels"] = len(features), list(labels)
        return real_fit(features, labels, seed)

    monkeypatch.setattr(baseline, "fit_svm", spying_fit)
    result = baseline.run_fold(write_fold(tmp_path), {}, seed=0)
    assert fitted["n"] == 2 * (8 + 2)  # train + val recordings, one row each, never a test recording
    assert sorted(fitted["labels"]) == ["abnormal"] * 10 + ["normal"] * 10
    assert result["n"] == 8 and result["train_recordings"] == 20
    assert result["tp"] + result["fn"] == 4 and result["tn"] + result["fp"] == 4
    assert result["macc"] == pytest.approx((result["se"] + result["sp"]) / 2)
    assert result["macc"] >= 0.75  # synthetic murmurs are easy: a baseline that cannot see them is broken
    assert set(result["chosen"]) == {"C", "gamma"}
    # the wrong recordings are named, test recordings only, each with what it was called
    assert len(result["wrong"]) == result["fn"] + result["fp"]
    assert all("_test" in w and w.split("→")[1] != w.split("_")[0] for w in result["wrong"])


def test_score_counts_abnormal_as_positive():
    baseline = load_baseline()
    true = ["abnormal", "abnormal", "abnormal", "normal", "normal"]
    predicted = ["abnormal", "normal", "abnormal", "normal", "abnormal"]
    result = baseline.score(true, predicted, positive="abnormal")
    assert (result["tp"], result["fn"], result["tn"], result["fp"]) == (2, 1, 1, 1)
    assert result["se"] == pytest.approx(2 / 3) and result["sp"] == pytest.approx(1 / 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert "se" not in baseline.score(true, predicted)


def test_a_missing_recording_is_named(tmp_path):
    baseline = load_baseline()
    prepared = write_fold(tmp_path, per_split=(("train", 2), ("test", 1)), missing="normal_train1")
    with pytest.raises(StethoError, match="normal_train1.wav"):
        baseline.run_fold(prepared, {}, seed=0)


def test_the_results_table_shows_the_measured_baseline_beside_the_quoted_one(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_accuracy", str(REPO / "bench" / "accuracy.py"))
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"protocols": {
        "physionet-cv5": {"summary": {"macc": {"mean": 0.7534, "std": 0.0331}, "accuracy": {"mean": 0.76, "std": 0.03}}},
        "yaseen-cv5": {"summary": {"accuracy": {"mean": 0.984, "std": 0.0119}}}}}))
    assert accuracy.baseline_cell("physionet-cv5", str(path)).startswith("MAcc 0.753 ± 0.033 measured")
    assert accuracy.baseline_cell("physionet-cv5", str(path)).endswith("; MAcc ≈ 0.79 quoted")
    assert accuracy.baseline_cell("yaseen-cv5", str(path)).startswith("98.40 ± 1.19 % measured")
    assert accuracy.baseline_cell("physionet-loso", str(path)) == "–"          # not in the file: nothing measured
    assert accuracy.baseline_cell("yaseen-cv5", str(tmp_path / "absent.json")) == "99.5 %"


def test_scoring_one_protocol_keeps_the_others_in_the_results_file(tmp_path):
    baseline = load_baseline()
    work = tmp_path / "work" / "yaseen-cv5" / "fold-0" / "data"
    work.mkdir(parents=True)
    write_fold(work, per_split=(("train", 5), ("test", 2)))
    out = tmp_path / "baseline.json"
    physionet = {"summary": {"macc": {"mean": 0.7534, "std": 0.0331}}, "pooled": {}, "folds": []}
    out.write_text(json.dumps({"method": "before", "protocols": {"physionet-cv5": physionet,
                                                                  "yaseen-cv5": {"summary": "stale"}}}))
    assert baseline.main(["--protocol", "yaseen-cv5", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    protocols = json.loads(out.read_text())["protocols"]
    assert protocols["physionet-cv5"] == physionet                      # kept as it was
    assert protocols["yaseen-cv5"]["summary"]["accuracy"]["n"] == 1     # replaced by this run's

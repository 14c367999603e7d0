"""bench/ensemble.py: recording answers of finished runs, their mean, and runs that cannot be averaged."""
import json
import os
import subprocess
import sys

from test_service_support import REPO


def write_fold(work, fold, rows, protocol="physionet-cv5"):
    """rows: [(recording, label, P(abnormal))] → an evaluate.py-style predictions.csv in work/protocol/fold/model."""
    model = work / protocol / fold / "model"
    model.mkdir(parents=True)
    lines = ["path,recording,label,prediction,p_abnormal,p_normal"]
    for i, (recording, label, p) in enumerate(rows):
        lines.append("test/%s/%s__%04d.png,%s,%s,%s,%r,%r" % (label, recording, i, recording, label,
                                                            "abnormal" if p >= 0.5 else "normal", p, 1 - p))
    (model / "predictions.csv").write_text("\n".join(lines) + "\n")


def ensemble(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "ensemble.py")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd=str(REPO))


def test_runs_are_averaged_per_recording_after_each_averages_its_windows(tmp_path):
    # run a: windows; recording A (abnormal) 0.2, 0.6 → 0.4 (missed); B (abnormal) 0.9; C (normal) 0.3; D (normal) 0.7
    write_fold(tmp_path / "a", "fold-0", [("A", "abnormal", 0.2), ("A", "abnormal", 0.6), ("B", "abnormal", 0.9),
                                          ("C", "normal", 0.3), ("D", "normal", 0.7)])
    # run b cut the recordings differently (three pieces of A): A 0.8, B 0.7, C 0.45, D 0.1
    write_fold(tmp_path / "b", "fold-0", [("A", "abnormal", 0.7), ("A", "abnormal", 0.8), ("A", "abnormal", 0.9),
                                          ("B", "abnormal", 0.7), ("C", "normal", 0.45), ("D", "normal", 0.1)])
    write_fold(tmp_path / "b", "fold-1", [("A", "abnormal", 0.7)])  # only in one run: not counted
    out = tmp_path / "ens.json"
    run = ensemble(tmp_path / "a", tmp_path / "b", "--out", out)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert list(report["folds"]) == ["fold-0"]
    a, b, both = (report["folds"]["fold-0"][k] for k in (str(tmp_path / "a"), str(tmp_path / "b"), "ensemble"))
    assert (a["se"], a["sp"], a["macc"]) == (0.5, 0.5, 0.5)  # A missed, D false alarm
    assert (b["se"], b["sp"], b["macc"]) == (1.0, 1.0, 1.0)
    # mean of the answers: A 0.6, B 0.8, C 0.375, D 0.4 → all right; AUC 1
    assert (both["se"], both["sp"], both["auc"]) == (1.0, 1.0, 1.0)
    assert a["auc"] == 0.75  # pairs (A,C) right, (A,D) wrong, (B,C) (B,D) right
    assert "ensemble (mean of the runs)" in run.stdout


def test_runs_of_other_splits_are_refused_by_name(tmp_path):
    write_fold(tmp_path / "a", "fold-0", [("A", "abnormal", 0.9), ("C", "normal", 0.1)])
    write_fold(tmp_path / "b", "fold-0", [("A", "abnormal", 0.9), ("E", "normal", 0.1)])
    run = ensemble(tmp_path / "a", tmp_path / "b", "--out", tmp_path / "x.json")
    assert run.returncode == 2 and "another split" in run.stderr and str(tmp_path / "b") in run.stderr
    assert not os.path.exists(str(tmp_path / "x.json"))
    run = ensemble(tmp_path / "a", tmp_path / "b", "--folds", "fold-3", "--out", tmp_path / "x.json")
    assert run.returncode == 2 and "fold-3" in run.stderr


def write_multiclass_fold(work, fold, classes, rows):
    """rows: [(recording, label, [p per class])] → a predictions.csv in work/yaseen-cv5/fold/model."""
    model = work / "yaseen-cv5" / fold / "model"
    model.mkdir(parents=True)
    lines = ["path,recording,label,prediction," + ",".join("p_" + c for c in classes)]
    for i, (recording, label, probs) in enumerate(rows):
        called = classes[max(range(len(classes)), key=lambda k: probs[k])]
        lines.append("test/%s/%s__%04d.png,%s,%s,%s,%s" % (label, recording, i, recording, label, called,
                                                         ",".join(repr(p) for p in probs)))
    (model / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_multiclass_runs_report_accuracy_pooled_counts_and_the_wrong_recordings(tmp_path):
    classes = ["AS", "MR", "N"]
    # run a calls MR_1 AS, run b calls AS_1 MR; averaged, both are right (AS_1: AS 0.6, MR 0.3; MR_1: AS 0.325,
    # MR 0.6); N_2 is called MR by both, so by their mean too
    write_multiclass_fold(tmp_path / "a", "fold-0", classes, [("AS_1", "AS", [0.8, 0.1, 0.1]),
                                                              ("MR_1", "MR", [0.6, 0.3, 0.1]),
                                                              ("N_1", "N", [0.1, 0.1, 0.8])])
    write_multiclass_fold(tmp_path / "b", "fold-0", classes, [("AS_1", "AS", [0.4, 0.5, 0.1]),
                                                              ("MR_1", "MR", [0.05, 0.9, 0.05]),
                                                              ("N_1", "N", [0.2, 0.1, 0.7])])
    write_multiclass_fold(tmp_path / "a", "fold-1", classes, [("N_2", "N", [0.1, 0.7, 0.2])])
    write_multiclass_fold(tmp_path / "b", "fold-1", classes, [("N_2", "N", [0.1, 0.6, 0.3])])
    out = tmp_path / "ens.json"
    run = ensemble(tmp_path / "a", tmp_path / "b", "--protocol", "yaseen-cv5", "--out", out)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    a, b, both = (report["summary"][k] for k in (str(tmp_path / "a"), str(tmp_path / "b"), "ensemble"))
    assert (a["correct"], b["correct"], both["correct"], both["n"]) == (2, 2, 3, 4)
    assert a["wrong"] == ["MR_1→AS", "N_2→MR"] and both["wrong"] == ["N_2→MR"]
    assert report["folds"]["fold-0"]["ensemble"]["accuracy"] == 1.0
    assert both["accuracy"]["mean"] == 0.5 and "N_2→MR" in run.stdout and "3/4" in run.stdout

"""bench/aggregation.py: reductions of a recording's windows, thresholds from val only, counts from test."""
import importlib.util

import numpy as np
import pytest

from test_service_support import REPO


def load_aggregation():
    spec = importlib.util.spec_from_file_location("bench_aggregation", str(REPO / "bench" / "aggregation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


A = load_aggregation()


def grouped(rows):
    """rows: [(recording, label, [P(abnormal) of its windows])] → what windows_by_recording returns."""
    recordings, labels, p = [], [], []
    for recording, label, windows in rows:
        for value in windows:
            recordings.append(recording)
            labels.append(label)
            p.append(value)
    return A.windows_by_recording(recordings, labels, p)


def test_windows_stay_with_their_recording_in_first_seen_order():
    g = A.windows_by_recording(["b", "a", "b", "a", "c"], ["normal", "abnormal", "normal", "abnormal", "normal"],
                               [0.1, 0.9, 0.3, 0.7, 0.5])
    assert list(g) == ["b", "a", "c"]
    assert g["b"][0] == "normal" and g["b"][1].tolist() == [0.1, 0.3]
    assert g["a"][1].tolist() == [0.9, 0.7] and g["c"][1].tolist() == [0.5]


def test_reductions_on_known_windows():
    p = np.array([0.1, 0.2, 0.9, 0.4, 0.8])
    assert A.REDUCTIONS["mean"](p) == pytest.approx(0.48)
    assert A.REDUCTIONS["max"](p) == 0.9
    assert A.REDUCTIONS["top3"](p) == pytest.approx((0.9 + 0.8 + 0.4) / 3)
    assert A.REDUCTIONS["top3"](np.array([0.2, 0.6])) == pytest.approx(0.4)  # fewer than three windows: all of them
    assert A.REDUCTIONS["q90"](p) == pytest.approx(np.quantile(p, 0.9))
    assert A.REDUCTIONS["logit"](np.array([0.5, 0.5])) == pytest.approx(0.0)


def test_the_threshold_comes_from_val_and_the_counts_from_test():
    # Abnormal recordings: one loud window among quiet ones. The mean cannot separate them from normal
    # recordings whose windows are all middling; the max can, at a threshold val puts between 0.6 and 0.9.
    val = grouped([("v1", "abnormal", [0.2, 0.2, 0.95]), ("v2", "abnormal", [0.3, 0.9]),
                   ("v3", "normal", [0.45, 0.5, 0.5]), ("v4", "normal", [0.6, 0.4])])
    test = grouped([("t1", "abnormal", [0.1, 0.1, 0.1, 0.99]), ("t2", "normal", [0.5, 0.55]),
                    ("t3", "normal", [0.7, 0.65]), ("t4", "abnormal", [0.2, 0.85])])
    figures = A.compare_fold(val, test)
    assert list(figures) == list(A.REDUCTIONS)
    top = figures["max"]
    assert 0.6 < top["threshold"] <= 0.9 and top["val_macc"] == 1.0
    # test at that threshold: t1 (0.99) and t4 (0.85) called abnormal, t3 (0.7) depends on where val put it
    assert top["tp"] == 2 and top["fn"] == 0 and top["tn"] + top["fp"] == 2
    expected_fp = int(0.7 >= top["threshold"])
    assert top["fp"] == expected_fp and top["macc"] == pytest.approx((1.0 + (2 - expected_fp) / 2.0) / 2.0)
    assert top["test_auc"] == pytest.approx(1.0)
    assert figures["mean"]["val_auc"] < 1.0  # the mean mixes the loud window with the quiet ones
    for name, f in figures.items():
        assert f["tp"] + f["fn"] == 2 and f["tn"] + f["fp"] == 2, name

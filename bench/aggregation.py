#!/usr/bin/env python3
"""How a recording's windows become one answer: the mean (the project's rule) against other reductions.

    python bench/aggregation.py                   # PhysioNet 5-fold and leave-one-site-out, finished folds
    python bench/aggregation.py --protocol physionet-cv5 --work runs/accuracy

Reads the folds ``bench/accuracy.py`` finished (no training): each fold's exported ONNX scores its val windows
(evaluate.py's predict_onnx, the device's path) and evaluate.py's ``predictions.csv`` holds its test windows.
Each reduction turns a recording's window P(abnormal) into one score; the threshold on that score is the one
with the best MAcc on the fold's **val** recordings (``metrics.balanced_threshold``), and test Se/Sp/MAcc are
counted at it. Val chooses; test is only reported. AUC (threshold-free) is given for both.

Reductions of the windows' P(abnormal): ``mean``; ``max``; ``top3`` (mean of the three highest: a murmur heard
in part of a recording); ``q75`` and ``q90`` (quantiles); ``logit`` (mean log-odds).  Writes
``bench/results/aggregation.json`` and prints a table.  Binary (abnormal/normal) protocols only.
"""
import argparse
import collections
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bench.accuracy import mean_std, rates_of_calls, read_predictions, val_predictions, write_report  # noqa: E402

POSITIVE = "abnormal"
EPS = 1e-6


def _logit_mean(p):
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(np.mean(np.log(p / (1.0 - p))))


REDUCTIONS = collections.OrderedDict([
    ("mean", lambda p: float(np.mean(p))),
    ("max", lambda p: float(np.max(p))),
    ("top3", lambda p: float(np.mean(np.sort(p)[-3:]))),
    ("q75", lambda p: float(np.quantile(p, 0.75))),
    ("q90", lambda p: float(np.quantile(p, 0.90))),
    ("logit", _logit_mean),
])


def windows_by_recording(recordings, labels, p_positive):
    """{recording: (label, P(positive) of its windows as an array)} in first-seen order."""
    grouped = collections.OrderedDict()
    for recording, label, p in zip(recordings, labels, p_positive):
        grouped.setdefault(recording, (label, []))[1].append(float(p))
    return collections.OrderedDict((r, (label, np.array(ps))) for r, (label, ps) in grouped.items())


def scores(grouped, reduce):
    """(is_positive booleans, one score per recording) under ``reduce``."""
    truth = np.array([label == POSITIVE for label, _ in grouped.values()])
    return truth, np.array([reduce(p) for _, p in grouped.values()])


def compare_fold(val, test):
    """{reduction: figures} for one fold: threshold chosen on ``val``, counted on ``test`` (both grouped)."""
    from sklearn.metrics import roc_auc_score
    from train_host import metrics as M
    out = collections.OrderedDict()
    for name, reduce in REDUCTIONS.items():
        val_truth, val_score = scores(val, reduce)
        threshold, val_macc = M.balanced_threshold(val_truth, val_score)
        truth, score = scores(test, reduce)
        figures = rates_of_calls(truth, score >= threshold)
        figures.update(threshold=threshold, val_macc=val_macc, val_auc=float(roc_auc_score(val_truth, val_score)),
                       test_auc=float(roc_auc_score(truth, score)))
        out[name] = figures
    return out


def fold_windows(fold_dir, threads):
    """(val, test) windows grouped by recording for one finished fold of bench/accuracy.py."""
    model_dir, data_dir = os.path.join(fold_dir, "model"), os.path.join(fold_dir, "data")
    classes, entries, val_probs = val_predictions(data_dir, model_dir, threads)
    column = classes.index(POSITIVE)
    val = windows_by_recording([e["recording"] for e in entries], [e["label"] for e in entries], val_probs[:, column])
    classes, recordings, labels, probs = read_predictions(model_dir)
    test = windows_by_recording(recordings, labels, probs[:, classes.index(POSITIVE)])
    return val, test


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", action="append", choices=("physionet-cv5", "physionet-loso"),
                        help="protocol(s) (default: both)")
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "accuracy"), help="bench/accuracy.py's work folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "aggregation.json"))
    args = parser.parse_args(argv)
    report = {"command": "python bench/aggregation.py", "reductions": list(REDUCTIONS), "protocols": {}}
    for protocol in args.protocol or ("physionet-cv5", "physionet-loso"):
        base = os.path.join(args.work, protocol)
        folds = sorted(n for n in os.listdir(base) if os.path.isfile(os.path.join(base, n, "model", "predictions.csv"))) \
            if os.path.isdir(base) else []
        if not folds:
            print("%s: no finished folds under %s (run bench/accuracy.py --protocol %s first)" % (protocol, base,
                                                                                                      protocol))
            continue
        per_fold = collections.OrderedDict((name, compare_fold(*fold_windows(os.path.join(base, name), args.threads)))
                                           for name in folds)
        summary = collections.OrderedDict(
            (name, dict((key, mean_std([fold[name][key] for fold in per_fold.values()]))
                        for key in ("se", "sp", "macc", "test_auc", "val_macc", "val_auc")))
            for name in REDUCTIONS)
        report["protocols"][protocol] = {"folds": per_fold, "summary": summary}
        print("\n%s, %d folds: threshold chosen on val, mean over folds" % (protocol, len(folds)))
        print("  %-6s %9s %9s %9s %9s %9s" % ("", "val MAcc", "val AUC", "test Se", "test Sp", "test MAcc") + "  test AUC")
        for name, figures in summary.items():
            print("  %-6s %9.3f %9.3f %9.3f %9.3f %9.3f  %8.3f" % (
                name, figures["val_macc"]["mean"], figures["val_auc"]["mean"], figures["se"]["mean"],
                figures["sp"]["mean"], figures["macc"]["mean"], figures["test_auc"]["mean"]))
    print("written: %s" % write_report(args.out, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What averaging finished runs would give: each run's recording-level answers, and their mean.

    python bench/ensemble.py runs/accuracy runs/pilots/pn-peaks                    # two views of PhysioNet
    python bench/ensemble.py runs/accuracy runs/pilots/pn-seed1 --folds fold-0,fold-1
    python bench/ensemble.py runs/ya-seed0 runs/ya-seed1 runs/ya-seed2 --protocol yaseen-cv5   # three seeds

Reads, for every fold that all the given ``bench/accuracy.py`` work folders finished (no training, no
inference), evaluate.py's ``predictions.csv`` of the test split: each recording's answer is the mean of its
windows' probabilities (the project's rule), and the ensemble's is the mean of the runs' recording answers, so
runs that cut recordings differently (windows, peak-to-peak cycles) can be averaged. The decision is the
argmax, as evaluate.py's; nothing is tuned, on val or on test. Reports, per fold and as mean ± std for every run
and for the ensemble, Se / Sp / MAcc (positive = abnormal) and AUC where the classes are abnormal/normal
(PhysioNet), otherwise accuracy and the count of right recordings (Yaseen; pooled over the folds as well), and
writes ``bench/results/ensemble.json``.

This measures what a second network would buy; the appliance runs one model (one contract), and two would cost
twice the training budget and twice the Nano's time per window.
"""
import argparse
import collections
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bench.accuracy import mean_std, predictions_by_recording, rates_of_calls, write_report  # noqa: E402

POSITIVE = "abnormal"


class EnsembleError(ValueError):
    """Runs that cannot be averaged (another split, other classes): names the folders."""


def recording_answers(model_dir):
    """(classes, recordings, labels, mean probabilities (n, N)) of a finished fold's test split."""
    classes, by_recording = predictions_by_recording(model_dir)
    recordings = sorted(by_recording)
    labels = [by_recording[r][0] for r in recordings]
    return classes, recordings, labels, np.array([by_recording[r][1] for r in recordings])


def figures(classes, recordings, labels, probs):
    """Se / Sp / MAcc at the argmax (positive = abnormal) and AUC of P(abnormal) where the classes hold
    ``abnormal``; otherwise accuracy at the argmax, right and all recordings, and the wrong ones as
    ``recording→called``."""
    if POSITIVE not in classes:
        called = [classes[i] for i in probs.argmax(axis=1)]
        wrong = ["%s→%s" % (r, c) for r, label, c in zip(recordings, labels, called) if c != label]
        return {"accuracy": 1.0 - float(len(wrong)) / len(labels), "correct": len(labels) - len(wrong),
                "n": len(labels), "wrong": wrong}
    from sklearn.metrics import roc_auc_score
    column = classes.index(POSITIVE)
    truth = np.array([label == POSITIVE for label in labels])
    out = rates_of_calls(truth, probs.argmax(axis=1) == column)
    out["auc"] = float(roc_auc_score(truth, probs[:, column])) if 0 < truth.sum() < truth.size else None
    return out


def ensemble_fold(model_dirs, names):
    """{name: figures, ..., 'ensemble': figures} for one fold (``model_dirs``, one per run, named ``names``):
    the runs' recording answers and their mean."""
    answers = [recording_answers(d) for d in model_dirs]
    classes, recordings, labels, _ = answers[0]
    for model_dir, (other_classes, other_recordings, other_labels, _) in zip(model_dirs[1:], answers[1:]):
        if other_classes != classes:
            raise EnsembleError("%s has classes %s, %s has %s" % (model_dirs[0], classes, model_dir, other_classes))
        if (other_recordings, other_labels) != (recordings, labels):
            raise EnsembleError("%s and %s tested other recordings (another split?): %d against %d"
                                % (model_dirs[0], model_dir, len(recordings), len(other_recordings)))
    out = collections.OrderedDict((n, figures(classes, recordings, labels, a[3])) for n, a in zip(names, answers))
    out["ensemble"] = figures(classes, recordings, labels, np.mean([a[3] for a in answers], axis=0))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", nargs="+", help="bench/accuracy.py --work folders (two or more)")
    parser.add_argument("--protocol", default="physionet-cv5",
                        choices=("physionet-cv5", "physionet-loso", "yaseen-cv5"))
    parser.add_argument("--folds", help="comma-separated fold names (default: every fold all runs finished)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "ensemble.json"))
    args = parser.parse_args(argv)
    if len(args.work) < 2:
        parser.error("give two or more work folders")
    bases = [os.path.join(w, args.protocol) for w in args.work]

    def finished(base):
        names = os.listdir(base) if os.path.isdir(base) else []
        return set(n for n in names if os.path.isfile(os.path.join(base, n, "model", "predictions.csv")))
    folds = sorted(set.intersection(*[finished(b) for b in bases]))
    if args.folds:
        wanted = args.folds.split(",")
        missing = [f for f in wanted if f not in folds]
        if missing:
            parser.error("fold(s) %s not finished in every one of %s" % (",".join(missing), " ".join(bases)))
        folds = wanted
    if not folds:
        parser.error("no fold finished in every one of %s" % " ".join(bases))
    try:
        per_fold = collections.OrderedDict(
            (fold, ensemble_fold([os.path.join(b, fold, "model") for b in bases], args.work)) for fold in folds)
    except EnsembleError as error:
        print("ensemble: %s" % error, file=sys.stderr)
        return 2
    runs = list(per_fold[folds[0]])
    binary = "macc" in per_fold[folds[0]]["ensemble"]
    keys = ("se", "sp", "macc", "auc") if binary else ("accuracy",)
    summary = collections.OrderedDict(
        (run, dict((key, mean_std([per_fold[f][run][key] for f in folds])) for key in keys)) for run in runs)
    if not binary:  # pooled over the folds: every recording is tested once
        for run in runs:
            summary[run].update(correct=sum(per_fold[f][run]["correct"] for f in folds),
                                n=sum(per_fold[f][run]["n"] for f in folds),
                                wrong=[w for f in folds for w in per_fold[f][run]["wrong"]])
    print("%s, %d fold(s) (%s): recording level, argmax" % (args.protocol, len(folds), ",".join(folds)))
    if binary:
        print("  %-44s %13s %13s %15s %15s" % ("run", "Se", "Sp", "MAcc", "AUC"))
    else:
        print("  %-44s %15s %12s" % ("run", "accuracy", "pooled"))
    for run in runs:
        s = summary[run]
        name = run if run != "ensemble" else "ensemble (mean of the runs)"
        if binary:
            print("  %-44s %6.3f±%.3f %6.3f±%.3f %8.3f±%.3f %8.3f±%.3f" % (
                name, s["se"]["mean"], s["se"]["std"], s["sp"]["mean"], s["sp"]["std"], s["macc"]["mean"],
                s["macc"]["std"], s["auc"]["mean"], s["auc"]["std"]))
        else:
            print("  %-44s %8.4f±%.4f %7d/%d" % (name, s["accuracy"]["mean"], s["accuracy"]["std"], s["correct"],
                                                 s["n"]))
    if not binary:
        print("  wrong in the ensemble: %s" % (", ".join(summary["ensemble"]["wrong"]) or "none"))
    report = {"command": "python bench/ensemble.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "protocol": args.protocol, "work": args.work, "folds": per_fold, "summary": summary}
    print("written: %s" % write_report(args.out, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

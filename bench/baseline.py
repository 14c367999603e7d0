#!/usr/bin/env python3
"""The classical baseline, measured on the very splits the network was measured on: MFCC statistics + SVM.

    python bench/baseline.py                      # every protocol bench/accuracy.py has run (its work folder)
    python bench/baseline.py --protocol physionet-cv5 --work runs/accuracy

For each fold/site that ``bench/accuracy.py`` prepared, this reads the fold's ``prepare.json`` (which
recording went to train, val and test: the same recordings the network saw), loads each recording whole
with the project's audio I/O, resamples it to the contract's rate and conditions it exactly as the
contract does (DC removal, band-pass, peak normalisation), then:

- features: 20 MFCCs (librosa; 128 ms frames, 32 ms hop, 40 mel bands up to the contract's low-pass) and
  their deltas, summarised over the whole recording by mean and standard deviation (80 numbers).  Frame
  lengths of 25, 64 and 128 ms were compared by the inner cross-validation score only (docs/results.md);
- classifier: scikit-learn ``StandardScaler`` → ``SVC(kernel='rbf', class_weight='balanced')``, C and gamma
  chosen by 5-fold cross-validation on the training recordings only (train + val: the SVM needs no early
  stopping), scored by balanced accuracy (= MAcc for two classes);
- scores the fold's test recordings: accuracy, and Se / Sp / MAcc for PhysioNet (abnormal = positive), and
  names the recordings it got wrong (``recording→called``), to set beside the network's.

One answer per recording, like the network's recording-level figures (which average its windows).  Writes
``bench/results/baseline.json`` and prints a one-screen table.  Workstation only (librosa, scikit-learn).
"""
import argparse
import json
import os
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bench.accuracy import binary_rates, mean_std, merge_saved_protocols, rates_of_calls, write_report  # noqa: E402
from stetho import load_audio, resample  # noqa: E402
from stetho.conditioning import condition  # noqa: E402
from stetho.contract import Contract  # noqa: E402

PROTOCOLS = ("yaseen-cv5", "physionet-cv5", "physionet-loso", "physionet-to-yaseen")
CROSS_DATASET = ("physionet-to-yaseen",)  # trained on the fold's data/, tested on its test-data/
N_MFCC = 20
FRAME_S = 0.128  # MFCC frame and hop (s): 256 and 64 samples at the heart preset's 2 kHz
HOP_S = 0.032
C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
GAMMA_GRID = ("scale", 0.003, 0.01, 0.03)


def recordings_of(prepared):
    """{recording: (source path, label, split)} from a prepare.json's image list (one entry per recording)."""
    found = {}
    for image in prepared["images"]:
        found.setdefault(image["recording"], (image["source"], image["label"], image["split"]))
    return found


def conditioned_recording(path, contract):
    """A whole recording at the contract's rate, conditioned as the contract conditions every segment."""
    samples, rate = load_audio(path)
    samples = resample(samples, rate, contract.sample_rate)
    return condition(samples, contract.sample_rate, contract.conditioning)


def mfcc_statistics(samples, rate, fmax):
    """(80,) float64: mean and standard deviation over time of 20 MFCCs and of their deltas (FRAME_S, HOP_S).

    samples : float, mono at ``rate`` Hz; rate : Hz; fmax : top of the mel filter bank, Hz.
    """
    import librosa
    n_fft = int(round(FRAME_S * rate))
    hop = int(round(HOP_S * rate))
    with warnings.catch_warnings():  # at 2 kHz a few of the 40 mel filters fall between FFT bins: they stay 0
        warnings.simplefilter("ignore", UserWarning)
        mfcc = librosa.feature.mfcc(y=np.asarray(samples, dtype=np.float32), sr=rate, n_mfcc=N_MFCC, n_fft=n_fft,
                                    hop_length=hop, n_mels=40, fmin=0.0, fmax=fmax)
    delta = librosa.feature.delta(mfcc, width=min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2)))
    both = np.vstack([mfcc, delta])
    return np.concatenate([both.mean(axis=1), both.std(axis=1)]).astype(np.float64)


def fit_svm(features, labels, seed):
    """StandardScaler + RBF SVM (balanced class weights), C and gamma by 5-fold CV on these recordings only."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    pipeline = make_pipeline(StandardScaler(), SVC(kernel="rbf", class_weight="balanced"))
    grid = {"svc__C": list(C_GRID), "svc__gamma": list(GAMMA_GRID)}
    search = GridSearchCV(pipeline, grid, scoring="balanced_accuracy", n_jobs=1,
                          cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    search.fit(features, labels)
    return search


def score(true, predicted, positive=None):
    """accuracy, and Se / Sp / MAcc when ``positive`` (the abnormal class) is given."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    result = {"n": int(true.size), "accuracy": float(np.mean(true == predicted))}
    if positive is not None:
        result.update(rates_of_calls(true == positive, predicted == positive))
    return result


def features_of(prepared, cache):
    """(recording names, MFCC statistics, labels, splits, groups) of a prepare.json's recordings."""
    contract = Contract.from_dict(prepared["contract"])
    fmax = contract.conditioning.lowpass_hz or contract.sample_rate / 2.0
    group_of = dict((i["recording"], i.get("group") or i["recording"]) for i in prepared["images"])
    names, features, labels, splits = [], [], [], []
    for recording, (source, label, split) in sorted(recordings_of(prepared).items()):
        key = (source, contract.sample_rate, fmax, json.dumps(prepared["contract"]["conditioning"], sort_keys=True))
        if key not in cache:
            cache[key] = mfcc_statistics(conditioned_recording(source, contract), contract.sample_rate, fmax)
        names.append(recording)
        features.append(cache[key])
        labels.append(label)
        splits.append("test" if split == "test" else "train")
    return names, np.array(features), np.array(labels), np.array(splits), [group_of[n] for n in names]


def run_cross(train_json, test_json, cache, seed):
    """Train on every recording of ``train_json`` (another dataset), score ``test_json``'s recordings, by clip and by
    source recording (the group: clips that share audio; its clips' SVM decision values averaged)."""
    from sklearn.metrics import roc_auc_score
    with open(train_json) as handle:
        train = json.load(handle)
    with open(test_json) as handle:
        test = json.load(handle)
    _, train_x, train_y, _, _ = features_of(train, cache)
    names, test_x, test_y, _, groups = features_of(test, cache)
    search = fit_svm(train_x, train_y, seed)
    classes = list(search.best_estimator_.classes_)
    # decision_function > 0 means the second class of classes_ (sorted: abnormal, normal): negate for abnormal
    margin = search.decision_function(test_x) * (-1.0 if classes[1] == "normal" else 1.0)
    result = {"train_recordings": int(len(train_y)), "chosen": {k.replace("svc__", ""): v
                                                                  for k, v in search.best_params_.items()},
              "cv_balanced_accuracy": float(search.best_score_)}
    by_group = {}
    for group, label, value in zip(groups, test_y, margin):
        entry = by_group.setdefault(group, [label, []])
        entry[1].append(value)
    for level, truth, values in (("clip", test_y == "abnormal", margin),
                                 ("source_recording", np.array([v[0] == "abnormal" for v in by_group.values()]),
                                  np.array([np.mean(v[1]) for v in by_group.values()]))):
        figures = rates_of_calls(truth, values > 0)
        figures["auc"] = float(roc_auc_score(truth, values))
        figures["n"] = int(truth.size)
        result[level] = figures
    result.update((k, result["source_recording"][k]) for k in ("se", "sp", "macc", "auc", "n"))
    return result


def run_fold(prepare_json, cache, seed):
    """Train on the fold's train+val recordings, score its test recordings: a result dict."""
    with open(prepare_json) as handle:
        prepared = json.load(handle)
    names, features, labels, splits, _ = features_of(prepared, cache)
    train, test = splits == "train", splits == "test"
    search = fit_svm(features[train], labels[train], seed)
    predicted = search.predict(features[test])
    positive = "abnormal" if "abnormal" in prepared["classes"] else None
    result = score(labels[test], predicted, positive)
    result["wrong"] = ["%s→%s" % (name, called) for name, label, called in
                       zip(np.array(names)[test], labels[test], predicted) if called != label]
    result.update(train_recordings=int(train.sum()), chosen={k.replace("svc__", ""): v
                                                             for k, v in search.best_params_.items()},
                  cv_balanced_accuracy=float(search.best_score_))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS,
                        help="protocol(s) to score (default: every one with prepared folds in --work)")
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "accuracy"),
                        help="bench/accuracy.py's work folder (WORK/<protocol>/<fold>/data/prepare.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inner cross-validation")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "baseline.json"))
    args = parser.parse_args(argv)
    report = {"method": "MFCC statistics (20 MFCC + deltas, %d ms frames, %d ms hop, mean and std over the "
                        "recording) + RBF SVM, "
                        "C in %s, gamma in %s chosen by 5-fold CV on the training recordings"
                        % (1000 * FRAME_S, 1000 * HOP_S, list(C_GRID), list(GAMMA_GRID)),
              "command": "python bench/baseline.py", "protocols": {}}
    cache = {}
    for protocol in args.protocol or PROTOCOLS:
        base = os.path.join(args.work, protocol)
        folds = sorted(name for name in os.listdir(base)) if os.path.isdir(base) else []
        folds = [name for name in folds if os.path.isfile(os.path.join(base, name, "data", "prepare.json"))
                 and (protocol not in CROSS_DATASET
                      or os.path.isfile(os.path.join(base, name, "test-data", "prepare.json")))]
        if not folds:
            print("%s: no prepared folds under %s (run bench/accuracy.py --protocol %s first)" % (protocol, base,
                                                                                                     protocol))
            continue
        started = time.monotonic()
        results = []
        for name in folds:
            if protocol in CROSS_DATASET:
                result = run_cross(os.path.join(base, name, "data", "prepare.json"),
                                   os.path.join(base, name, "test-data", "prepare.json"), cache, args.seed)
            else:
                result = run_fold(os.path.join(base, name, "data", "prepare.json"), cache, args.seed)
            result["fold"] = name
            results.append(result)
            print("%s %s: %s" % (protocol, name, ", ".join("%s %.3f" % (k, result[k]) for k in
                                                           ("accuracy", "se", "sp", "macc") if k in result)))
        summary = dict((key, mean_std([r.get(key) for r in results]))
                       for key in ("accuracy", "se", "sp", "macc", "auc"))
        if protocol in CROSS_DATASET:
            pooled = {"source_recording": results[0]["source_recording"], "clip": results[0]["clip"]}
        elif "tp" in results[0]:
            pooled = binary_rates(dict((k, sum(r[k] for r in results)) for k in ("tp", "fn", "tn", "fp")))
        else:
            pooled = {"correct": int(round(sum(r["accuracy"] * r["n"] for r in results))),
                      "n": sum(r["n"] for r in results)}
        report["protocols"][protocol] = {"folds": results, "summary": dict((k, v) for k, v in summary.items() if v),
                                         "pooled": pooled, "seconds": round(time.monotonic() - started, 1)}
    scored = set(report["protocols"])
    report["protocols"] = merge_saved_protocols(args.out, report["protocols"])
    kept = sorted(name for name in report["protocols"] if name not in scored)
    write_report(args.out, report)
    print("\nMFCC + SVM baseline on the network's own splits (recording level):")
    for protocol, entry in report["protocols"].items():
        if protocol in kept:
            continue
        s = entry["summary"]
        figures = ["accuracy %.4f ± %.4f" % (s["accuracy"]["mean"], s["accuracy"]["std"])] if "accuracy" in s else []
        if "macc" in s:
            figures = ["Se %.3f" % s["se"]["mean"], "Sp %.3f" % s["sp"]["mean"],
                       "MAcc %.3f ± %.3f" % (s["macc"]["mean"], s["macc"]["std"])] + (
                ["AUC %.3f" % s["auc"]["mean"]] if s.get("auc") else [])
        print("  %-15s %d folds: %s (%.0f s)" % (protocol, len(entry["folds"]), ", ".join(figures), entry["seconds"]))
    print("written: %s%s" % (args.out, " (kept from before: %s)" % ", ".join(kept) if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

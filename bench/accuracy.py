#!/usr/bin/env python3
"""Accuracy on real recordings with honest splits, measured with the project's own commands only.

    python bench/accuracy.py --protocol yaseen-cv5        # Yaseen 5-class, stratified 5-fold by recording
    python bench/accuracy.py --protocol physionet-cv5 --jobs 2 --threads 1   # PhysioNet 2016 a–f (no e), 5-fold
    python bench/accuracy.py --protocol physionet-loso    # PhysioNet 2016, leave one site (set) out
    python bench/accuracy.py --protocol icbhi-official    # ICBHI sample, official split: counts only
    python bench/accuracy.py --protocol all
    python bench/accuracy.py --quick                      # smoke run: 2 folds, few clips, R=32, 1 epoch

Every fold/site is what a user types, run as a subprocess from the repository root:

    python train_host/prepare.py RAW DATA --preset heart --size R --window W --hop H --split kfold:K:I ...
    python train_host/train.py DATA --model-dir MODEL --no-pretrained --epochs E ... (trains, exports, tests)
    python train_host/evaluate.py DATA --model-dir MODEL --split test          (onnxruntime, = the device)

Leave-one-site-out: a CSV manifest (path,label,site,split) in the work folder marks the left-out set as test and
the other sets as train (prepare.py --adapter csv --split official carves val from the train recordings).

Resumable: each finished fold leaves WORK/<protocol>/fold-I/result.json with the settings it ran with; a
re-run skips folds whose result matches the current settings (``--force`` redoes them).  Per-step logs
go beside it (prepare.log, train.log, evaluate.log).  Results: bench/results/accuracy.json (or --out),
per protocol: settings, the exact commands, per-fold figures, mean ± sample std (ddof=1) over folds,
run times.  Recording level = mean of the window probabilities of a recording (evaluate.py).
Yaseen has no patient ids, and its 1 000 clips are overlapping cuts of 379 longer recordings: prepare.py joins
the clips that share audio, so its splits are by source recording (noted next to every figure).
"""
import argparse
import collections
import csv
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bench.train import cpu_name  # noqa: E402
from train_host import recipes  # noqa: E402
from train_host.recipes import PHYSIONET_TRAIN, RECIPES  # noqa: E402

DATA_DEFAULT = os.path.join(os.path.dirname(REPO), "shared", "data")
PHYSIONET_SITES = ("a", "b", "c", "d", "f")
NO_PATIENT_NOTE = ("Yaseen 2018 has no patient ids: folds are by source recording (prepare.py joins the clips "
                   "that share audio, overlapping cuts of one recording), so one patient's separate recordings "
                   "may still sit in both train and test")

VAL_FRACTION = 0.15   # share of the recordings a cross-dataset protocol keeps for val (the operating point)

# Per-protocol settings (command-line flags override them).  Why these values: docs/results.md.  The protocols that
# validate a recipe take its settings from train_host/recipes.py (one definition with `make model RECIPE=...`, which
# trains the deployable model the same way on all the data): yaseen-cv5, physionet-cv5 and icbhi-official.
PROTOCOLS = collections.OrderedDict([
    # Yaseen's clips are overlapping cuts of 379 recordings (prepare.py joins them), so val holds ~48 source
    # recordings, and the epoch they picked was noise: the last of the 30 scored 968/1000 against the val-chosen
    # epochs' 958, equal or better in every fold of the same training runs (docs/results.md): --select last.
    ("yaseen-cv5", dict(recipes.settings(RECIPES["yaseen2018"]), folds=5)),
    # PhysioNet from scratch underfits with train.py's default regularisation (fold 0, 8 epochs: train accuracy
    # 0.75, val MAcc 0.77): no SpecAugment masks and weight decay 0.01 at batch 32 (twice the steps) reach
    # val MAcc 0.79 by epoch 2 (pilot in docs/results.md).  With a class-balanced sampler the 5-fold run
    # (bench/results/pilots/accuracy-physionet-cv5-class-sampler.json) found abnormal recordings of sites b and f
    # nearly always called normal (Se 0.38 and 0.15): site a is 71 % abnormal, b 21 %, f 30 %, so the
    # site's sound predicted the class.  The site-balanced sampler evens the classes inside every site.
    # 8 epochs left the network under-trained: 20 lift the recording AUC from 0.82 to 0.87 in every fold
    # (MAcc 0.736 → 0.789), but in float32 take ~75 min even as two single-thread folds at a time
    # (--jobs 2 --threads 1), so 15 were the protocol.  train.py's bfloat16 autocast on a CPU with AMX trains
    # 1.3x faster at R=64, and 20 epochs then take 55 min (bench/results/pilots/accuracy-physionet-cv5-*-epochs.json).
    # The fifth fold then trained beside an idle core; on both cores (fold_rounds) it takes ~12 min instead of
    # ~18, and 23 epochs fit the hour: 58 min, MAcc 0.787 / AUC 0.874 against 0.781 / 0.870 at 20 (kept in
    # bench/results/pilots/accuracy-physionet-cv5-20-epochs-bfloat16.json); the epochs curve has flattened.
    # Peak-to-peak cycles instead of windows (prepare.py --segment peaks: every image one cardiac cycle from an
    # envelope peak to the next, so every image starts at the same phase and the time roll is off to keep it
    # there) give 3.5x the images and rank recordings better: 10 epochs, 53 min on an AMD EPYC with AVX-512
    # BF16, MAcc 0.811 / AUC 0.872 against the windows' 0.771 / 0.852 on the same machine
    # (bench/results/pilots/accuracy-physionet-cv5-peaks-10-epochs-amd-epyc.json).  The epoch chosen on ~130 val
    # recordings was noise (the windows' fold 1 picked epoch 5 of 23); the last epoch, the end of the cosine
    # schedule, scored 0.820 (bench/results/pilots/ensemble-peaks-10-chosen-vs-last-epoch.json): --select last.  The
    # protocol's own run reproduced 0.820 in 54 min; another split and seed (--seed 1) gave 0.792 in 56 min
    # (bench/results/pilots/accuracy-physionet-cv5-cycles-seed1.json).  Where bfloat16 is slower or absent: --epochs 7.
    # A cycle is fitted to the window by wrapping, so a median 0.85 s cycle filled a 3 s picture ~3.5 times; a 1.5 s
    # window (cycles up to 1.5 s, 40 bpm, whole) shows it twice as wide (23 ms a column instead of 47) at the same
    # cost: MAcc 0.820 / AUC 0.881 against 0.820 / 0.874, and on --seed 1 0.813 / 0.883 against 0.792 / 0.871, the
    # AUC at least as high in 9 folds of 10, 54 min
    # (bench/results/pilots/accuracy-physionet-cv5-cycles-{3s,1.5s-seed1}.json).
    ("physionet-cv5", dict(recipes.settings(RECIPES["physionet2016"]), folds=5)),
    # Leave-one-site-out trains as the 5-fold run did before bfloat16 (15 epochs: longer training fits the four
    # training clinics better, not the fifth; the 8-epoch run is kept in
    # bench/results/pilots/accuracy-physionet-loso-8-epochs.json).
    ("physionet-loso", dict(dataset="physionet2016", adapter="csv", preset="heart", folds=len(PHYSIONET_SITES),
                            size=64, epochs=15, window=3.0, hop=3.0, batch_size=32, lr=None, balance="site-sampler",
                            select_level="recording", patience=0, extra_prepare=[],
                            # another site's recordings: another stethoscope, room and noise floor
                            train_args=list(PHYSIONET_TRAIN) + ["--aug-noise-db", "40"])),
    ("icbhi-official", dict(recipes.settings(RECIPES["icbhi2017"]), folds=1)),
])
# recipe → protocol, as train_host/recipes.py names them; the protocol's settings are the recipe's
RECIPE_OF = dict((proto, name) for name, proto in recipes.PROTOCOL_OF.items())
# Another country, clinic and device: train on every PhysioNet recording (its 5-fold protocol's settings, val carved
# out for the operating point), test on Yaseen 2018 as normal (N) against abnormal (AS, MR, MS, MVP).  Yaseen's
# clips are overlapping cuts of longer recordings: prepare.py groups them, and the headline is by source recording
# (the mean of every window of the group's clips), with the clip-level figure beside it.
YASEEN_BINARY_MAP = "AS_New=abnormal,MR_New=abnormal,MS_New=abnormal,MVP_New=abnormal,N_New=normal"
PROTOCOLS["physionet-to-yaseen"] = dict(PROTOCOLS["physionet-cv5"], folds=1, test_dataset="yaseen2018",
                                        test_adapter="folder", test_class_map=YASEEN_BINARY_MAP)
CROSS_DATASET = ("physionet-to-yaseen",)
CROSS_SITE = ("physionet-loso", "physionet-to-yaseen")  # a test set from another clinic or device
QUICK = dict(folds=2, size=32, epochs=1, limit=6)


def log(message):
    print("accuracy: %s" % message, flush=True)


# ---- subsets and manifests (written into the work folder, never into the raw data) -----------------------------

def yaseen_subset(raw, dest, per_class):
    """A folder of symlinks to the first ``per_class`` clips of each Yaseen class (for --quick / --limit)."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    for cls in sorted(os.listdir(raw)):
        src = os.path.join(raw, cls)
        if not os.path.isdir(src):
            continue
        os.makedirs(os.path.join(dest, cls))
        for name in sorted(n for n in os.listdir(src) if n.lower().endswith(".wav"))[:per_class]:
            os.symlink(os.path.join(src, name), os.path.join(dest, cls, name))
    return dest


def physionet_reference(raw, site):
    """[(record, label)] of training-<site>/REFERENCE.csv, label 'abnormal' (1) or 'normal' (-1)."""
    path = os.path.join(raw, "training-%s" % site, "REFERENCE.csv")
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and r[0].strip()]
    return [(r[0].strip(), "abnormal" if r[1].strip() == "1" else "normal") for r in rows]


def physionet_subset(raw, dest, per_class):
    """training-<site>/ folders with the first ``per_class`` normal and abnormal records of each site (symlinks)."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    for site in PHYSIONET_SITES:
        folder = os.path.join(dest, "training-%s" % site)
        os.makedirs(folder)
        kept = []
        for label in ("normal", "abnormal"):
            kept += [r for r in physionet_reference(raw, site) if r[1] == label][:per_class]
        with open(os.path.join(folder, "REFERENCE.csv"), "w") as handle:
            for record, label in sorted(kept):
                handle.write("%s,%d\n" % (record, 1 if label == "abnormal" else -1))
                os.symlink(os.path.join(raw, "training-%s" % site, record + ".wav"), os.path.join(folder, record + ".wav"))
    return dest


def loso_manifest(raw, path, test_site):
    """CSV manifest path,label,split: the ``test_site`` set is test, the other sets train. Returns per-site counts."""
    counts = {}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "site", "split"])
        for site in PHYSIONET_SITES:
            for record, label in physionet_reference(raw, site):
                wav = os.path.join(raw, "training-%s" % site, record + ".wav")
                writer.writerow([wav, label, site, "test" if site == test_site else "train"])
                counts[site] = counts.get(site, 0) + 1
    return counts


# ---- one fold: prepare → train → evaluate ------------------------------------------------------------------------

def run_step(name, cmd, fold_dir):
    """Run ``cmd`` from the repo root, log to fold_dir/<name>.log; seconds taken. Raises with the log tail on failure."""
    log_path = os.path.join(fold_dir, name + ".log")
    start = time.time()
    with open(log_path, "w") as handle:
        handle.write("$ %s\n" % " ".join(cmd))
        handle.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if code != 0:
        with open(log_path) as handle:
            tail = "".join(handle.readlines()[-15:])
        raise RuntimeError("%s failed (exit %d, %.0f s); see %s:\n%s" % (name, code, seconds, log_path, tail))
    return seconds


def fold_commands(proto, cfg, source, data_dir, model_dir, fold, args, threads=None, test_source=None,
                  test_dir=None):
    """The command lines of one fold as [(step, command list)] (prepare, [prepare-test,] train, evaluate),
    relative to the repo root; ``threads`` (default --threads) for train.py and evaluate.py.  A cross-dataset
    protocol prepares ``test_source`` into ``test_dir`` with the training set's own contract and tests there."""
    py = sys.executable
    threads = threads or args.threads
    if proto in ("yaseen-cv5", "physionet-cv5"):
        split = "kfold:%d:%d" % (cfg["folds"], fold)
    elif proto in CROSS_DATASET:
        split = "%g,%g,0" % (1.0 - VAL_FRACTION, VAL_FRACTION)
    else:
        split = "official"
    # the command lines `make model` runs too (train_host/recipes.py); from scratch, unless the extra train.py
    # flags name a weights file (another dataset's network to start from)
    prepare = recipes.prepare_command(py, cfg, source, data_dir, split, args.seed, args.workers)
    train = recipes.train_command(py, cfg, data_dir, model_dir, args.seed, threads)
    if proto in CROSS_DATASET:
        prepare_test = [py, "train_host/prepare.py", test_source, test_dir, "--adapter", cfg["test_adapter"],
                        "--contract-from", data_dir, "--split", "test", "--class-map", cfg["test_class_map"],
                        "--seed", str(args.seed), "--workers", str(args.workers)]
        evaluate = [py, "train_host/evaluate.py", test_dir, "--model-dir", model_dir, "--split", "test", "--threads",
                    str(threads)]
        return [("prepare", prepare), ("prepare-test", prepare_test), ("train", train), ("evaluate", evaluate)]
    evaluate = [py, "train_host/evaluate.py", data_dir, "--model-dir", model_dir, "--split", "test", "--threads",
                str(threads)]
    return [("prepare", prepare), ("train", train), ("evaluate", evaluate)]


def binary_scores(per_class):
    """Se (abnormal recall), Sp (normal recall), MAcc = (Se + Sp) / 2 from evaluate.py's per-class figures."""
    se, sp = per_class["abnormal"]["sensitivity"], per_class["normal"]["sensitivity"]
    return {"se": se, "sp": sp, "macc": (se + sp) / 2.0}


def binary_rates(counts):
    """``counts`` ({tp, fn, tn, fp}) with Se = tp/(tp+fn), Sp = tn/(tn+fp) and MAcc = (Se+Sp)/2 added
    (None where a class is absent); returns it."""
    tp, fn, tn, fp = (counts[key] for key in ("tp", "fn", "tn", "fp"))
    counts["se"] = tp / float(tp + fn) if tp + fn else None
    counts["sp"] = tn / float(tn + fp) if tn + fp else None
    both = counts["se"] is not None and counts["sp"] is not None
    counts["macc"] = (counts["se"] + counts["sp"]) / 2.0 if both else None
    return counts


def rates_of_calls(is_positive, called):
    """:func:`binary_rates` of boolean arrays: the truth (positive = abnormal) and the rule's calls."""
    truth, called = np.asarray(is_positive, dtype=bool), np.asarray(called, dtype=bool)
    return binary_rates({"tp": int(np.sum(truth & called)), "fn": int(np.sum(truth & ~called)),
                         "tn": int(np.sum(~truth & ~called)), "fp": int(np.sum(~truth & called))})


def mean_by_recording(recordings, labels, probs, classes):
    """{recording: (label, mean window probabilities)} in first-seen order (metrics.aggregate_recordings)."""
    from train_host import metrics as M
    ids, truth, means = M.aggregate_recordings(recordings, [classes.index(label) for label in labels], probs)
    return collections.OrderedDict((r, (classes[t], m)) for r, t, m in zip(ids, truth, means))


def read_predictions(model_dir):
    """evaluate.py's predictions.csv → (classes, recording of each window, label of each, probabilities (n, N))."""
    with open(os.path.join(model_dir, "predictions.csv"), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in reader.fieldnames if c.startswith("p_")]
        rows = list(reader)
    probs = np.array([[float(row[c]) for c in columns] for row in rows]).reshape(len(rows), len(columns))
    return [c[2:] for c in columns], [r["recording"] for r in rows], [r["label"] for r in rows], probs


def predictions_by_recording(model_dir):
    """evaluate.py's predictions.csv → (classes, :func:`mean_by_recording` of its windows)."""
    classes, recordings, labels, probs = read_predictions(model_dir)
    return classes, mean_by_recording(recordings, labels, probs, classes)


def per_site(model_dir, data_dir):
    """Recording-level Se/Sp/MAcc per PhysioNet site from predictions.csv (mean of window probabilities)."""
    with open(os.path.join(data_dir, "prepare.json")) as handle:
        prepared = json.load(handle)
    site_of = {}
    for image in prepared["images"]:
        source = image.get("source") or ""
        site = image.get("site") or os.path.basename(os.path.dirname(source)).replace("training-", "")
        site_of[image["recording"]] = site
    classes, recordings = predictions_by_recording(model_dir)
    by_site = collections.defaultdict(lambda: ([], []))  # site → (truly abnormal?, called abnormal?) per recording
    for recording, (truth, mean) in recordings.items():
        truths, calls = by_site[site_of[recording]]
        truths.append(truth == "abnormal")
        calls.append(classes[int(np.argmax(mean))] == "abnormal")
    return dict((site, rates_of_calls(*by_site[site])) for site in sorted(by_site))


def val_predictions(data_dir, model_dir, threads=1):
    """(classes, val entries of prepare.json, window probabilities (n, N)) from the fold's exported ONNX
    through evaluate.py's predict_onnx (the device's path); evaluate.py itself scores test only."""
    from train_host.data import load_prepared
    from train_host.evaluate import open_model, predict_onnx
    card, onnx_model = open_model(model_dir)
    dataset = load_prepared(data_dir)
    entries = dataset.split("val")
    return card.classes, entries, predict_onnx(onnx_model, card, dataset, entries, threads, progress=False)


def val_operating_point(data_dir, model_dir, threads=1, positive="abnormal"):
    """Se/Sp/MAcc of test recordings at the threshold on P(abnormal) that maximises MAcc on val recordings.

    The network's argmax calls a recording abnormal at P ≥ 0.5; a screening device is usually run at an
    operating point chosen on data it was not trained on (here: the fold's own val split, which training
    used only to pick the epoch), never on test.  Val probabilities come from the exported ONNX through
    evaluate.py's predict_onnx (the device's path); test probabilities from evaluate.py's predictions.csv.
    """
    from train_host import metrics as M
    classes, entries, val_probs = val_predictions(data_dir, model_dir, threads)
    val = mean_by_recording([e["recording"] for e in entries], [e["label"] for e in entries], val_probs, classes)
    column = classes.index(positive)
    threshold, val_macc = M.balanced_threshold([label == positive for label, _ in val.values()],
                                               [mean[column] for _, mean in val.values()])
    classes, test = predictions_by_recording(model_dir)
    out = {"threshold_p_abnormal": threshold, "val_recordings": len(val), "val_macc": val_macc}
    out.update(rates_of_calls([label == positive for label, _ in test.values()],
                              [mean[classes.index(positive)] >= threshold for _, mean in test.values()]))
    return out


def val_scores(data_dir, model_dir, positive="abnormal"):
    """(truly abnormal?, P(abnormal)) of each val recording (mean of its window probabilities, through the exported
    ONNX as the device runs it)."""
    classes, entries, val_probs = val_predictions(data_dir, model_dir)
    val = mean_by_recording([e["recording"] for e in entries], [e["label"] for e in entries], val_probs, classes)
    column = classes.index(positive)
    return [label == positive for label, _ in val.values()], [mean[column] for _, mean in val.values()]


def binary_figures(is_positive, scores, threshold):
    """Se / Sp / MAcc (and the counts) of ``score >= threshold`` → abnormal, plus the threshold-free AUC."""
    from sklearn.metrics import roc_auc_score
    out = rates_of_calls(is_positive, [score >= threshold for score in scores])
    out["threshold"] = float(threshold)
    both = 0 < sum(bool(p) for p in is_positive) < len(is_positive)
    out["auc"] = float(roc_auc_score(np.asarray(is_positive, dtype=bool), scores)) if both else None
    return out


def cross_dataset_result(data_dir, test_dir, model_dir, positive="abnormal", target_sensitivity=0.9):
    """The figures of a cross-dataset protocol: the model of ``data_dir`` tested on ``test_dir`` (evaluate.py's
    predictions.csv), by clip and by source recording (prepare.py's groups: the clips that share audio), at argmax
    (P(abnormal) ≥ 0.5), at the threshold with the best MAcc on the training set's val recordings, and at the
    largest val threshold reaching ``target_sensitivity`` (a screening operating point)."""
    from train_host.operating_point import OperatingPointError, sensitivity_threshold
    from train_host import metrics as M
    with open(os.path.join(test_dir, "prepare.json")) as handle:
        prepared = json.load(handle)
    group_of = dict((i["recording"], i.get("group") or i["recording"]) for i in prepared["images"])
    windows = collections.Counter(i["recording"] for i in prepared["images"])
    out = {"counts": prepared["counts"], "images": len(prepared["images"]), "recordings": len(windows),
           "groups": len(set(group_of.values())), "skipped": len(prepared["skipped"]),
           "skipped_by_kind": dict(collections.Counter(s["kind"] for s in prepared["skipped"])),
           "windows_per_recording": {"min": min(windows.values()), "max": max(windows.values()),
                                     "mean": float(np.mean(list(windows.values())))},
           "training": training_record(model_dir)}
    classes, recordings, labels, probs = read_predictions(model_dir)
    column = classes.index(positive)
    rules = {"argmax": 0.5}
    val_truth, val_p = val_scores(data_dir, model_dir, positive)
    try:
        rules["val_max_macc"] = M.balanced_threshold(val_truth, val_p)[0]
        rules["val_sensitivity_%g" % target_sensitivity] = sensitivity_threshold(val_truth, val_p, target_sensitivity)
    except (ValueError, OperatingPointError) as error:
        out["operating_point_error"] = str(error)
    out["test"] = {"n_images": len(labels), "rules": rules, "val_recordings": len(val_truth)}
    for level, keys in (("clip", recordings), ("source_recording", [group_of[r] for r in recordings])):
        means = mean_by_recording(keys, labels, probs, classes)
        truth = [label == positive for label, _ in means.values()]
        scores = [mean[column] for _, mean in means.values()]
        out["test"][level] = dict((rule, binary_figures(truth, scores, threshold)) for rule, threshold in rules.items())
        out["test"][level]["n"] = len(truth)
        out["test"][level]["positives"] = int(sum(truth))
    return out


def drift_rates(data_dir, test_dir, model_dir):
    """The drift check as a detector: the share of test recordings (another site) and of val recordings (held out
    from the training sites) whose drift score reaches the threshold in the model's input_stats, per site."""
    from stetho.drift import DriftReference
    from train_host.data import load_prepared
    from train_host.input_stats import recording_profiles
    with open(os.path.join(model_dir, "model.json")) as handle:
        card = json.load(handle)
    if not card.get("input_stats"):
        return {"error": "model.json has no input_stats"}
    reference = DriftReference(card["input_stats"], card["contract"]["spectrogram"]["size"])
    out = {"threshold": reference.threshold}
    for name, folder, split in (("test", test_dir, "test"), ("val", data_dir, "val")):
        dataset = load_prepared(folder)
        site_of = dict((i["recording"], i.get("site") or os.path.basename(os.path.dirname(i["source"])).replace(
            "training-", "")) for i in dataset.split(split))
        scores = dict((r, reference.score(p)) for r, (p, _) in
                      recording_profiles(dataset, split, top_db=reference.top_db).items())
        by_site = collections.defaultdict(list)
        for recording, score in scores.items():
            by_site[site_of[recording]].append(score)
        out[name] = {"recordings": len(scores), "flagged": float(np.mean([s >= reference.threshold
                                                                        for s in scores.values()])) if scores else None,
                     "median_score": float(np.median(list(scores.values()))) if scores else None,
                     "by_site": dict((site, dict({"recordings": len(v),
                                                  "flagged": float(np.mean(np.asarray(v) >= reference.threshold)),
                                                  "median_score": float(np.median(v))},
                                                 **device_run_rates(v, reference)))
                                     for site, v in sorted(by_site.items()))}
    if reference.device_threshold is not None:
        out["device"] = {"exams": reference.device_exams, "threshold": reference.device_threshold}
    return out


def device_run_rates(scores, reference, draws=1000, seed=0):
    """The device-level check as a detector on one site's recordings: the share of runs of
    ``reference.device_exams`` of them (drawn at random, ``draws`` times; with replacement only where the site has
    fewer recordings, and then ``device_runs_resampled``) whose mean drift score reaches its threshold."""
    if reference.device_threshold is None or not scores:
        return {}
    scores, exams = np.asarray(scores, dtype=np.float64), reference.device_exams
    rng = np.random.RandomState(seed)
    few = len(scores) < exams
    picks = (rng.randint(0, len(scores), size=(draws, exams)) if few else
             np.array([rng.choice(len(scores), exams, replace=False) for _ in range(draws)]))
    out = {"device_runs_flagged": float(np.mean(scores[picks].mean(axis=1) >= reference.device_threshold))}
    if few:
        out["device_runs_resampled"] = True
    return out


def adapted_result(proto, cfg, fold, fold_dir, data_dir, model_dir, args, rules):
    """Adapt the fold's model to its test recordings' audio (labels unused: train_host/adapt.py), render the test
    recordings with the adapted contract, evaluate, and score them at the unadapted model's thresholds."""
    adapted, test = os.path.join(fold_dir, "adapted"), os.path.join(fold_dir, "adapted-test")
    py = sys.executable
    if proto == "physionet-loso":
        site = PHYSIONET_SITES[fold]
        audio = os.path.join(args.sources[proto], "training-%s" % site)
        manifest = os.path.join(fold_dir, "test-manifest.csv")
        with open(os.path.join(fold_dir, "manifest.csv")) as source, open(manifest, "w") as target:
            rows = list(csv.reader(source))
            csv.writer(target, lineterminator="\n").writerows([rows[0]] + [r for r in rows[1:] if r[3] == "test"])
        prepare = [py, "train_host/prepare.py", manifest, test, "--adapter", "csv"]
    else:
        audio = args.test_sources[proto]
        prepare = [py, "train_host/prepare.py", audio, test, "--adapter", cfg["test_adapter"], "--class-map",
                   cfg["test_class_map"]]
    seconds = {}
    seconds["adapt"] = run_step("adapt", [py, "train_host/adapt.py", model_dir, audio, "--out", adapted, "--force"],
                                fold_dir)
    seconds["prepare-adapted"] = run_step("prepare-adapted", prepare + [
        "--contract-from", adapted, "--split", "test", "--seed", str(args.seed), "--workers", str(args.workers),
        "--force"], fold_dir)
    seconds["evaluate-adapted"] = run_step("evaluate-adapted", [py, "train_host/evaluate.py", test, "--model-dir",
                                                                adapted, "--split", "test"], fold_dir)
    with open(os.path.join(adapted, "model.json")) as handle:
        adaptation = json.load(handle)["adaptation"]
    out = {"seconds": seconds, "adaptation": {k: adaptation[k] for k in ("n_files", "seconds", "windows",
                                                                         "equaliser")}}
    classes, recordings, labels, probs = read_predictions(adapted)
    keys = recordings
    if proto in CROSS_DATASET:
        with open(os.path.join(test, "prepare.json")) as handle:
            group_of = dict((i["recording"], i.get("group") or i["recording"]) for i in json.load(handle)["images"])
        keys = [group_of[r] for r in recordings]
    means = mean_by_recording(keys, labels, probs, classes)
    truth = [label == "abnormal" for label, _ in means.values()]
    scores = [mean[classes.index("abnormal")] for _, mean in means.values()]
    thresholds = {}
    for rule, figures in rules.items():  # LOSO: {rule: figures with their threshold}; cross-dataset: {rule: threshold}
        if isinstance(figures, dict) and "macc" in figures:
            thresholds[rule] = figures["threshold"]
        elif isinstance(figures, (int, float)) and not isinstance(figures, bool):
            thresholds[rule] = float(figures)
    out["test"] = dict((rule, binary_figures(truth, scores, threshold)) for rule, threshold in thresholds.items())
    out["test"]["n"] = len(truth)
    out["drift"] = drift_rates(data_dir, test, adapted)
    return out


def training_record(model_dir):
    """How the fold's network was trained, from its model.json: the device ("cpu" or "cuda"), the precision
    (float32, or the autocast dtype train.py chose: --amp auto means float16 on CUDA and bfloat16 on CPUs with AMX
    or AVX-512 BF16; the ONNX is float32 either way), the epoch kept and the training time in seconds."""
    with open(os.path.join(model_dir, "model.json")) as handle:
        training = json.load(handle).get("training") or {}
    return {"device": training.get("device"), "precision": training.get("amp") or "float32",
            "best_epoch": training.get("best_epoch"), "seconds": training.get("train_seconds")}


def gpu_names():
    """The NVIDIA GPUs nvidia-smi lists (["NVIDIA H100 80GB HBM3"]), [] where there is none or no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, universal_newlines=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def machine_record():
    """What the figures were measured on: CPU count and model, the load when they were written, and the GPUs
    (train.py trains on the first where torch sees CUDA; each fold's training record says which device it used)."""
    return {"cpus": os.cpu_count(), "processor": cpu_name() or None, "gpus": gpu_names(),
            "load_avg": os.getloadavg()}


def fold_result(proto, cfg, data_dir, model_dir):
    """The figures of one fold from prepare.json and evaluate.py's metrics.json."""
    with open(os.path.join(data_dir, "prepare.json")) as handle:
        prepared = json.load(handle)
    windows = collections.Counter(i["recording"] for i in prepared["images"])
    out = {"counts": prepared["counts"], "groups": prepared.get("patients"), "skipped": len(prepared["skipped"]),
           "images": len(prepared["images"]), "recordings": len(windows),
           "windows_per_recording": {"min": min(windows.values()), "max": max(windows.values()),
                                     "mean": float(np.mean(list(windows.values())))},
           }
    if proto == "icbhi-official":
        out["note"] = "counts only: 10 recordings have audio; no test figure here is a result"
        reasons = [s.get("reason") or "" for s in prepared["skipped"]]
        no_audio = sum("without audio" in r for r in reasons)
        out["skipped_by_reason"] = {"annotation without audio": no_audio,
                                    "other": [r for r in reasons if "without audio" not in r]}
        return out
    out["training"] = training_record(model_dir)
    with open(os.path.join(model_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    out["test"] = {"n_images": metrics["n_images"], "n_recordings": metrics["n_recordings"]}
    for level in ("window", "recording"):
        m = metrics[level]
        item = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                "confusion_matrix": m["confusion_matrix"], "classes": metrics["classes"]}
        if proto.startswith("physionet"):
            item.update(binary_scores(m["per_class"]))
            item["auc"] = m.get("roc_auc")   # threshold-free: P(abnormal) ranks an abnormal recording higher
        out["test"][level] = item
    if proto.startswith("physionet"):
        sites = per_site(model_dir, data_dir)
        cm = out["test"]["recording"]["confusion_matrix"]   # rows true, columns predicted; classes abnormal, normal
        pooled = [sum(s[k] for s in sites.values()) for k in ("tp", "fn", "fp", "tn")]
        if pooled != [cm[0][0], cm[0][1], cm[1][0], cm[1][1]]:
            raise ValueError("per-site counts %s disagree with evaluate.py's recording confusion matrix %s" % (pooled, cm))
        out["test"]["recording_by_site"] = sites
        out["test"]["val_operating_point"] = safe_operating_point(data_dir, model_dir)
        out["test"]["rules"] = rule_figures(data_dir, model_dir)
    return out


def rule_figures(data_dir, model_dir, positive="abnormal", target_sensitivity=0.9):
    """Test recordings' Se / Sp / MAcc / AUC at argmax, at the rule model.json stores (chosen on val by train.py,
    the device's exam verdict), and at the largest val threshold reaching ``target_sensitivity``."""
    from train_host.operating_point import OperatingPointError, sensitivity_threshold
    classes, test = predictions_by_recording(model_dir)
    column = classes.index(positive)
    truth = [label == positive for label, _ in test.values()]
    scores = [mean[column] for _, mean in test.values()]
    with open(os.path.join(model_dir, "model.json")) as handle:
        decision = json.load(handle).get("decision") or {}
    rules = {"argmax": 0.5}
    if decision.get("rule") == "threshold":
        rules["stored"] = decision["threshold"]  # on P(not normal): P(abnormal) for a two-class model
    out = {}
    try:
        val_truth, val_p = val_scores(data_dir, model_dir, positive)
        rules["val_sensitivity_%g" % target_sensitivity] = sensitivity_threshold(val_truth, val_p, target_sensitivity)
    except (ValueError, OperatingPointError) as error:
        out["error"] = str(error)
    out.update((rule, binary_figures(truth, scores, threshold)) for rule, threshold in rules.items())
    out["stored_decision"] = decision or None
    return out


def device_check(fold_dir, data_dir, model_dir, threads=1):
    """Replay the fold's test recordings through deploy_jetson/service.py (--fast: a file is one exam) and compare
    each exam with evaluate.py's recording level: the largest difference of mean probabilities, and whether the
    verdict (the stored rule) is the one the rule gives on evaluate.py's means; exams under the service's
    minimum of accepted audio ('too short') and exams where the quality gate rejected windows (their mean leaves
    those out, evaluate.py's does not) are counted apart."""
    from stetho.decision import DecisionRule
    with open(os.path.join(data_dir, "prepare.json")) as handle:
        prepared = json.load(handle)
    sources = dict((i["recording"], i["source"]) for i in prepared["images"] if i["split"] == "test")
    work = os.path.join(fold_dir, "device")
    wavs = os.path.join(work, "wavs")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(wavs)
    for recording, source in sources.items():
        os.symlink(source, os.path.join(wavs, recording + os.path.splitext(source)[1]))
    started = time.time()
    run_step("device", [sys.executable, "deploy_jetson/service.py", "--model-dir", model_dir, "--source",
                        "file:" + wavs, "--fast", "--quiet", "--output", os.path.join(work, "out"), "--exam-keep", "0",
                        "--threads", str(threads)], fold_dir)
    with open(os.path.join(work, "out", "exams.jsonl")) as handle:
        exams = dict((e["stream"], e) for e in (json.loads(line) for line in handle if line.strip()))
    classes, evaluated = predictions_by_recording(model_dir)
    with open(os.path.join(model_dir, "model.json")) as handle:
        rule = DecisionRule(json.load(handle).get("decision"), classes)
    out = {"recordings": len(sources), "exams": len(exams), "seconds": time.time() - started,
           "max_abs_diff": 0.0, "verdicts_equal": 0, "verdicts_differ": [], "too_short": 0, "with_rejected_windows": 0,
           "missing": sorted(set(sources) - set(exams))}
    for recording, (_, mean) in evaluated.items():
        exam = exams.get(recording)
        if exam is None or exam["mean_probabilities"] is None:
            continue
        served = np.array([exam["mean_probabilities"][c] for c in classes])
        if exam["windows_rejected"]:  # the gate left windows out: the exam's mean is over fewer windows
            out["with_rejected_windows"] += 1
            continue
        out["max_abs_diff"] = max(out["max_abs_diff"], float(np.abs(served - mean).max()))
        if exam["verdict"] == "too short":
            out["too_short"] += 1
        elif exam["verdict"] == rule.decide(mean).label:
            out["verdicts_equal"] += 1
        else:
            out["verdicts_differ"].append(recording)
    return out


def safe_operating_point(data_dir, model_dir):
    """val_operating_point, or {'error': why} when val cannot give one (e.g. a --quick val with one class)."""
    try:
        return val_operating_point(data_dir, model_dir)
    except ValueError as error:
        return {"error": str(error)}


def add_later_figures(proto, done, fold_dir):
    """Figures the bench learned to report after ``done`` (a fold's result) was written, from what the fold keeps
    (model.json; for PhysioNet also the val images, the ONNX, metrics.json): how it was trained, the val operating
    point, the AUCs. True if any was added."""
    added = False
    if "training" not in done and os.path.isfile(os.path.join(fold_dir, "model", "model.json")):
        done["training"] = training_record(os.path.join(fold_dir, "model"))
        added = True
    if not proto.startswith("physionet") or proto in CROSS_DATASET:
        return added
    if "macc" not in done["test"].get("val_operating_point", {}):
        done["test"]["val_operating_point"] = safe_operating_point(
            os.path.join(fold_dir, "data"), os.path.join(fold_dir, "model"))
        added = True
    if any("auc" not in done["test"][level] for level in ("window", "recording")):
        with open(os.path.join(fold_dir, "model", "metrics.json")) as handle:
            metrics = json.load(handle)
        for level in ("window", "recording"):
            done["test"][level]["auc"] = metrics[level].get("roc_auc")
        added = True
    return added


def fold_rounds(folds, jobs, threads):
    """[(folds run side by side, threads each), ...]: ``jobs`` folds at a time on ``threads`` each, except that
    the folds left over when ``jobs`` does not divide their number run first, sharing every job's threads (the
    fifth fold on --jobs 2 --threads 1 trains alone on both cores, rather than beside an idle one at the end)."""
    folds = list(folds)
    odd = len(folds) % jobs if jobs > 1 else 0
    rounds = [(folds[:odd], threads * jobs // odd)] if odd else []
    return rounds + [(folds[odd:], threads)] if folds[odd:] else rounds


def fold_name(proto, fold):
    return ("site-%s" % PHYSIONET_SITES[fold]) if proto == "physionet-loso" else "fold-%d" % fold


def saved_result(proto, fold, work, signature):
    """The fold's result.json under ``work`` when a run of the same settings (``signature``) finished it, else
    None."""
    result_path = os.path.join(work, proto, fold_name(proto, fold), "result.json")
    if not os.path.isfile(result_path):
        return None
    with open(result_path) as handle:
        done = json.load(handle)
    return done if done.get("settings") == signature else None


def finished_result(proto, fold, args, signature):
    """:func:`saved_result` from an earlier run, unless --force redoes the fold (then None)."""
    return None if args.force else saved_result(proto, fold, args.work, signature)


def run_fold(proto, cfg, source, fold, args, signature, threads=None):
    """prepare → train → evaluate for one fold (``threads``: default --threads); the result dict (read back when
    already done)."""
    name = fold_name(proto, fold)
    fold_dir = os.path.join(args.work, proto, name)
    result_path = os.path.join(fold_dir, "result.json")
    done = finished_result(proto, fold, args, signature)
    if done is not None:
        log("%s %s: done before, skipped (%s)" % (proto, name, result_path))
        if add_later_figures(proto, done, fold_dir):
            with open(result_path + ".part", "w") as handle:
                json.dump(done, handle, indent=1)
            os.replace(result_path + ".part", result_path)
        return done
    if os.path.isfile(result_path) and not args.force:
        log("%s %s: settings changed since the last run, redoing it" % (proto, name))
    if os.path.isdir(fold_dir):
        shutil.rmtree(fold_dir)
    os.makedirs(fold_dir)
    data_dir, model_dir = os.path.join(fold_dir, "data"), os.path.join(fold_dir, "model")
    if proto == "physionet-loso":
        source = os.path.join(fold_dir, "manifest.csv")
        loso_manifest(args.sources[proto], source, PHYSIONET_SITES[fold])
    test_dir = os.path.join(fold_dir, "test-data")
    commands = fold_commands(proto, cfg, source, data_dir, model_dir, fold, args, threads,
                             args.test_sources.get(proto), test_dir)
    seconds = {}
    failed = None
    for step, cmd in commands:
        log("%s %s: %s ..." % (proto, name, step))
        try:
            seconds[step] = run_step(step, cmd, fold_dir)
        except RuntimeError as error:
            if proto != "icbhi-official" or step == "prepare":
                raise
            # ICBHI: only the counts are asked for; a failing train/evaluate is recorded, not hidden
            failed = {"step": step, "error": str(error).splitlines()[0],
                      "log_tail": str(error).strip().splitlines()[-1]}
            log("%s %s: %s FAILED (recorded): %s" % (proto, name, step, failed["log_tail"]))
            break
        log("%s %s: %s done in %.0f s" % (proto, name, step, seconds[step]))
    result = {"fold": name, "settings": signature, "seconds": seconds, "pipeline_failure": failed,
              "commands": [" ".join(os.path.relpath(c, REPO) if os.path.isabs(c) and c.startswith(REPO) else c
                                    for c in cmd) for _, cmd in commands]}
    if proto in CROSS_DATASET:
        result.update(cross_dataset_result(data_dir, test_dir, model_dir))
    else:
        result.update(fold_result(proto, cfg, data_dir, model_dir))
    if proto in CROSS_SITE and failed is None:
        result["drift"] = drift_rates(data_dir, test_dir if proto in CROSS_DATASET else data_dir, model_dir)
        if args.adapt:
            result["adapted"] = adapted_result(proto, cfg, fold, fold_dir, data_dir, model_dir, args,
                                               result["test"]["rules"])
    if proto == "physionet-cv5" and failed is None:
        result["device"] = device_check(fold_dir, data_dir, model_dir)
        log("%s %s: device: %d exams, verdicts equal %d, differ %d, too short %d; max |diff| %.1e"
            % (proto, name, result["device"]["exams"], result["device"]["verdicts_equal"],
               len(result["device"]["verdicts_differ"]), result["device"]["too_short"],
               result["device"]["max_abs_diff"]))
    with open(result_path + ".part", "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(result_path + ".part", result_path)
    if not args.keep_images:
        shutil.rmtree(os.path.join(data_dir, "train"), ignore_errors=True)   # the big part; test/val stay
    if not args.keep_checkpoints:            # ~90 MB each; the ONNX, model.json and metrics stay
        for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
            if os.path.isfile(os.path.join(model_dir, name)):
                os.remove(os.path.join(model_dir, name))
    return result


def run_folds(proto, cfg, source, wanted, args, signature):
    """:func:`run_fold` for each of ``wanted``, ``args.jobs`` at a time; returns the failures as lines.

    Each fold works in its own folder through its own subprocesses, so folds can run side by side (in the
    rounds of :func:`fold_rounds`).  Folds an earlier run finished are read back first and the rounds are planned
    over the rest, so a resumed run still gives its odd fold every thread.
    """
    def attempt(fold, threads):
        try:
            run_fold(proto, cfg, source, fold, args, signature, threads)
        except (RuntimeError, OSError, KeyError, ValueError) as error:
            log("FAILED %s fold %d: %s" % (proto, fold, error))
            return "%s fold %d: %s" % (proto, fold, error)
        return None

    finished = [fold for fold in wanted if finished_result(proto, fold, args, signature) is not None]
    outcomes = [attempt(fold, args.threads) for fold in finished]
    for folds, threads in fold_rounds([fold for fold in wanted if fold not in finished], args.jobs, args.threads):
        if len(folds) == 1 or args.jobs <= 1:
            outcomes += [attempt(fold, threads) for fold in folds]
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                outcomes += list(pool.map(attempt, folds, [threads] * len(folds)))
    return [outcome for outcome in outcomes if outcome]


# ---- summaries ---------------------------------------------------------------------------------------------------

def merge_saved_protocols(path, protocols):
    """The protocols already in the results file ``path`` (none if it is absent), with ``protocols`` put over them.

    So a run that scores one protocol leaves the others in the file as they were (another run may have written
    them meanwhile).
    """
    saved = {}
    if os.path.isfile(path):
        with open(path) as handle:
            saved = json.load(handle).get("protocols", {})
    saved.update(protocols)
    return saved


def write_report(path, report):
    """Write a bench script's JSON report to ``path`` (folders made as needed); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
    return path


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(proto, folds):
    """Mean ± std over folds of the protocol's headline figures."""
    out = {}
    if proto == "yaseen-cv5":
        for level in ("window", "recording"):
            out["%s_accuracy" % level] = mean_std([f["test"][level]["accuracy"] for f in folds])
        pooled = np.sum([f["test"]["recording"]["confusion_matrix"] for f in folds], axis=0)
        out["recording_pooled"] = {"correct": int(np.trace(pooled)), "total": int(pooled.sum()),
                                   "accuracy": float(np.trace(pooled) / pooled.sum()),
                                   "confusion_matrix": pooled.tolist(),
                                   "classes": folds[0]["test"]["recording"]["classes"]}
        out["note"] = NO_PATIENT_NOTE
    elif proto.startswith("physionet") and proto not in CROSS_DATASET:
        for level in ("window", "recording"):
            for key in ("se", "sp", "macc", "auc"):
                out["%s_%s" % (level, key)] = mean_std([f["test"][level].get(key) for f in folds])
        sites = {}
        for f in folds:
            for site, c in f["test"]["recording_by_site"].items():
                s = sites.setdefault(site, {"tp": 0, "fn": 0, "tn": 0, "fp": 0})
                for k in s:
                    s[k] += c[k]
        out["recording_by_site_pooled"] = dict((site, binary_rates(c)) for site, c in sorted(sites.items()))
        for rule in ("argmax", "stored", "val_sensitivity_0.9"):
            figures = [f["test"].get("rules", {}).get(rule) for f in folds]
            if all(figures):
                out["rule_%s" % rule] = dict((key, mean_std([x[key] for x in figures])) for key in ("se", "sp", "macc"))
        devices = [f["device"] for f in folds if f.get("device")]
        if devices:
            out["device"] = dict((key, sum(d[key] for d in devices)) for key in
                                 ("recordings", "exams", "verdicts_equal", "too_short", "with_rejected_windows"))
            out["device"]["verdicts_differ"] = sum(len(d["verdicts_differ"]) for d in devices)
            out["device"]["max_abs_diff"] = max(d["max_abs_diff"] for d in devices)
        if all(f.get("drift", {}).get("test") for f in folds):
            out["drift"] = {"test_flagged_by_site": dict((f["fold"].replace("site-", ""), f["drift"]["test"]["flagged"])
                                                         for f in folds),
                            "val_flagged": mean_std([f["drift"]["val"]["flagged"] for f in folds]),
                            "test_flagged": mean_std([f["drift"]["test"]["flagged"] for f in folds])}
            if all(f["drift"].get("device") for f in folds):  # the device-level check: runs of 20 exams
                out["drift"]["device_runs_flagged_by_site"] = dict(
                    (f["fold"].replace("site-", ""), f["drift"]["test"]["by_site"][f["fold"].replace("site-", "")]
                     ["device_runs_flagged"]) for f in folds)
                out["drift"]["val_device_runs_flagged_by_site"] = dict(
                    (f["fold"].replace("site-", ""), dict((site, v["device_runs_flagged"]) for site, v in
                                                          f["drift"]["val"]["by_site"].items()))
                    for f in folds)
        if all(f.get("adapted") for f in folds):
            for rule in folds[0]["adapted"]["test"]:
                if rule != "n":
                    out["adapted_%s" % rule] = dict((key, mean_std([f["adapted"]["test"][rule][key] for f in folds]))
                                                    for key in ("se", "sp", "macc", "auc"))
            out["adapted_by_site"] = dict((f["fold"].replace("site-", ""), {"macc": f["adapted"]["test"]["argmax"]["macc"],
                                                                            "auc": f["adapted"]["test"]["argmax"]["auc"]})
                                          for f in folds)
        if proto == "physionet-loso":  # each fold is one left-out site: its AUC is that site's
            out["recording_auc_by_site"] = dict((f["fold"].replace("site-", ""), f["test"]["recording"].get("auc"))
                                                for f in folds)
        points = [f["test"]["val_operating_point"] for f in folds if "macc" in f["test"]["val_operating_point"]]
        for key in ("se", "sp", "macc", "threshold_p_abnormal"):
            out["val_operating_point_%s" % key] = mean_std([p[key] for p in points])
    elif proto in CROSS_DATASET:
        f = folds[0]
        out = {"test": f["test"], "counts": f["counts"], "groups": f["groups"], "recordings": f["recordings"],
               "images": f["images"], "skipped": f["skipped"], "skipped_by_kind": f.get("skipped_by_kind"),
               "drift": f.get("drift"), "adapted": f.get("adapted")}
    elif proto == "icbhi-official":
        f = folds[0]
        out = {"counts": f["counts"], "groups": f["groups"], "images": f["images"], "recordings": f["recordings"],
               "skipped": f["skipped"], "skipped_by_reason": f.get("skipped_by_reason"), "note": f.get("note"),
               "pipeline_failure": f.get("pipeline_failure")}
    out["folds_done"] = len(folds)
    out["train_seconds"] = float(sum(f["seconds"].get("train", 0.0) for f in folds))
    out["total_seconds"] = float(sum(sum(f["seconds"].values()) for f in folds))
    return out


def headline(proto, summary, total):
    def ms(item, scale=1.0, fmt="%.4f"):
        return "–" if not item else (fmt + " ± " + fmt) % (item["mean"] * scale, item["std"] * scale)
    if proto == "yaseen-cv5":
        return "%s: %d/%d folds, accuracy window %s, recording %s (%%); %s" % (
            proto, summary["folds_done"], total, ms(summary["window_accuracy"], 100, "%.2f"),
            ms(summary["recording_accuracy"], 100, "%.2f"), "no patient ids: split by source recording")
    if proto in CROSS_DATASET:
        t = summary["test"]
        parts = []
        for level in ("source_recording", "clip"):
            for rule in sorted(t["rules"]):
                f = t[level][rule]
                parts.append("%s %s: Se %.3f Sp %.3f MAcc %.3f AUC %s" % (
                    level, rule, f["se"] or 0, f["sp"] or 0, f["macc"] or 0,
                    "–" if f["auc"] is None else "%.3f" % f["auc"]))
        return "%s: %d source recordings (%d clips, %d skipped); %s" % (
            proto, t["source_recording"]["n"], t["clip"]["n"], summary["skipped"], "; ".join(parts))
    if proto.startswith("physionet"):
        return ("%s: %d/%d folds, recording Se %s  Sp %s  MAcc %s  AUC %s; at the operating point chosen on val: "
                "Se %s  Sp %s  MAcc %s" % (
                    proto, summary["folds_done"], total, ms(summary["recording_se"]), ms(summary["recording_sp"]),
                    ms(summary["recording_macc"]), ms(summary.get("recording_auc")), ms(summary["val_operating_point_se"]),
                    ms(summary["val_operating_point_sp"]), ms(summary["val_operating_point_macc"])))
    return "%s: counts %s; %d recordings, %d images, %d skipped" % (
        proto, json.dumps(summary["counts"]), summary["recordings"], summary["images"], summary["skipped"])


ANCHORS = {
    "yaseen-cv5": ("99.5 %", "97.9 % (Yaseen et al. 2018, MFCC+DWT SVM/DNN); CNNs ~99 %; up to 99.6 %"),
    "physionet-cv5": ("MAcc ≈ 0.79", "challenge winner MAcc 0.860 (Se 0.942, Sp 0.778) on the hidden test set"),
    "physionet-loso": ("–", "cross-site figures are rarely published; the hidden test mixes sites"),
    "physionet-to-yaseen": ("–", "cross-dataset figures are rarely published"),
    "icbhi-official": ("–", "official-split ICBHI score 0.62–0.66 on the full database (not comparable: 10 recordings)"),
}


BASELINE_JSON = os.path.join(REPO, "bench", "results", "baseline.json")


def baseline_cell(proto, path=BASELINE_JSON):
    """The baseline column: bench/baseline.py's figure on the same splits when it has one, then the quoted one."""
    quoted = ANCHORS.get(proto, ("–", "–"))[0]
    try:
        with open(path) as handle:
            summary = json.load(handle)["protocols"][proto]["summary"]
    except (OSError, ValueError, KeyError):
        return quoted
    if "macc" in summary:
        measured = "MAcc %.3f ± %.3f" % (summary["macc"]["mean"], summary["macc"]["std"])
    else:
        measured = "%.2f ± %.2f %%" % (100 * summary["accuracy"]["mean"], 100 * summary["accuracy"]["std"])
    return "%s measured (`python bench/baseline.py`)%s" % (measured, "" if quoted == "–" else "; %s quoted" % quoted)


def markdown_rows(results):
    """README/docs table rows: dataset | protocol | metric | ours | baseline | anchors | command."""
    rows = []
    for proto, entry in results["protocols"].items():
        s, base = entry["summary"], (baseline_cell(proto), ANCHORS.get(proto, ("–", "–"))[1])
        part = "" if entry["complete"] else " **(partial: %d/%d folds; the command finishes the rest)**" % (
            s["folds_done"], entry["folds_total"])
        cmd = "`%s`" % entry["command"]
        if entry.get("ran_as") and entry["ran_as"].split() != entry["command"].split():
            cmd += " (this figure: `%s`)" % entry["ran_as"]

        def ms(key, scale=1.0, fmt="%.3f"):
            item = s.get(key)
            return "–" if not item else (fmt + " ± " + fmt) % (item["mean"] * scale, item["std"] * scale)
        if proto == "yaseen-cv5":
            one = all(f["windows_per_recording"]["max"] == 1 for f in entry["folds"])
            rows.append("| Yaseen 2018, 5 classes (no patient ids: split by source recording, the clips that share "
                        "audio joined) | stratified %d-fold CV by source recording | accuracy, recording%s | %s %%%s; pooled %d/%d | %s | %s | %s |"
                        % (entry["folds_total"], " = window (1 window/clip)" if one else
                           " (window: %s %%)" % ms("window_accuracy", 100, "%.2f"),
                           ms("recording_accuracy", 100, "%.2f"), part,
                           s["recording_pooled"]["correct"], s["recording_pooled"]["total"], base[0], base[1], cmd))
        elif proto in CROSS_DATASET:
            t = s["test"]
            cell = "; ".join("%s %.3f / %.3f / %.3f (AUC %s)" % (
                rule, t["source_recording"][rule]["se"] or 0, t["source_recording"][rule]["sp"] or 0,
                t["source_recording"][rule]["macc"] or 0, "–" if t["source_recording"][rule]["auc"] is None
                else "%.3f" % t["source_recording"][rule]["auc"]) for rule in sorted(t["rules"]))
            rows.append("| PhysioNet 2016 a–f → Yaseen 2018 (N vs AS/MR/MS/MVP) | train on PhysioNet, test on Yaseen "
                        "by source recording (%d) | Se / Sp / MAcc | %s | %s | %s | %s |"
                        % (t["source_recording"]["n"], cell, base[0], base[1], cmd))
        elif proto.startswith("physionet"):
            what = "stratified %d-fold CV by recording" % entry["folds_total"] if proto.endswith("cv5") else \
                "leave one site out (train 4 sets, test the 5th)"
            aucs = s.get("recording_auc_by_site") or {}
            sites = ", ".join("%s %.3f%s" % (k, v["macc"], " (AUC %.3f)" % aucs[k] if aucs.get(k) is not None else "")
                              for k, v in s["recording_by_site_pooled"].items() if v["macc"] is not None)
            rows.append("| PhysioNet 2016 a,b,c,d,f | %s | recording Se / Sp / MAcc (AUC) | %s / %s / %s (%s)%s; "
                        "per site MAcc: %s; at the operating point chosen on val: %s / %s / %s "
                        "| %s | %s | %s |" % (what, ms("recording_se"), ms("recording_sp"), ms("recording_macc"),
                                              ms("recording_auc"), part, sites, ms("val_operating_point_se"),
                                              ms("val_operating_point_sp"), ms("val_operating_point_macc"), base[0],
                                              base[1], cmd))
        elif proto == "icbhi-official":
            counts = "; ".join("%s %s" % (k, ", ".join("%s %d" % kv for kv in sorted(v.items())))
                               for k, v in s["counts"].items())
            fail = s.get("pipeline_failure")
            note = "; pipeline: %s fails (%s)" % (fail["step"], fail["log_tail"]) if fail else "; pipeline ran"
            rows.append("| ICBHI 2017 sample (10 recordings with audio) | official split | counts only | %s; %d "
                        "annotation files skipped%s | %s | %s | %s |" % (counts, s["skipped"], note, base[0], base[1], cmd))
    return rows


# ---- main --------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--protocol", default="yaseen-cv5", choices=list(PROTOCOLS) + ["all"])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: %d folds, %d clips per class (per site for PhysioNet), R=%d, %d epoch"
                        % (QUICK["folds"], QUICK["limit"], QUICK["size"], QUICK["epochs"]))
    p.add_argument("--data", default=DATA_DEFAULT, help="folder holding yaseen2018/, physionet2016/, icbhi2017_sample/")
    p.add_argument("--work", help="prepared data, models, logs (default runs/accuracy, with --quick runs/accuracy-quick)")
    p.add_argument("--out", help="results JSON, merged: other protocols already in it are kept "
                                 "(default bench/results/accuracy.json, with --quick accuracy-quick.json)")
    p.add_argument("--size", type=int, help="image size R (default: per protocol)")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: per protocol)")
    p.add_argument("--window", type=float, help="segment length, s (default: per protocol)")
    p.add_argument("--hop", type=float, help="window step, s (default: per protocol)")
    p.add_argument("-b", "--batch-size", type=int, help="batch size (default: per protocol)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: train.py's)")
    p.add_argument("--balance", choices=("none", "weights", "sampler", "site-sampler", "site-recording-sampler"),
                   help="(default: per protocol)")
    p.add_argument("--folds", type=int, help="K of the K-fold protocols (default 5)")
    p.add_argument("--only", help="comma-separated fold indices to run now (e.g. 0,1); the JSON says how many are done")
    p.add_argument("--limit", type=int, help="use only the first N recordings per class (per site for PhysioNet)")
    p.add_argument("--train-args", default="", help="extra train.py flags, after the protocol's own "
                                                    "(e.g. '--aug-gain-db 9 --lr 2e-3')")
    p.add_argument("--prepare-args", default="", help="extra prepare.py flags, after the protocol's own "
                                                      "(e.g. '--set spectrogram.top_db=50')")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--threads", type=int, default=2, help="torch/onnxruntime threads (per fold)")
    p.add_argument("--jobs", type=int, default=1,
                   help="folds run at once (e.g. --jobs 2 --threads 1 on two cores: small networks train faster "
                        "as two single-thread jobs than as one two-thread job)")
    p.add_argument("--workers", type=int, default=2, help="prepare.py worker processes")
    p.add_argument("--keep-images", action="store_true", help="keep each fold's train images (default: delete them)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each fold's .pth.tar checkpoints (default: delete them once the fold is evaluated)")
    p.add_argument("--force", action="store_true", help="redo folds that are already done")
    p.add_argument("--adapt", action="store_true",
                   help="cross-site protocols: also adapt each fold's model to its test recordings' audio, labels "
                        "unused (train_host/adapt.py: equaliser + BatchNorm statistics), and test the adapted model")
    return p.parse_args(argv)


def protocol_settings(proto, args):
    cfg = dict(PROTOCOLS[proto])
    if args.quick:
        cfg.update(size=QUICK["size"], epochs=QUICK["epochs"], folds=min(cfg["folds"], QUICK["folds"]),
                   limit=QUICK["limit"], batch_size=8)
    for key in ("size", "epochs", "window", "hop", "batch_size", "lr", "balance", "limit"):
        value = getattr(args, key)
        if value is not None and not (key in ("window", "hop") and cfg["window"] is None):
            cfg[key] = value
    if args.folds and proto in ("yaseen-cv5", "physionet-cv5"):
        cfg["folds"] = args.folds
    cfg["train_args"] = list(cfg.get("train_args", [])) + args.train_args.split()
    cfg["extra_prepare"] = list(cfg["extra_prepare"]) + args.prepare_args.split()
    cfg.setdefault("limit", None)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    suffix = "-quick" if args.quick else ""
    args.work = os.path.abspath(args.work or os.path.join(REPO, "runs", "accuracy" + suffix))
    args.out = os.path.abspath(args.out or os.path.join(REPO, "bench", "results", "accuracy%s.json" % suffix))
    protocols = list(PROTOCOLS) if args.protocol == "all" else [args.protocol]
    raw = dict((proto, os.path.join(os.path.abspath(args.data), PROTOCOLS[proto]["dataset"])) for proto in protocols)
    missing = [path for path in raw.values() if not os.path.isdir(path)]
    if missing:
        print("accuracy: raw data missing: %s (use --data)" % ", ".join(sorted(set(missing))), file=sys.stderr)
        return 2
    args.sources = raw
    args.test_sources = dict((proto, os.path.join(os.path.abspath(args.data), PROTOCOLS[proto]["test_dataset"]))
                             for proto in protocols if PROTOCOLS[proto].get("test_dataset"))
    missing = [path for path in args.test_sources.values() if not os.path.isdir(path)]
    if missing:
        print("accuracy: raw data missing: %s (use --data)" % ", ".join(sorted(set(missing))), file=sys.stderr)
        return 2
    results = {}
    if os.path.isfile(args.out):
        with open(args.out) as handle:
            results = json.load(handle)
    results["schema_version"] = 1
    results.setdefault("protocols", {})
    failures = []
    for proto in protocols:
        cfg = protocol_settings(proto, args)
        source = raw[proto]
        if cfg["limit"]:
            subset = os.path.join(args.work, proto, "raw-subset")
            make = yaseen_subset if proto == "yaseen-cv5" else physionet_subset if proto.startswith("physionet") else None
            if not make:
                cfg["limit"] = None          # the ICBHI sample is tiny already: no subset
            else:
                os.makedirs(os.path.dirname(subset), exist_ok=True)
                source = make(raw[proto], subset, cfg["limit"])
                if proto == "physionet-loso":
                    args.sources[proto] = source
                if proto in CROSS_DATASET:
                    args.test_sources[proto] = yaseen_subset(args.test_sources[proto],
                                                             os.path.join(args.work, proto, "test-subset"),
                                                             cfg["limit"])
        signature = dict((k, v) for k, v in cfg.items() if k != "dataset")
        signature.update(seed=args.seed, quick=args.quick)
        wanted = range(cfg["folds"])
        if args.only:
            wanted = [int(i) for i in args.only.split(",") if int(i) < cfg["folds"]]
        log("%s: %d fold(s) %s; R=%d, %d epoch(s), window %s s hop %s s, balance %s, limit %s; work %s"
            % (proto, len(wanted), list(wanted), cfg["size"], cfg["epochs"], cfg["window"], cfg["hop"], cfg["balance"],
               cfg["limit"], os.path.join(args.work, proto)))
        start = time.time()
        failures += run_folds(proto, cfg, source, wanted, args, signature)
        # every finished fold with the current settings counts, also ones from earlier (resumed) runs
        folds = [done for done in (saved_result(proto, fold, args.work, signature) for fold in range(cfg["folds"]))
                 if done is not None]
        if not folds:
            continue
        summary = summarise(proto, folds)
        results["protocols"][proto] = {
            "dataset": PROTOCOLS[proto]["dataset"], "source": raw[proto], "settings": signature,
            "complete": len(folds) == cfg["folds"], "folds_total": cfg["folds"], "summary": summary,
            "folds": folds, "wall_seconds_this_run": time.time() - start,
            "command": "python bench/accuracy.py --protocol %s%s" % (proto, " --quick" if args.quick else ""),
            "ran_as": "python bench/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_record(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        results["protocols"] = merge_saved_protocols(args.out, {proto: results["protocols"][proto]})
        with open(args.out + ".part", "w") as handle:
            json.dump(results, handle, indent=1)
            handle.write("\n")
        os.replace(args.out + ".part", args.out)
    print("\n==== accuracy (%s) ====" % os.path.relpath(args.out, REPO))
    for proto in protocols:
        entry = results["protocols"].get(proto)
        if entry:
            # folds run side by side: their seconds add up to more than the wall clock
            wall = entry.get("wall_seconds_this_run")
            print(headline(proto, entry["summary"], entry["folds_total"]) +
                  ("" if entry["complete"] else "  [PARTIAL]") + "  (%s%.0f s summed over the folds)"
                  % ("%.0f s wall, " % wall if wall is not None else "", entry["summary"]["total_seconds"]))
        else:
            print("%s: no fold finished" % proto)
    print("\n" + "\n".join(markdown_rows(results)))
    for failure in failures:
        print("FAILED " + failure.splitlines()[0])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

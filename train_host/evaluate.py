#!/usr/bin/env python3
"""Evaluate an exported model on a prepared dataset split, window- and recording-level.

    python train_host/evaluate.py --model-dir models/heart DATA [--split test] [--backend onnxruntime|torch]

By default it runs the exported ONNX with onnxruntime on tensors built by
stetho.tensor.imagenet_tensor from PNGs read by stetho.png, i.e. exactly what
the device computes; ``--backend torch`` runs the PyTorch checkpoint on the
training-side tensors instead.  Recording level = the mean of the window
probabilities of each recording (prepare.json's "recording").

Every figure is given twice: at argmax, and at the decision rule model.json
stores (``decision``: the operating point chosen on val after training, see
train_host/calibrate.py; the device's exam verdict applies the same rule to the
same recording-level means).  A card without a rule is scored at argmax only.

Writes into the model folder: metrics.json, report.md, confusion_matrix.png,
roc.png, training_curves.png (from train_log.csv) and predictions.csv (one row
per image: path (relative to DATA), recording, label, prediction, then p_<class>
for every class in labels.txt order, printed with 9 significant digits).  With
the onnxruntime backend the summary also goes into model.json's "metrics".
Nothing written names a folder of this machine: the model and the dataset are
named by their folder names and the dataset by its fingerprint.
"""
import argparse
import csv
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # spin briefly at OpenMP barriers (see train.py)
import numpy as np  # noqa: E402

from stetho import ModelCard  # noqa: E402
from stetho.contract import contract_differences  # noqa: E402
from stetho.decision import DecisionRule  # noqa: E402
from stetho.errors import ConfigError  # noqa: E402
from stetho.labels import read_labels  # noqa: E402
from stetho.modelcard import utc_now  # noqa: E402
from stetho.png import read_png  # noqa: E402
from stetho.tensor import imagenet_tensor  # noqa: E402
from train_host import metrics as M  # noqa: E402
from train_host.data import load_prepared  # noqa: E402

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_sensitivity", "macro_specificity", "icbhi_score", "mcc",
                "roc_auc")
RULE_KEYS = ("accuracy", "balanced_accuracy", "icbhi_sensitivity", "icbhi_specificity", "icbhi_score", "mcc")


def open_model(model_dir):
    """(ModelCard, the ONNX file's bytes) after checking labels.txt and the ONNX's sha256 against model.json:
    the bytes checked are the bytes run."""
    card = ModelCard.load(model_dir)
    labels = read_labels(os.path.join(model_dir, "labels.txt"))
    if labels != card.classes:
        raise ConfigError("%s: labels %s differ from model.json's classes %s"
                          % (os.path.join(model_dir, "labels.txt"), labels, card.classes))
    return card, card.read_onnx(model_dir)


def check_compatible(card, dataset, model_dir):
    """Refuse a dataset rendered with another contract or labelled with other classes."""
    if card.contract != dataset.contract:
        raise ConfigError("%s: images were rendered with a different contract than %s was trained on (%s); "
                          "prepare the data with the model's contract"
                          % (dataset.root, model_dir, "; ".join(contract_differences(card.contract, dataset.contract))))
    if card.classes != dataset.classes:
        raise ConfigError("%s: classes %s differ from the model's %s" % (dataset.root, dataset.classes, card.classes))


def predict_onnx(onnx_model, card, dataset, entries, threads=None, progress=True):
    """Probabilities (n, N) from onnxruntime (``onnx_model``: the ONNX bytes of :func:`open_model`, or a path), one
    image at a time as the device runs it."""
    import onnxruntime
    from tqdm import tqdm
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    out = np.zeros((len(entries), card.num_classes))
    for i, entry in enumerate(tqdm(entries, desc="onnxruntime", unit="img", disable=not progress, leave=False)):
        tensor = imagenet_tensor(read_png(os.path.join(dataset.root, entry["path"])), card.resolution)
        out[i] = session.run([card.output_blob], {card.input_blob: tensor})[0][0]
    return out


def predict_torch(model_dir, dataset, split, checkpoint="model_best.pth.tar", batch_size=32):
    """Probabilities (n, N) from the PyTorch checkpoint on the training-side tensors."""
    import torch
    from train_host.data import SpectrogramImages
    from train_host.export import load_checkpoint, model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(os.path.join(model_dir, checkpoint)))
    images = SpectrogramImages(dataset, split, cache=False)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    out = []
    with torch.no_grad():
        for batch, _ in loader:
            out.append(torch.softmax(model(batch), dim=1).double().numpy())
    return np.concatenate(out)


def write_predictions(path, entries, classes, probs):
    tmp = path + ".part"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "recording", "label", "prediction"] + ["p_%s" % c for c in classes])
        for entry, row in zip(entries, probs):
            writer.writerow([entry["path"], entry["recording"], entry["label"], classes[int(row.argmax())]]
                            + ["%.9g" % p for p in row])
    os.replace(tmp, path)


def read_predictions(path):
    """predictions.csv → (rows as dicts, probabilities (n, N), class names)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = [key[2:] for key in rows[0] if key.startswith("p_")] if rows else []
    probs = np.array([[float(row["p_" + c]) for c in classes] for row in rows])
    return rows, probs, classes


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(path, results, classes):
    """Confusion matrices (counts, rows = truth) of every level side by side."""
    plt = _pyplot()
    levels = list(results)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels) + 0.5, 4.2), squeeze=False)
    for ax, level in zip(axes[0], levels):
        cm = np.asarray(results[level]["confusion_matrix"])
        shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(cm):
            ax.text(c, r, str(value), ha="center", va="center", color="white" if shares[r, c] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("%s level (acc %.3f, MAcc %.3f)" % (level, results[level]["accuracy"],
                                                          results[level]["balanced_accuracy"]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path, curves, classes):
    """One-vs-rest ROC curves per class, for each level (curves: {level: (y_true, probs)})."""
    from sklearn.metrics import roc_auc_score, roc_curve
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.2), squeeze=False)
    for ax, (level, (y_true, probs)) in zip(axes[0], curves.items()):
        for c, name in enumerate(classes):
            target = y_true == c
            if target.all() or not target.any():
                continue
            fpr, tpr, _ = roc_curve(target, probs[:, c])
            ax.plot(fpr, tpr, label="%s (AUC %.3f)" % (name, roc_auc_score(target, probs[:, c])))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title("ROC, %s level (one vs rest)" % level)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_log(path):
    """train_log.csv → {column: list of floats} (blank cells → nan)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value) if value not in ("", None) else float("nan"))
            except ValueError:
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_training_curves(path, log_path):
    """Loss, validation metrics and learning rate per epoch from train_log.csv. False if there is no log."""
    if not os.path.isfile(log_path):
        return False
    log = read_log(log_path)
    if not log.get("epoch"):
        return False
    plt = _pyplot()
    epochs = log["epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key in ("train_loss", "val_loss"):
        if key in log:
            axes[0].plot(epochs, log[key], marker=".", label=key)
    axes[0].set_title("loss")
    for key in ("train_accuracy", "val_accuracy", "val_balanced_accuracy", "val_icbhi_score"):
        if key in log:
            axes[1].plot(epochs, log[key], marker=".", label=key)
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("accuracy / clinical metrics")
    if "lr" in log:
        axes[2].plot(epochs, log["lr"], marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value):
    return "–" if value is None else "%.4f" % value


def write_report(path, summary, dataset):
    """A short markdown report of metrics.json."""
    classes = summary["classes"]
    lines = ["# Evaluation: %s on %s/%s" % (summary["model_dir"], summary["dataset"]["name"], summary["split"]),
             "",
             "Backend: %s (%s). %d images from %d recordings. Recording level = mean of window probabilities."
             % (summary["backend"], summary["onnx_file"] if summary["backend"] == "onnxruntime" else "checkpoint",
                summary["n_images"], summary["n_recordings"]), ""]
    patients = [e.get("patient") for e in dataset.images]
    if all(p is None for p in patients):
        lines += ["Note: the dataset has no patient ids; splits are by recording, so one patient's recordings "
                  "may fall in different splits.", ""]
    lines += ["| metric | window | recording |", "| --- | --- | --- |"]
    for key in SUMMARY_KEYS:
        lines.append("| %s | %s | %s |" % (key, _fmt(summary["window"][key]), _fmt(summary["recording"][key])))
    lines += ["", "ICBHI score: %s." % summary["window"]["icbhi_definition"],
              "ROC AUC: %s." % summary["window"]["roc_auc_kind"], "",
              "| class | support (win/rec) | sensitivity (win/rec) | specificity (win/rec) |", "| --- | --- | --- | --- |"]
    for name in classes:
        w, r = summary["window"]["per_class"][name], summary["recording"]["per_class"][name]
        lines.append("| %s | %d / %d | %s / %s | %s / %s |" % (name, w["support"], r["support"], _fmt(w["sensitivity"]),
                                                               _fmt(r["sensitivity"]), _fmt(w["specificity"]),
                                                               _fmt(r["specificity"])))
    at_rule = summary.get("at_rule")
    if at_rule:
        lines += ["", "At the stored decision rule, %s (the device's exam verdict):" % at_rule["rule"], "",
                  "| metric | window | recording |", "| --- | --- | --- |"]
        for key in RULE_KEYS:
            lines.append("| %s | %s | %s |" % (key, _fmt(at_rule["window"][key]), _fmt(at_rule["recording"][key])))
    else:
        lines += ["", "Decision rule: argmax (model.json stores no operating point; train_host/calibrate.py "
                      "chooses one)."]
    for level in ("window", "recording"):
        for name_of, result in (("argmax", summary[level]), ("rule", (at_rule or {}).get(level))):
            if result is None:
                continue
            lines += ["", "Confusion matrix, %s level, %s (rows: true, columns: predicted)"
                      % (level, "argmax" if name_of == "argmax" else "at the stored rule"), "",
                      "| | " + " | ".join(classes) + " |", "| --- " * (len(classes) + 1) + "|"]
            for name, row in zip(classes, result["confusion_matrix"]):
                lines.append("| **%s** | " % name + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion](confusion_matrix.png) ![roc](roc.png) ![curves](training_curves.png)", ""]
    tmp = path + ".part"
    with open(tmp, "w") as handle:
        handle.write("\n".join(lines))
    os.replace(tmp, path)


def rule_summary(rule):
    """(the rule's ``decide`` function for metrics.evaluate_levels, its description) — (None, None) for argmax."""
    if rule.rule == "argmax":
        return None, None
    return (lambda probs: np.array([rule.decide(row).index for row in probs], dtype=np.int64)), rule.describe()


def evaluate(model_dir, data, split="test", backend="onnxruntime", normal_class=None, threads=None, log=print,
             progress=True):
    """Run the model on ``split`` of ``data``, write the files of the module doc, return the metrics dict."""
    model_dir = os.path.abspath(model_dir)
    card, onnx_model = open_model(model_dir)
    dataset = load_prepared(data)
    check_compatible(card, dataset, model_dir)
    entries = dataset.split(split)
    if not entries:
        raise ConfigError("%s: split %r has no images" % (dataset.root, split))
    start = time.time()
    if backend == "onnxruntime":
        probs = predict_onnx(onnx_model, card, dataset, entries, threads, progress)
    elif backend == "torch":
        probs = predict_torch(model_dir, dataset, split)
    else:
        raise ConfigError("unknown backend %r (onnxruntime or torch)" % backend)
    elapsed = time.time() - start
    y_true = np.array([card.classes.index(e["label"]) for e in entries])
    recordings = [e["recording"] for e in entries]
    levels = M.evaluate_levels(y_true, probs, recordings, card.classes, normal_class)
    rule = DecisionRule(card.decision, card.classes, os.path.join(model_dir, "model.json"))
    decide, described = rule_summary(rule)
    at_rule = None
    if decide is not None:
        at_rule = M.evaluate_levels(y_true, probs, recordings, card.classes, normal_class, decide)
        at_rule.update(rule=described, decision=rule.as_dict())
    rec_ids, rec_true, rec_probs = M.aggregate_recordings(recordings, y_true, probs)
    summary = {"model_dir": os.path.basename(model_dir), "split": split, "backend": backend,
               "onnx_file": card.onnx_file, "onnx_sha256": card.onnx_sha256, "classes": card.classes,
               "dataset": {"name": os.path.basename(dataset.root), "fingerprint": dataset.fingerprint},
               "n_images": len(entries), "n_recordings": len(rec_ids), "seconds": elapsed,
               "images_per_s": len(entries) / max(elapsed, 1e-9), "created": utc_now(), "at_rule": at_rule}
    summary.update(levels)
    files = {}
    files["metrics"] = os.path.join(model_dir, "metrics.json")
    with open(files["metrics"] + ".part", "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    os.replace(files["metrics"] + ".part", files["metrics"])
    files["predictions"] = os.path.join(model_dir, "predictions.csv")
    write_predictions(files["predictions"], entries, card.classes, probs)
    files["confusion"] = os.path.join(model_dir, "confusion_matrix.png")
    plot_confusion(files["confusion"], levels, card.classes)
    files["roc"] = os.path.join(model_dir, "roc.png")
    plot_roc(files["roc"], {"window": (y_true, probs), "recording": (rec_true, rec_probs)}, card.classes)
    curves = os.path.join(model_dir, "training_curves.png")
    if plot_training_curves(curves, os.path.join(model_dir, "train_log.csv")):
        files["curves"] = curves
    files["report"] = os.path.join(model_dir, "report.md")
    write_report(files["report"], summary, dataset)
    if backend == "onnxruntime":
        card.metrics[split] = dict((level, dict((k, levels[level][k]) for k in SUMMARY_KEYS))
                                   for level in ("window", "recording"))
        card.metrics[split].update(n_images=len(entries), n_recordings=len(rec_ids))
        if at_rule is not None:
            card.metrics[split]["at_rule"] = dict((level, dict((k, at_rule[level][k]) for k in RULE_KEYS))
                                                  for level in ("window", "recording"))
            card.metrics[split]["at_rule"]["rule"] = described
        card.save(model_dir)
    summary["files"] = files
    for level in ("window", "recording"):
        m = levels[level]
        log("evaluate: %-9s n=%-5d acc %.4f  MAcc %.4f  SE %s  SP %s  ICBHI %s  MCC %s  AUC %s"
            % (level, m["n"], m["accuracy"], m["balanced_accuracy"], _fmt(m["macro_sensitivity"]),
               _fmt(m["macro_specificity"]), _fmt(m["icbhi_score"]), _fmt(m["mcc"]), _fmt(m["roc_auc"])))
    if at_rule is not None:
        m = at_rule["recording"]
        log("evaluate: recording at the stored rule %s: acc %.4f  MAcc %.4f  SE %s  SP %s  MCC %s"
            % (described, m["accuracy"], m["balanced_accuracy"], _fmt(m["icbhi_sensitivity"]),
               _fmt(m["icbhi_specificity"]), _fmt(m["mcc"])))
    else:
        log("evaluate: decision rule: argmax (model.json stores no operating point)")
    log("evaluate: %s split, %s backend, %.1f images/s; wrote %s" % (split, backend, summary["images_per_s"],
                                                                     ", ".join(sorted(os.path.basename(f) for f in
                                                                                      files.values()))))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DATA", help="prepared dataset (prepare.json inside)")
    parser.add_argument("--model-dir", required=True, help="model folder (model.json, labels.txt, the ONNX)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"),
                        help="onnxruntime on the exported ONNX (default, = the device) or the PyTorch checkpoint")
    parser.add_argument("--normal-class", help="the normal class for the ICBHI score (default: normal/healthy/N)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        evaluate(args.model_dir, args.data, args.split, args.backend, args.normal_class, args.threads)
    except (ConfigError, ValueError) as error:
        print("evaluate: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

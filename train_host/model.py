#!/usr/bin/env python3
"""One command to a deployable model: a recipe's prepare.py → train.py on a whole dataset, timed.

    make model RECIPE=physionet2016 DATA=../shared/data/physionet2016
    python train_host/model.py physionet2016 ../shared/data/physionet2016 [--model-dir models/physionet2016]
    python train_host/model.py yaseen2018 ../shared/data/yaseen2018 --epochs 1 --size 32     (a quick try)

The recipe (train_host/recipes.py: ``python train_host/recipes.py`` lists them) holds the settings the accuracy
protocol measured (bench/accuracy.py reads the same objects).  The recordings are split once by recording group
(the recipe's ``split``: 0.7/0.15/0.15 stratified, or the dataset's official split): train.py trains on train,
exports the ONNX, chooses the decision rule on val (the operating point stored in model.json) and tests on the
held-back test split (metrics.json, report.md).  The model folder is then what ``systemd/install.sh --model-dir``
installs.  Prints the wall time of each step and in all, and the install command.

Writes MODEL_DIR (default models/<recipe>) and the prepared images in PREPARED (default data/<recipe>), both below
the repository root unless given; never writes inside DATA.  A MODEL_DIR that already holds a model is refused
unless --force (which also makes prepare.py redo images made with other settings); a re-run without --force
reuses the images prepare.py already made with the same settings.  Exit status: 0 done, 2 bad arguments, else the
failing step's own status (its message is printed above ours).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):
    sys.path.insert(0, REPO)

from train_host import recipes  # noqa: E402

MODEL_FILES = ("resnet18.onnx", "labels.txt", "model.json")   # what install.sh needs
TRAIN_MADE = MODEL_FILES + ("checkpoint.pth.tar", "model_best.pth.tar", "train_log.csv", "metrics.json")
RECORD = "recipe.json"          # in the model folder: the recipe, its overrides and the time each step took


class ModelError(Exception):
    """Bad arguments or folders, found before anything is written (one line, exit 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the flag (no usage block)."""

    def error(self, message):
        raise ModelError(message)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("%r is not a positive whole number" % text)
    return value


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="recipes: %s" % ", ".join(recipes.RECIPES))
    p.add_argument("recipe", metavar="RECIPE", help="a recipe name (%s)" % ", ".join(recipes.RECIPES))
    p.add_argument("data", metavar="DATA", help="the dataset's folder (e.g. ../shared/data/physionet2016)")
    p.add_argument("--model-dir", help="the model folder (default: models/<recipe> below the repository)")
    p.add_argument("--prepared", help="the prepared images (default: data/<recipe> below the repository)")
    p.add_argument("--epochs", type=positive_int, help="instead of the recipe's (a quick try: 1)")
    p.add_argument("--size", type=positive_int, help="image size R instead of the recipe's (a quick try: 32)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--threads", type=positive_int, help="train.py's CPU threads (default: one per core)")
    p.add_argument("--workers", type=positive_int, default=min(4, os.cpu_count() or 1),
                   help="prepare.py's worker processes")
    p.add_argument("--force", action="store_true", help="replace the model (and images made with other settings)")
    return p.parse_args(argv)


def below_repo(path, default):
    """``path`` made absolute (relative to the working directory), or ``default`` below the repository."""
    return os.path.abspath(path) if path else os.path.join(REPO, default)


def check_model_dir(model_dir, force):
    """Refuse a model folder holding a model (unless ``force``) or files train.py did not make."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ModelError("MODEL_DIR %s is a file, not a folder" % short(model_dir))
    present = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    if not present:
        return
    if not any(name in TRAIN_MADE for name in present):
        raise ModelError("MODEL_DIR %s is not empty and holds no model (no %s): choose another folder"
                         % (short(model_dir), " or ".join(TRAIN_MADE[:3])))
    if not force:
        raise ModelError("MODEL_DIR %s already holds a model: FORCE=1 (--force) replaces it, or choose another "
                         "MODEL_DIR" % short(model_dir))


def settings_of(recipe, args):
    """The recipe's settings dict with the --epochs/--size overrides applied."""
    cfg = recipes.settings(recipe)
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.size:
        cfg["size"] = args.size
    return cfg


def commands(recipe, cfg, data, prepared, model_dir, args):
    """[(step, command)]: prepare.py and train.py as recipes.py builds them for bench/accuracy.py too."""
    py = sys.executable
    prepare = recipes.prepare_command(py, cfg, data, prepared, recipe.split, args.seed, args.workers)
    if args.force:
        prepare.append("--force")
    train = recipes.train_command(py, cfg, prepared, model_dir, args.seed, args.threads)
    return [("prepare", prepare), ("train", train)]


def short(path):
    """``path`` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def duration(seconds):
    """'2 h 05 min', '3 min 07 s' or '41 s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return "%d h %02d min" % (seconds // 3600, seconds % 3600 // 60)
    if seconds >= 60:
        return "%d min %02d s" % (seconds // 60, seconds % 60)
    return "%d s" % seconds


def say(line):
    print("model: %s" % line, flush=True)


def data_summary(prepared):
    """One line of prepare.json's counts, and the warnings a reader of the figures needs."""
    with open(os.path.join(prepared, "prepare.json")) as handle:
        manifest = json.load(handle)
    recordings = dict((split, set()) for split in ("train", "val", "test"))
    for image in manifest["images"]:
        recordings[image["split"]].add(image["recording"])
    line = "%d images of %d recordings: train %d, val %d, test %d recordings; %d input(s) skipped" % (
        len(manifest["images"]), sum(len(r) for r in recordings.values()), len(recordings["train"]),
        len(recordings["val"]), len(recordings["test"]), len(manifest["skipped"]))
    warnings = []
    if not recordings["val"]:
        warnings.append("no val recordings: the decision rule stays argmax (nothing to choose an operating point on)")
    if not recordings["test"]:
        warnings.append("no test recordings: nothing is held back, so no test figure is reported")
    empty = sorted(c for c, n in manifest["counts"]["train"].items() if not n)
    if empty:
        warnings.append("no training images of %s: the model cannot learn %s" % (", ".join(empty),
                                                                              "it" if len(empty) == 1 else "them"))
    return line, warnings


def test_summary(model_dir):
    """One line of metrics.json (the held-back test split), or None without one."""
    path = os.path.join(model_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        metrics = json.load(handle)
    m = metrics["recording"]
    line = "held back, recording level (n=%d): accuracy %.3f, balanced accuracy %.3f%s (argmax)" % (
        metrics["n_recordings"], m["accuracy"], m["balanced_accuracy"],
        ", AUC %.3f" % m["roc_auc"] if m.get("roc_auc") is not None else "")
    rule = (metrics.get("at_rule") or {}).get("recording")
    if rule:
        line += "; at the stored rule (the device's verdict) %.3f, balanced %.3f" % (rule["accuracy"],
                                                                                    rule["balanced_accuracy"])
    return line


def run(argv=None):
    args = parse_args(argv)
    recipe = recipes.get(args.recipe)
    if not args.data:
        raise ModelError("DATA= is required: the folder holding the %s recordings (e.g. ../shared/data/%s)"
                         % (recipe.name, recipe.dataset))
    data = os.path.abspath(args.data)
    if not os.path.isdir(data):
        raise ModelError("DATA folder %s %s" % (args.data, "is not a folder" if os.path.exists(data) else
                                                "does not exist"))
    model_dir = below_repo(args.model_dir, os.path.join("models", recipe.name))
    prepared = below_repo(args.prepared, os.path.join("data", recipe.name))
    if os.path.realpath(model_dir) == os.path.realpath(prepared):
        raise ModelError("MODEL_DIR and PREPARED are the same folder %s" % short(model_dir))
    check_model_dir(model_dir, args.force)
    cfg = settings_of(recipe, args)
    overrides = dict((k, getattr(args, k)) for k in ("epochs", "size") if getattr(args, k))
    say("recipe %s (the settings of python bench/accuracy.py --protocol %s)%s: R=%d, %d epoch(s), split %s; "
        "%s → %s" % (recipe.name, recipes.PROTOCOL_OF[recipe.name],
                     ", overridden: " + ", ".join("%s %s" % kv for kv in sorted(overrides.items())) if overrides
                     else "", cfg["size"], cfg["epochs"], recipe.split, short(data), short(model_dir)))
    if recipe.note:
        say("note: " + recipe.note)
    seconds = {}
    start = time.time()
    for step, cmd in commands(recipe, cfg, data, prepared, model_dir, args):
        say("%s: %s" % (step, " ".join(short(c) if os.path.isabs(c) else c for c in cmd)))
        began = time.time()
        code = subprocess.call(cmd, cwd=REPO)
        seconds[step] = time.time() - began
        if code != 0:
            say("%s.py failed (exit %d after %s); its message is above%s" % (
                step, code, duration(seconds[step]), "" if step == "prepare" else
                "; once it is fixed, FORCE=1 (--force) starts over in %s" % short(model_dir)))
            return code
        say("%s done in %s" % (step, duration(seconds[step])))
        if step == "prepare":
            line, warnings = data_summary(prepared)
            say("data: " + line)
            for warning in warnings:
                say("WARNING: " + warning)
    total = time.time() - start
    missing = [name for name in MODEL_FILES if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        say("train.py left no %s in %s" % (", ".join(missing), short(model_dir)))
        return 1
    with open(os.path.join(model_dir, "model.json")) as handle:
        training = json.load(handle).get("training") or {}
    device = "%s%s" % (training.get("device") or "?", ", %s autocast" % training["amp"] if training.get("amp") else "")
    record = {"recipe": recipe.name, "protocol": recipes.PROTOCOL_OF[recipe.name], "split": recipe.split,
              "overrides": overrides, "settings": cfg, "seed": args.seed, "seconds": dict(seconds, total=total),
              "device": device, "cpus": os.cpu_count(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(model_dir, RECORD + ".part"), "w") as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
    os.replace(os.path.join(model_dir, RECORD + ".part"), os.path.join(model_dir, RECORD))
    tested = test_summary(model_dir)
    rel = os.path.relpath(model_dir, REPO)
    rel = model_dir if rel.startswith("..") else rel
    print("\n== %s: ready for the device ==" % short(model_dir))
    print("  test      %s" % (tested or "none: the split held no test recordings back"))
    if recipe.note:
        print("  note      %s" % recipe.note)
    if os.path.isfile(os.path.join(model_dir, "report.md")):
        print("  report    %s" % short(os.path.join(model_dir, "report.md")))
    print("  took      %s (prepare %s, train + export + test %s) on %d CPU(s), trained on %s"
          % (duration(total), duration(seconds["prepare"]), duration(seconds["train"]), os.cpu_count() or 0, device))
    print("  install   sudo systemd/install.sh --model-dir %s" % rel)
    return 0


def main(argv=None):
    try:
        return run(argv)
    except (ModelError, recipes.RecipeError) as error:
        print("model: %s" % error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("model: interrupted; the same command with FORCE=1 (--force) starts over", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Choose (again) the decision rule a model's card stores, on labelled recordings.

    python train_host/calibrate.py models/heart data/heart                      # its own val split (as train.py did)
    python train_host/calibrate.py models/heart data/heart --target-sensitivity 0.9
    python train_host/calibrate.py models/heart data/clinic-b                   # another clinic's labelled set

DATA is a prepared dataset rendered with the model's contract (``prepare.py SOURCE DATA --contract-from
MODEL_DIR --split test`` makes one from any labelled recordings).  The model's ONNX (checked against its
sha256) scores every image of ``--split`` (default: val of the model's own training set, every split of any
other set); each recording's mean probabilities are what the device's exam computes; the rule is chosen on
them (train_host/operating_point.py): the threshold on P(abnormal) = 1 − P(normal) with the best balanced
accuracy, or the most specific one that reaches ``--target-sensitivity``.  It is written into model.json's
``decision`` block with what it was chosen on; evaluate.py and the device apply it from then on.  Models
without a normal class keep argmax.  ``--dry-run`` prints the rule without writing it.
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stetho.decision import DecisionRule  # noqa: E402
from stetho.errors import ConfigError  # noqa: E402
from train_host import metrics as M  # noqa: E402
from train_host.data import SPLITS, load_prepared  # noqa: E402
from train_host.evaluate import check_compatible, open_model, predict_onnx  # noqa: E402
from train_host.operating_point import OperatingPointError, argmax_block, choose_rule  # noqa: E402


def default_split(card, dataset):
    """'val' when ``dataset`` is the one the model was trained on (its test split stays unseen), else 'all'."""
    return "val" if (card.dataset or {}).get("fingerprint") == dataset.fingerprint else "all"


def recording_means(model_dir, data, split, threads=None, progress=False):
    """(card, dataset, recording ids, labels (class indices), mean probabilities (n, N)) of ``split`` of ``data``
    ('all': every split) through the model's ONNX, one image at a time as the device runs it."""
    card, onnx_model = open_model(model_dir)
    dataset = load_prepared(data)
    check_compatible(card, dataset, model_dir)
    entries = dataset.images if split == "all" else dataset.split(split)
    if not entries:
        raise ConfigError("%s: split %r has no images to choose a decision rule on" % (dataset.root, split))
    probs = predict_onnx(onnx_model, card, dataset, entries, threads, progress)
    labels = [card.classes.index(e["label"]) for e in entries]
    ids, truth, means = M.aggregate_recordings([e["recording"] for e in entries], labels, probs)
    return card, dataset, ids, truth, means


def calibrate(model_dir, data, split=None, target_sensitivity=None, normal_class=None, write=True, fallback=False,
              threads=None, log=print):
    """Choose the rule on ``split`` of ``data`` and (``write``) store it in model.json; returns the block.

    ``fallback``: where the recordings cannot choose a threshold (one class only, no val), keep argmax with the
    reason in the block instead of raising OperatingPointError (train.py's behaviour: a model is still usable).
    """
    model_dir = os.path.abspath(model_dir)
    dataset = load_prepared(data)
    if split is None:
        split = default_split(open_model(model_dir)[0], dataset)
    try:
        card, dataset, ids, truth, means = recording_means(model_dir, data, split, threads)
    except ConfigError as error:
        if not (fallback and "has no images" in str(error)):
            raise
        card = open_model(model_dir)[0]
        block = argmax_block("no %s recordings to choose an operating point on: argmax kept" % split, split)
    else:
        try:
            block = choose_rule(card.classes, truth, means, normal_class, target_sensitivity, split,
                                dataset.fingerprint)
        except OperatingPointError as error:
            if not fallback:
                raise
            block = argmax_block("%s: argmax kept" % error, split)
    rule = DecisionRule(block, card.classes)
    chosen = block.get("chosen_on") or {}
    if rule.rule == "threshold":
        log("calibrate: decision rule %s; there (%s, %d abnormal): Se %.3f  Sp %.3f  MAcc %.3f"
            % (rule.describe(), os.path.basename(dataset.root), chosen["positives"], chosen["sensitivity"],
               chosen["specificity"], chosen["balanced_accuracy"]))
    else:
        log("calibrate: decision rule argmax (%s)" % block.get("reason"))
    if split == "test" and (card.dataset or {}).get("fingerprint") == dataset.fingerprint:
        log("calibrate: WARNING the rule was chosen on the model's own test split: test figures at this rule are "
            "optimistic from now on")
    if write:
        card.decision = block
        card.save(model_dir)
        log("calibrate: wrote the decision rule into %s" % os.path.join(model_dir, "model.json"))
    return block


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (model.json, labels.txt, the ONNX)")
    parser.add_argument("data", metavar="DATA", help="prepared dataset in the model's contract (prepare.json)")
    parser.add_argument("--split", choices=SPLITS + ("all",),
                        help="recordings to choose on (default: val of the model's own dataset, else all)")
    parser.add_argument("--target-sensitivity", type=float, metavar="S",
                        help="the most specific threshold whose sensitivity on these recordings is at least S "
                             "(0 < S <= 1; default: the best balanced accuracy)")
    parser.add_argument("--normal-class", help="the normal class (default: normal / healthy / N)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--dry-run", action="store_true", help="print the rule, do not write model.json")
    args = parser.parse_args(argv)
    if args.target_sensitivity is not None and not 0.0 < args.target_sensitivity <= 1.0:  # NaN fails too
        parser.error("--target-sensitivity must be in (0, 1], not %r" % args.target_sensitivity)
    try:
        calibrate(args.model_dir, args.data, args.split, args.target_sensitivity, args.normal_class,
                  write=not args.dry_run, threads=args.threads)
    except (ConfigError, OperatingPointError, ValueError) as error:
        print("calibrate: %s" % error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

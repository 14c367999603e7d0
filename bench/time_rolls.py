#!/usr/bin/env python3
"""Test-time averaging over time rolls: would the Nano gain by classifying each window K times, rolled?

    python bench/time_rolls.py [--work runs/accuracy/yaseen-cv5] [--rolls 8]

No training: after `bench/accuracy.py --protocol yaseen-cv5`, each finished fold's ONNX classifies its test
images as they are and rolled in time (columns) by 0, 1/K, ... (K-1)/K of the width, the K probability vectors
averaged, as train.py's time-roll augmentation rolls them.  Prints and writes (bench/results/time-rolls.json)
both accuracies and the images each gets wrong.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from stetho.png import read_png  # noqa: E402
from stetho.tensor import imagenet_tensor  # noqa: E402


def rolled_probabilities(session, image, rolls):
    """(rolls, N) probabilities of ``image`` (R×R×3 uint8) rolled by k·R//rolls columns, k = 0 … rolls-1."""
    size = image.shape[1]
    return np.stack([session.run(None, {"input_0": imagenet_tensor(np.roll(image, k * size // rolls, axis=1),
                                                                   size)})[0][0] for k in range(rolls)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "accuracy", "yaseen-cv5"),
                        help="a protocol's folder of finished folds (fold-*/model/resnet18.onnx, fold-*/data/test)")
    parser.add_argument("--rolls", type=int, default=8, help="K: rolls per image, the first being none")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "time-rolls.json"))
    args = parser.parse_args(argv)
    import onnxruntime
    folds = sorted(glob.glob(os.path.join(args.work, "fold-*", "model", "resnet18.onnx")))
    if not folds or args.rolls < 1:
        parser.error("%s: no finished fold (fold-*/model/resnet18.onnx); run bench/accuracy.py first"
                     % args.work if not folds else "--rolls must be at least 1")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    wrong = {"plain": [], "rolled": []}
    total = 0
    for onnx_path in folds:
        model_dir = os.path.dirname(onnx_path)
        with open(os.path.join(model_dir, "labels.txt")) as handle:
            classes = handle.read().split()
        session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        for path in sorted(glob.glob(os.path.join(os.path.dirname(model_dir), "data", "test", "*", "*.png"))):
            label = classes.index(os.path.basename(os.path.dirname(path)))
            probs = rolled_probabilities(session, read_png(path), args.rolls)
            name = os.path.relpath(path, args.work)
            if int(np.argmax(probs[0])) != label:
                wrong["plain"].append(name)
            if int(np.argmax(probs.mean(axis=0))) != label:
                wrong["rolled"].append(name)
            total += 1
    result = {"work": os.path.abspath(args.work), "folds": len(folds), "rolls": args.rolls, "images": total,
              "correct": {k: total - len(v) for k, v in wrong.items()}, "wrong": wrong}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
    print("time rolls: %d folds, %d test images; correct as they are %d, averaged over %d rolls %d; wrong in both %d"
          % (len(folds), total, result["correct"]["plain"], args.rolls, result["correct"]["rolled"],
             len(set(wrong["plain"]) & set(wrong["rolled"]))))
    print("wrote %s" % os.path.relpath(args.out, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())

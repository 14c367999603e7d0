#!/usr/bin/env python3
"""Classify one recording or spectrogram with a trained model, like jetson-inference's imagenet.py.

    python deploy_jetson/classify.py --model=models/heart/resnet18.onnx --labels=models/heart/labels.txt \\
        recording.wav overlay.png
    python deploy_jetson/classify.py --model=models/heart/resnet18.onnx --labels=models/heart/labels.txt \\
        --input_blob=input_0 --output_blob=output_0 --topK=3  recording__0000.png  overlay.png

INPUT is audio (WAV, or any format stetho.load_audio reads) or a spectrogram
PNG.  Audio is rendered with the contract in the ``model.json`` beside the
model: windows of window_s every hop_s (a recording shorter than one window
gives one padded window), or peak-to-peak cycles for a 'peaks' contract,
exactly as train_host/prepare.py cut it; each window gets a line, and the recording-level answer is the mean
of the window probabilities (as train_host/evaluate.py scores recordings).
A PNG is classified as imagenet.py would (nearest stretch to R×R).
Lines use jetson-inference's format, ``imagenet:  97.31% class #2 (normal)``;
OUTPUT (optional) gets the overlay: ``97.31% normal`` top-left plus
probability bars.  Python 3.6 + numpy; onnxruntime, TensorRT or
jetson-inference as the backend.
"""
import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from stetho import StethoError, load_audio, render_segment, resample  # noqa: E402
from stetho.png import read_png, write_png  # noqa: E402
from stetho.segmentation import segment_unannotated  # noqa: E402
from deploy_jetson.backends import BACKENDS, BackendUnavailable, load_backend, load_model  # noqa: E402
from deploy_jetson.overlay import draw_overlay, imagenet_text  # noqa: E402

MAX_TILES = 8


def top_k(probabilities, k):
    """[(class index, probability)] of the k most probable classes, best first (ties: lower index first)."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="mergesort")
    return [(int(i), float(probabilities[i])) for i in order[:max(1, k)]]


def imagenet_lines(probabilities, classes, k):
    """imagenet.py's lines for the top k classes."""
    return ["imagenet:  %05.2f%% class #%d (%s)" % (100.0 * p, i, classes[i]) for i, p in top_k(probabilities, k)]


def audio_windows(path, contract):
    """[(index, start_s, end_s, image)] for every window of the audio file, as the service renders them."""
    samples, rate = load_audio(path)
    samples = resample(samples, rate, contract.sample_rate)
    seg = contract.segmentation
    pieces, note = segment_unannotated(samples, contract.sample_rate, seg)
    if note:
        print("classify: %s: %s" % (path, note))
    if not pieces:
        raise StethoError("%s: no %s segments found in %.2f s of audio" % (
            path, "peak-to-peak cycle" if seg.mode == "peaks" else seg.mode, samples.size / float(contract.sample_rate)))
    out = []
    for index, piece in enumerate(pieces):
        start = piece.offset / float(contract.sample_rate)
        out.append((index, start, start + seg.window_s, render_segment(piece.samples, contract)))
    return out


def montage(images, window_s, hop_s):
    """Non-overlapping windows side by side (at most MAX_TILES): the recording as the network saw it."""
    step = max(1, int(round(window_s / float(hop_s))))
    chosen = images[::step][:MAX_TILES]
    return np.concatenate(chosen, axis=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT", help="audio file (WAV...) or spectrogram PNG")
    parser.add_argument("output", metavar="OUTPUT", nargs="?", help="overlay PNG to write (optional)")
    parser.add_argument("--model", required=True, help="the ONNX file (model.json and labels.txt beside it)")
    parser.add_argument("--labels", help="labels.txt (default: beside the model)")
    parser.add_argument("--input_blob", help="input tensor name (default: model.json's, else input_0)")
    parser.add_argument("--output_blob", help="output tensor name (default: model.json's, else output_0)")
    parser.add_argument("--topK", type=int, default=1, help="print the top K classes (default 1)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="top probability below this → the answer is 'uncertain' (default 0: off)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", metavar="PATH", help="also write the per-window and overall probabilities here")
    args = parser.parse_args(argv)

    is_png = args.input.lower().endswith(".png")
    try:
        model = load_model(args.model, labels=args.labels, input_blob=args.input_blob,
                           output_blob=args.output_blob, require_card=not is_png)
        backend = load_backend(args.backend, model, args.threads)
        classes = model.classes
        windows = []
        if is_png:
            image = read_png(args.input)
            probabilities = backend.infer(backend.prepare(image))
        else:
            contract = model.contract
            rendered = audio_windows(args.input, contract)
            for index, start, end, image in rendered:
                p = backend.infer(backend.prepare(image))
                windows.append({"index": index, "start_s": round(start, 4), "end_s": round(end, 4),
                                "probabilities": [float(v) for v in p]})
                print("window %04d %7.2f-%7.2f s  %s" % (index, start, end, imagenet_lines(p, classes, 1)[0]))
            probabilities = np.mean([w["probabilities"] for w in windows], axis=0)
            seg = contract.segmentation
            image = montage([r[3] for r in rendered], seg.window_s, seg.window_s if seg.mode == "peaks" else seg.hop_s)
    except (StethoError, BackendUnavailable, OSError) as error:
        print("classify: %s" % error, file=sys.stderr)
        return 2
    lines = imagenet_lines(probabilities, classes, args.topK)
    for line in lines:
        print(line)
    best, confidence = top_k(probabilities, 1)[0]
    decision = classes[best] if confidence >= args.threshold else "uncertain"
    if decision == "uncertain":
        print("classify: uncertain (top class %s at %.2f%% is below --threshold %.2f)"
              % (classes[best], 100 * confidence, args.threshold))
    if args.output:
        texts = [imagenet_text(p, classes[i]) for i, p in top_k(probabilities, args.topK)]
        if decision == "uncertain":
            texts.insert(0, "uncertain")
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        write_png(args.output, draw_overlay(image, texts, probabilities, classes, best))
        print("classify: overlay written to %s" % args.output)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"input": args.input, "model": model.onnx_path, "backend": backend.name, "classes": classes,
                       "windows": windows, "probabilities": [float(v) for v in probabilities],
                       "decision": decision, "class_index": best, "confidence": float(confidence)},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

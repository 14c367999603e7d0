#!/usr/bin/env python3
"""Classify one recording or spectrogram with a trained model, like jetson-inference's imagenet.py.

    python deploy_jetson/classify.py --model=models/heart/resnet18.onnx --labels=models/heart/labels.txt \\
        recording.wav overlay.png
    python deploy_jetson/classify.py --model=models/heart/resnet18.onnx --labels=models/heart/labels.txt \\
        --input_blob=input_0 --output_blob=output_0 --topK=3  recording__0000.png  overlay.png

INPUT is audio (WAV, or any format stetho.load_audio reads) or a spectrogram PNG.

Audio is answered as the device's service answers one exam (deploy_jetson/exam.py): it is cut as
train_host/prepare.py cut the training recordings (windows of window_s every hop_s of the contract in the
``model.json`` beside the model, or peak-to-peak cycles for a 'peaks' contract); every window goes through the
service's signal-quality gate (the contract's thresholds): silence, clipping, handling and rubbing are reported,
never classified; the recording's answer is the model's stored decision rule (model.json ``decision``; argmax
without one) applied to the mean of the accepted windows' probabilities, as evaluate.py scores recordings; with
less than ``--min-s`` seconds of accepted audio the answer is 'too short'.  Each window gets a line, then the
recording's lines in jetson-inference's format (``imagenet:  97.31% class #2 (normal)``, top K by mean
probability) and its verdict.  A PNG is classified as imagenet.py would (nearest stretch to R×R).
OUTPUT (optional, a .png that is not INPUT) gets the overlay.

Exit status: 0 a verdict (a class), 3 no verdict (no signal, poor contact, too short), 2 an error.
Python 3.6 + numpy; onnxruntime, TensorRT or jetson-inference as the backend.
"""
import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from stetho import StethoError, load_audio, resample  # noqa: E402
from stetho.contract import render_segment_levels  # noqa: E402
from stetho.decision import DecisionRule  # noqa: E402
from stetho.png import read_png, write_png  # noqa: E402
from stetho.segmentation import segment_unannotated  # noqa: E402
from stetho.spectrogram import colour  # noqa: E402
from deploy_jetson import quality  # noqa: E402
from deploy_jetson.backends import BACKENDS, BackendUnavailable, load_backend, load_model  # noqa: E402
from deploy_jetson.exam import TOO_SHORT, ExamSettings, ExamTracker  # noqa: E402
from deploy_jetson.overlay import draw_overlay, imagenet_text, overlay_axes  # noqa: E402

MAX_TILES = 8
VERDICT, NO_VERDICT, ERROR = 0, 3, 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TooShort(StethoError):
    """A recording shorter than the contract's minimum: no window, no verdict (not an error of the tool)."""


def top_k(probabilities, k):
    """[(class index, probability)] of the k most probable classes, best first (ties: lower index first)."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="mergesort")
    return [(int(i), float(probabilities[i])) for i in order[:max(1, k)]]


def imagenet_lines(probabilities, classes, k):
    """imagenet.py's lines for the top k classes."""
    return ["imagenet:  %05.2f%% class #%d (%s)" % (100.0 * p, i, classes[i]) for i, p in top_k(probabilities, k)]


def audio_windows(path, contract):
    """[(index, start_s, audio_end_s, samples, levels)] for every window of the audio file, cut as the service and
    prepare.py cut it (``audio_end_s``: where the audio the window holds ends).  Raises StethoError for a
    recording shorter than the contract's minimum (as prepare.py skips it and the service gives it no window)."""
    samples, rate = load_audio(path)
    samples = resample(samples, rate, contract.sample_rate)
    seg, rate = contract.segmentation, contract.sample_rate
    if samples.size < seg.min_duration_s * rate:
        raise TooShort("%s: too short (%.3f s of audio; the model's contract needs at least %.2f s)"
                          % (path, samples.size / float(rate), seg.min_duration_s))
    pieces, note = segment_unannotated(samples, rate, seg)
    if note:
        print("classify: %s: %s" % (path, note))
    out = []
    starts = [piece.offset for piece in pieces] + [samples.size]
    for index, piece in enumerate(pieces):
        held = min(contract.segment_samples, samples.size - piece.offset)
        if seg.mode == "peaks":  # a peak-cut cycle holds the audio up to the next peak
            held = min(held, starts[index + 1] - piece.offset)
        out.append((index, piece.offset / float(rate), (piece.offset + held) / float(rate), piece.samples,
                    render_segment_levels(piece.samples, contract)))
    return out


def montage(images, window_s, hop_s):
    """Non-overlapping windows side by side (at most MAX_TILES): the recording as the network saw it."""
    step = max(1, int(round(window_s / float(hop_s))))
    chosen = images[::step][:MAX_TILES]
    return np.concatenate(chosen, axis=1)


def check_output(path, source):
    """Refuse an OUTPUT that would destroy data: the input itself, a name that is not .png, or an existing file
    that is not a PNG (a recording given twice by mistake, say)."""
    if not path.lower().endswith(".png"):
        raise StethoError("OUTPUT %s: the overlay is a PNG; give a name ending in .png" % path)
    if os.path.exists(path):
        if os.path.isdir(path):
            raise StethoError("OUTPUT %s is a folder; give the overlay's file name" % path)
        if os.path.exists(source) and os.path.samefile(path, source):
            raise StethoError("OUTPUT %s is the INPUT itself: refusing to overwrite it" % path)
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                raise StethoError("OUTPUT %s exists and is not a PNG: refusing to overwrite it" % path)


def classify_audio(path, model, backend, rule, gate, min_s):
    """(exam record, the windows' JSON entries, the montage of accepted windows or None)."""
    contract, classes = model.contract, model.classes
    records = []
    tracker = ExamTracker(ExamSettings(min_s=min_s, max_s=max(min_s, 60.0)), rule, classes, live=False,
                          on_end=lambda record, exam: records.append(record))
    stream = os.path.splitext(os.path.basename(path))[0]
    band = quality.contract_band(contract)
    windows, accepted_images = [], []
    for index, start, end, samples, levels in audio_windows(path, contract):
        verdict = quality.assess(samples, contract.sample_rate, gate, band)
        entry = {"index": index, "start_s": round(start, 4), "end_s": round(start + contract.segmentation.window_s, 4),
                 "audio_end_s": round(end, 4), "quality": verdict.quality, "quality_metrics": verdict.metrics,
                 "probabilities": None}
        line = "window %04d %7.2f-%7.2f s  " % (index, start, start + contract.segmentation.window_s)
        result = {"stream": stream, "start_s": start, "end_s": entry["end_s"], "audio_end_s": end,
                  "quality": verdict.quality, "decision": verdict.decision, "probabilities": None}
        if verdict.decision is None:
            image = colour(levels, contract.spectrogram)
            p = backend.infer(backend.prepare(image, levels))
            entry["probabilities"] = [float(v) for v in p]
            result["probabilities"] = dict(zip(classes, entry["probabilities"]))
            accepted_images.append(image)
            line += imagenet_lines(p, classes, 1)[0]
        else:
            line += "%s (%s)" % (verdict.decision, verdict.quality)
        print(line)
        windows.append(entry)
        tracker.window(result, levels)
    tracker.end_stream(stream)
    seg = contract.segmentation
    image = None
    if accepted_images:
        image = montage(accepted_images, seg.window_s, seg.window_s if seg.mode == "peaks" else seg.hop_s)
    return records[0], windows, image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Exit status: 0 a verdict, 3 no verdict (no signal, poor contact, too "
                                            "short), 2 an error.")
    parser.add_argument("input", metavar="INPUT", help="audio file (WAV...) or spectrogram PNG")
    parser.add_argument("output", metavar="OUTPUT", nargs="?", help="overlay PNG to write (optional)")
    parser.add_argument("--model", required=True, help="the ONNX file (model.json and labels.txt beside it)")
    parser.add_argument("--labels", help="labels.txt (default: beside the model)")
    parser.add_argument("--input_blob", help="input tensor name (default: model.json's, else input_0)")
    parser.add_argument("--output_blob", help="output tensor name (default: model.json's, else output_0)")
    parser.add_argument("--topK", type=int, default=1, help="print the top K classes (default 1)")
    parser.add_argument("--min-s", type=float, default=8.0,
                        help="accepted audio (s) a recording needs for a verdict, as the service's --exam-min-s "
                             "(default 8; 0: any)")
    parser.add_argument("--no-quality", action="store_true", help="classify every window, even silence (testing)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--json", metavar="PATH", help="also write the per-window and overall answer here")
    args = parser.parse_args(argv)
    if args.topK < 1:
        parser.error("--topK must be at least 1")
    if not args.min_s >= 0 or args.min_s == float("inf"):
        parser.error("--min-s must be a number of seconds >= 0, not %r" % args.min_s)

    is_png = args.input.lower().endswith(".png")
    record, windows = None, []
    try:
        if args.output:
            check_output(args.output, args.input)
        model = load_model(args.model, labels=args.labels, input_blob=args.input_blob,
                           output_blob=args.output_blob, require_card=not is_png)
        backend = load_backend(args.backend, model, args.threads)
        classes = model.classes
        rule = DecisionRule(model.card.decision if model.card is not None else None, classes)
        if is_png:
            image = read_png(args.input)
            probabilities = backend.infer(backend.prepare(image))
        else:
            gate = quality.QualityConfig.from_contract(model.contract, enabled=not args.no_quality)
            record, windows, image = classify_audio(args.input, model, backend, rule, gate, max(args.min_s, 1e-9))
            probabilities = None if record["mean_probabilities"] is None else \
                np.array([record["mean_probabilities"][c] for c in classes])
    except TooShort as error:
        print("classify: no verdict: %s" % error)
        return NO_VERDICT
    except (StethoError, BackendUnavailable, OSError) as error:
        print("classify: %s" % error, file=sys.stderr)
        return ERROR
    verdict = None
    if is_png:
        decided = rule.decide(probabilities)
        verdict, best = decided.label, decided.index
    elif record["label"] is not None:
        verdict, best = record["label"], record_index(record, classes)
    if verdict is not None:
        for line in imagenet_lines(probabilities, classes, args.topK):
            print(line)
        how = ""
        if not is_png and record["p_abnormal"] is not None and rule.threshold is not None:
            how = ": P(abnormal) %.2f %s %.2f" % (record["p_abnormal"],
                                                  ">=" if record["p_abnormal"] >= rule.threshold else "<", rule.threshold)
        print("classify: verdict %s%s (rule %s)%s" % (
            verdict, how, rule.describe(), "" if is_png else "; %.1f s accepted of %d window(s), %d rejected"
            % (record["accepted_s"], len(windows), sum(record["windows_rejected"].values()))))
    else:
        if record["verdict"] == TOO_SHORT:
            print("classify: no verdict: too short (%.1f s of accepted audio, %.0f s needed: --min-s)"
                  % (record["accepted_s"], args.min_s))
        else:
            print("classify: no verdict: %s (%s)" % (record["verdict"], ", ".join(
                "%s %d window(s)" % kv for kv in sorted(record["rejected_by_quality"].items()))))
    if args.output:
        try:
            if image is None:
                texts = [record["verdict"]]
                tile = np.zeros((model.contract.size, model.contract.size, 3), dtype=np.uint8)
                overlay = draw_overlay(tile, texts, axes=overlay_axes(model.contract))
            else:
                texts = [imagenet_text(p, classes[i]) for i, p in top_k(probabilities, args.topK)]
                if verdict is not None and verdict != classes[top_k(probabilities, 1)[0][0]]:
                    texts.insert(0, "verdict: %s" % verdict)
                elif verdict is None:
                    texts.insert(0, record["verdict"])
                overlay = draw_overlay(image, texts, probabilities, classes, best if verdict is not None else None,
                                       overlay_axes(model.contract) if model.card is not None else None)
            folder = os.path.dirname(os.path.abspath(args.output))
            if not os.path.isdir(folder):
                os.makedirs(folder)
            write_png(args.output, overlay)
            print("classify: overlay written to %s" % args.output)
        except OSError as error:
            print("classify: %s: cannot write the overlay (%s)" % (args.output, error.strerror or error),
                  file=sys.stderr)
            return ERROR
    if args.json:
        answer = {"input": args.input, "model": os.path.basename(model.onnx_path), "backend": backend.name,
                  "classes": classes, "windows": windows,
                  "probabilities": None if probabilities is None else [float(v) for v in probabilities],
                  "verdict": verdict if verdict is not None else record["verdict"], "rule": rule.as_dict(),
                  "exam": record}
        try:
            with open(args.json, "w") as handle:
                json.dump(answer, handle, indent=2)
        except OSError as error:
            print("classify: %s: cannot write (%s)" % (args.json, error.strerror or error), file=sys.stderr)
            return ERROR
    return VERDICT if verdict is not None else NO_VERDICT


def record_index(record, classes):
    return classes.index(record["label"])


if __name__ == "__main__":
    sys.exit(main())

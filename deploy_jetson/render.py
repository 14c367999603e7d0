#!/usr/bin/env python3
"""Render WAV files to the spectrogram PNGs a model sees, exactly as the live service renders them.

    python deploy_jetson/render.py --model-dir models/heart  recording.wav  out/
    python deploy_jetson/render.py --preset heart --size 224  recordings/  out/
    imagenet.py --model=models/heart/resnet18.onnx --input_blob=input_0 --output_blob=output_0 \
                --labels=models/heart/labels.txt  out/recording__0000.png  overlay.png

One PNG per window (window_s every hop_s of the contract; a recording shorter
than one window gives one padded window; peak-to-peak cycles for a 'peaks' contract), named ``<recording>__<index>.png``.
Audio at another rate is resampled to the contract's rate.
Python 3.6 + numpy only (soxr is used for resampling when installed).
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stetho import AudioError, ConfigError, ModelCard, load_audio, preset, resample  # noqa: E402
from stetho.contract import PRESETS, render_segment_levels, segment_filename  # noqa: E402
from stetho.png import write_png  # noqa: E402
from stetho.segmentation import segment_unannotated  # noqa: E402

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif")


def list_inputs(inputs):
    """Expand folders (recursively, sorted) into audio files; keep files as given."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, names in sorted(os.walk(item)):
                files.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(AUDIO_EXTENSIONS))
        else:
            files.append(item)
    return files


def render_file(path, contract):
    """Yield (index, offset_s, levels) for every service window of the audio file ``path``
    (levels: uint8 R×R colour-table indices, see stetho.contract.render_segment_levels)."""
    samples, rate = load_audio(path)
    samples = resample(samples, rate, contract.sample_rate)
    pieces, note = segment_unannotated(samples, contract.sample_rate, contract.segmentation)
    if note:
        print("render: %s: %s" % (path, note))
    for index, piece in enumerate(pieces):
        yield index, piece.offset / float(contract.sample_rate), render_segment_levels(piece.samples, contract)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="a model folder with model.json (its contract is used)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a built-in contract")
    parser.add_argument("--size", type=int, help="image size R (only with --preset, whose STFT hop follows R; a model "
                        "fixes its own)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="WAV files or folders")
    parser.add_argument("output", metavar="OUTPUT", help="folder for the PNGs")
    args = parser.parse_args(argv)
    try:
        if args.model_dir:
            if args.size:
                parser.error("--size cannot change a model's resolution (it would break the contract)")
            contract = ModelCard.load(args.model_dir).contract
        else:
            contract = preset(args.preset, size=args.size or None)
    except ConfigError as error:
        print("render: %s" % error, file=sys.stderr)
        return 2
    files = list_inputs(args.inputs)
    if not files:
        print("render: no audio files in %s" % ", ".join(args.inputs), file=sys.stderr)
        return 2
    if not os.path.isdir(args.output):
        os.makedirs(args.output)
    written, failed = 0, 0
    for path in files:
        recording = os.path.splitext(os.path.basename(path))[0]
        try:
            for index, offset_s, levels in render_file(path, contract):
                write_png(os.path.join(args.output, segment_filename(recording, index)), levels,
                          palette=contract.palette)
                written += 1
        except (AudioError, ConfigError) as error:
            print("render: skipped %s" % error, file=sys.stderr)
            failed += 1
    print("render: %d image(s) of %dx%d from %d file(s) into %s (%d skipped; contract %s, %d Hz, %.2f s windows)"
          % (written, contract.size, contract.size, len(files) - failed, args.output, failed, contract.name,
             contract.sample_rate, contract.segmentation.window_s))
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())

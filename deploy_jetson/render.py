#!/usr/bin/env python3
"""Render WAV files to the spectrogram PNGs a model sees, exactly as the live service renders them.

    python deploy_jetson/render.py --model-dir models/heart  recording.wav  out/
    python deploy_jetson/render.py --preset heart --size 224  recordings/  out/
    imagenet.py --model=models/heart/resnet18.onnx --input_blob=input_0 --output_blob=output_0 \
                --labels=models/heart/labels.txt  out/recording__0000.png  overlay.png

One PNG per window (window_s every hop_s of the contract; a recording shorter
than one window gives one padded window; peak-to-peak cycles for a 'peaks' contract), named ``<recording>__<index>.png``.
Audio at another rate is resampled to the contract's rate.  What the live
service would not classify is not written either: a recording shorter than the
contract's ``min_duration_s`` (the service emits no window for it), and each
window the contract's signal-quality gate rejects (deploy_jetson/quality.py:
silence, clipping, handling, rubbing), reported by name and index; the written
windows keep the service's indices.  ``--keep-rejected`` writes those windows
too.  Exit status: 0 images written, 1 none, 2 bad arguments or OUTPUT.
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
from deploy_jetson import quality  # noqa: E402

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


def render_file(path, contract, gate=None):
    """Yield (index, offset_s, levels, verdict) for every service window of the audio file ``path``
    (levels: uint8 R×R colour-table indices, see stetho.contract.render_segment_levels; verdict: the quality
    gate's :class:`~deploy_jetson.quality.Verdict` under ``gate``, a QualityConfig, default the contract's).

    Raises AudioError for a recording the service would give no window: shorter than the contract's
    ``min_duration_s`` at the contract's rate (the service's Windower rule).
    """
    samples, rate = load_audio(path)
    samples = resample(samples, rate, contract.sample_rate)
    minimum = int(round(contract.segmentation.min_duration_s * contract.sample_rate))
    if samples.size < minimum:
        raise AudioError("%s: too short (%.2f s; the contract, and so the service, needs at least %.2f s)"
                         % (path, samples.size / float(contract.sample_rate), contract.segmentation.min_duration_s))
    pieces, note = segment_unannotated(samples, contract.sample_rate, contract.segmentation)
    if note:
        print("render: %s: %s" % (path, note))
    gate = gate or quality.QualityConfig.from_contract(contract)
    band = quality.contract_band(contract)
    for index, piece in enumerate(pieces):
        verdict = quality.assess(piece.samples, contract.sample_rate, gate, band)
        yield (index, piece.offset / float(contract.sample_rate), render_segment_levels(piece.samples, contract),
               verdict)


def describe_rejections(rejected):
    """'0003 handling (max_frame_share 0.96), 0005 silent (rms_dbfs -72.1)' for [(index, verdict)]."""
    shown = {"silent": "rms_dbfs", "clipping": "clipped", "handling": "max_frame_share", "rubbing": "flatness"}
    return ", ".join("%04d %s (%s %s)" % (index, v.quality, shown[v.quality], v.metrics[shown[v.quality]])
                     for index, v in rejected)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="a model folder with model.json (its contract is used)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a built-in contract")
    parser.add_argument("--size", type=int, help="image size R (only with --preset, whose STFT hop follows R; a model "
                        "fixes its own)")
    parser.add_argument("--keep-rejected", action="store_true", help="also write the windows the quality gate "
                        "rejects (they are still reported)")
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
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        print("render: OUTPUT %s is a file, not a folder; the PNGs need a folder (nothing written)" % args.output,
              file=sys.stderr)
        return 2
    files = list_inputs(args.inputs)
    if not files:
        print("render: no audio files in %s" % ", ".join(args.inputs), file=sys.stderr)
        return 2
    try:
        if not os.path.isdir(args.output):
            os.makedirs(args.output)
        written, failed, rejected = render_all(files, contract, args.output, args.keep_rejected)
    except (IOError, OSError) as error:
        print("render: cannot write into %s (%s)" % (args.output, error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("render: interrupted; the PNGs written so far are complete", file=sys.stderr)
        return 130
    print("render: %d image(s) of %dx%d from %d file(s) into %s (%d skipped, %d window(s) rejected by the quality "
          "gate%s; contract %s, %d Hz, %.2f s windows)"
          % (written, contract.size, contract.size, len(files) - failed, args.output, failed, rejected,
             " but written" if args.keep_rejected and rejected else "", contract.name, contract.sample_rate,
             contract.segmentation.window_s))
    return 0 if written else 1


def render_all(files, contract, output, keep_rejected=False):
    """Render every file's windows into ``output``: (images written, files skipped, windows rejected)."""
    written, failed, rejected_total = 0, 0, 0
    for path in files:
        recording = os.path.splitext(os.path.basename(path))[0]
        rejected = []
        try:
            for index, offset_s, levels, verdict in render_file(path, contract):
                if verdict.decision is not None:
                    rejected.append((index, verdict))
                    if not keep_rejected:
                        continue
                write_png(os.path.join(output, segment_filename(recording, index)), levels,
                          palette=contract.palette)
                written += 1
        except (AudioError, ConfigError) as error:
            print("render: skipped %s" % error, file=sys.stderr)
            failed += 1
        if rejected:
            rejected_total += len(rejected)
            print("render: %s: %d window(s) rejected by the quality gate%s: %s"
                  % (path, len(rejected), " (written: --keep-rejected)" if keep_rejected
                     else " and not written (--keep-rejected writes them)", describe_rejections(rejected)),
                  file=sys.stderr)
    return written, failed, rejected_total


if __name__ == "__main__":
    sys.exit(main())

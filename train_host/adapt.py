#!/usr/bin/env python3
"""Adapt a model to a new stethoscope (or room, or clinic) from its unlabelled recordings.

    python train_host/adapt.py models/heart recordings/new-device/ --out models/heart-new-device
    python train_host/adapt.py models/heart new/*.wav --out models/heart-new --labelled new/labels.csv

Record 5-10 minutes of exams on the new device (the service keeps whole accepted exams as WAV with
``--keep-audio DIR``), copy them to the workstation and run this.  No labels are needed.  Two things are
re-estimated on that audio, cut and quality-gated exactly as the device cuts and gates it:

1. **the equaliser**: a gain per frequency row (``spectrogram.band_gain_db``) and the shown range
   (``spectrogram.top_db``), chosen so that the new device's average spectrogram profile (``stetho.drift.row_profile``,
   the mean level of each image row) matches the training data's, stored in model.json's ``input_stats``: the gains
   its shape, the range its level (a cleaner device draws quieter rows).  The device applies both while rendering,
   so its images look, on average, like the training images (matching per-band statistics of a new device to
   the training data's: Mezza et al., EUSIPCO 2020);
2. **BatchNorm statistics** (AdaBN, Li et al. 2018): every BatchNorm layer's running mean and variance are
   recomputed on the new device's images (with the equaliser), the weights kept.

The adapted network is exported to ONNX (opset 11), checked against PyTorch on the new device's own images,
and written to ``--out`` with labels.txt, model.json (the contract with the equaliser, the ONNX's sha256, and
an ``adaptation`` block naming the files, their total accepted seconds and a digest of the list) and the
adapted checkpoint.  The decision rule is kept, unless ``--labelled manifest.csv`` (path,label) gives labelled
recordings of the new device to choose it again on (train_host/calibrate.py).  Needs the model's checkpoint
(model_best.pth.tar) beside its ONNX.
"""
import argparse
import datetime
import hashlib
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # spin briefly at OpenMP barriers (see train.py)
import numpy as np  # noqa: E402

from stetho import AudioError, ConfigError, ModelCard  # noqa: E402
from stetho.audio_io import load_resampled  # noqa: E402
from stetho.contract import render_segment_levels  # noqa: E402
from stetho.drift import DriftReference, row_profile  # noqa: E402
from stetho.labels import write_labels  # noqa: E402
from stetho.modelcard import CARD_NAME, sha256_file  # noqa: E402
from stetho.segmentation import segment_unannotated  # noqa: E402
from deploy_jetson import quality  # noqa: E402
from deploy_jetson.sources import AUDIO_EXTENSIONS  # noqa: E402
from train_host.augment import row_frequencies  # noqa: E402

ADAPTATION_VERSION = 1
MAX_GAIN_DB = 20.0
ITERATIONS = 8
STEP = 0.8            # share of the remaining profile difference corrected at each iteration
SMOOTH_ROWS = 5       # the gains are smoothed over this many frequency rows (a stethoscope's response is smooth)


class AdaptError(Exception):
    """The adaptation cannot go on (bad arguments, too little usable audio, no checkpoint): says why."""


# ---- the new device's audio, as the device cuts and gates it ------------------------------------------------

def audio_files(inputs):
    """Files given, and the audio files inside folders given (recursively, sorted)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, names in sorted(os.walk(item)):
                found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(AUDIO_EXTENSIONS)]
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise AdaptError("%s: no such file or folder" % item)
    if not found:
        raise AdaptError("no audio files in %s" % ", ".join(inputs))
    return found


def accepted_windows(paths, contract, log=print):
    """[(file, samples)] of every window the device's quality gate accepts, and a summary dict.

    Windows are cut as the device cuts a file (stetho.segmentation.segment_unannotated: windows, or
    peak-to-peak cycles for a 'peaks' contract); unreadable files are reported and skipped.
    """
    gate = quality.QualityConfig.from_contract(contract)
    band = quality.contract_band(contract)
    rate = contract.sample_rate
    windows, seconds, rejected, skipped, used = [], 0.0, {}, [], []
    for path in paths:
        try:
            samples = load_resampled(path, rate)[0]
        except AudioError as error:
            skipped.append(str(error))
            log("adapt: skipped %s" % error)
            continue
        if samples.size < contract.segmentation.min_duration_s * rate:
            skipped.append("%s: too short" % path)
            continue
        pieces, _ = segment_unannotated(samples, rate, contract.segmentation)
        kept = 0
        starts = [p.offset for p in pieces] + [samples.size]
        for index, piece in enumerate(pieces):
            verdict = quality.assess(piece.samples, rate, gate, band)
            if verdict.decision is not None:
                rejected[verdict.quality] = rejected.get(verdict.quality, 0) + 1
                continue
            held = min(contract.segment_samples, starts[index + 1] - piece.offset
                       if contract.segmentation.mode == "peaks" else samples.size - piece.offset)
            windows.append((path, piece.samples))
            seconds += held / float(rate) if contract.segmentation.mode == "peaks" else 0.0
            kept += 1
        if kept:
            used.append(path)
            if contract.segmentation.mode != "peaks":  # overlapping windows: count the audio they cover once
                hop, length = contract.segmentation.hop_s, contract.segmentation.window_s
                seconds += min(samples.size / float(rate), (kept - 1) * hop + length)
    return windows, {"files": used, "seconds": round(seconds, 1), "windows": len(windows),
                     "windows_rejected": rejected, "skipped": skipped}


def list_digest(paths):
    """sha256 over the sorted (file name, size, sha256 of its bytes) of the files adapted on."""
    lines = sorted("%s %d %s" % (os.path.basename(p), os.path.getsize(p), sha256_file(p)) for p in paths)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# ---- 1. the equaliser -------------------------------------------------------------------------------------------

MIN_TOP_DB, MAX_TOP_DB = 40.0, 160.0


def mean_profile(windows, contract, unit_db):
    """The mean row profile of the windows rendered with ``contract`` (row 0 the highest frequency), in dB of a
    ``unit_db`` shown range (the drift reference's), and the levels of each window."""
    levels = [render_segment_levels(samples, contract) for _, samples in windows]
    return np.mean([row_profile(lv, unit_db) for lv in levels], axis=0), levels


def equalise(windows, contract, target_profile, unit_db, log=print, iterations=ITERATIONS):
    """(the contract whose rendering brings the windows' mean profile to ``target_profile``, levels, summary).

    A window is normalised to its loudest cell, so a gain common to every row changes nothing; two numbers of
    the contract move the profile instead:

    - its **shape**, by a gain per frequency row (``spectrogram.band_gain_db``, mean zero): the profile's
      differences from the target, less their mean, carried over to the spectrogram's rows by frequency,
      smoothed, damped and clipped to ±MAX_GAIN_DB;
    - its **level**, by the shown range (``spectrogram.top_db``): a cell ``x`` dB below the top is drawn at
      ``1 − x / top_db`` of full scale, so a wider range draws every cell brighter.  A quieter device (a cleaner
      recording: its rows lie further below the loudest cell) gets a wider range, until its mean level is the
      training images'.

    A few rounds converge; each is one rendering of the windows.
    """
    spectrogram = contract.spectrogram
    image_hz = row_frequencies(spectrogram)[::-1]          # low → high
    band_hz = spectrogram.row_frequencies()                # low → high, the rows band_gain_db applies to
    target = np.asarray(target_profile, dtype=np.float64)
    gains = np.zeros(spectrogram.n_rows)
    top_db = float(spectrogram.top_db)
    kernel = np.ones(SMOOTH_ROWS) / float(SMOOTH_ROWS)
    current, before = contract, None
    for _ in range(iterations):
        profile, _ = mean_profile(windows, current, unit_db)
        difference = target - profile
        if before is None:
            before = (float(np.sqrt(np.mean(difference ** 2))), float(np.mean(difference)))
        shape = difference - np.mean(difference)
        # a profile in the reference's unit is (1 − x / top_db)·unit_db: one dB of profile is top_db / unit_db dB
        step = np.interp(band_hz, image_hz, shape[::-1]) * (top_db / unit_db)
        step = np.convolve(np.pad(step, SMOOTH_ROWS // 2, mode="edge"), kernel, mode="valid")
        gains = np.clip(gains + STEP * (step - np.mean(step)), -MAX_GAIN_DB, MAX_GAIN_DB)
        # mean level m (fraction of the range) against the target's m*: top_db' = top_db · (1 − m) / (1 − m*)
        m, wanted = np.mean(profile) / unit_db, np.mean(target) / unit_db
        if 0.0 < wanted < 1.0 and 0.0 < m < 1.0:
            top_db = float(np.clip(top_db * ((1.0 - m) / (1.0 - wanted)) ** STEP, MIN_TOP_DB, MAX_TOP_DB))
        current = contract.replace(spectrogram=spectrogram.replace(
            band_gain_db=[round(float(g), 3) for g in gains], top_db=round(top_db, 3)))
    profile, levels = mean_profile(windows, current, unit_db)
    difference = target - profile
    after = (float(np.sqrt(np.mean(difference ** 2))), float(np.mean(difference)))
    log("adapt: equaliser: profile difference from the training data %.1f dB RMS (mean %+.1f) before, %.1f dB "
        "(mean %+.1f) after; gains %+.1f..%+.1f dB, shown range %.0f → %.0f dB"
        % (before[0], before[1], after[0], after[1], gains.min(), gains.max(), spectrogram.top_db, top_db))
    return current, levels, {"profile_rms_db_before": round(before[0], 3), "profile_rms_db_after": round(after[0], 3),
                             "profile_mean_db_before": round(before[1], 3), "profile_mean_db_after": round(after[1], 3),
                             "gain_db_min": round(float(gains.min()), 3), "gain_db_max": round(float(gains.max()), 3),
                             "top_db_before": float(spectrogram.top_db), "top_db_after": round(top_db, 3),
                             "iterations": iterations}


def known_device(input_stats, windows, levels, log=print, most=8):
    """``input_stats`` with the new device's own typical profiles added to its centres.

    The equaliser brings the device's *average* profile to the training data's, but its recordings still
    scatter around that average their own way, and the drift check compares each exam with the nearest
    training centre: without this most of the device's exams would still be flagged after adapting (measured,
    PhysioNet→Yaseen: 69 %).  The adapted model knows this device, so the device's recordings (their mean
    profiles, rendered through the adapted contract, in the reference's unit) give up to ``most`` more
    centres; the threshold stays, and another new device is still flagged.
    """
    from train_host.input_stats import kmeans
    reference = DriftReference(input_stats, len(input_stats["mean"]))
    by_file = {}
    for (path, _), lv in zip(windows, levels):
        by_file.setdefault(path, []).append(row_profile(lv, reference.top_db))
    profiles = np.array([np.mean(p, axis=0) for p in by_file.values()])
    k = max(1, min(most, len(profiles) // 10))
    centres = kmeans(profiles / reference.scale, k) * reference.scale
    block = dict(input_stats, centres=[list(c) for c in reference.centres.tolist()]
                 + [[round(v, 3) for v in c] for c in centres.tolist()])
    block["adapted_centres"] = int(len(centres))
    flagged = np.mean([DriftReference(block, len(block["mean"])).score(p) >= reference.threshold for p in profiles])
    log("adapt: drift check: %d centre(s) of the device's %d recording(s) added; %.0f %% of them would still be "
        "flagged" % (len(centres), len(profiles), 100 * flagged))
    return block


# ---- 2. BatchNorm statistics (AdaBN) ------------------------------------------------------------------------

def tensors(levels, contract):
    """The training-side tensors (to_tensor: x/255, ImageNet mean/std) of level images, as a float32 batch."""
    import torch
    from stetho.spectrogram import colour
    from train_host.data import to_tensor
    return torch.stack([to_tensor(colour(lv, contract.spectrogram)) for lv in levels])


def adapt_batchnorm(model, batch, batch_size=32):
    """Recompute every BatchNorm layer's running statistics as the plain average over ``batch`` (AdaBN)."""
    import torch
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for first in range(0, len(batch), batch_size):
            part = batch[first:first + batch_size]
            if len(part) > 1:  # a batch of one has no variance
                model(part)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    return model.eval()


# ---- export -------------------------------------------------------------------------------------------------

def export_adapted(model, checkpoint, card, contract, out, batch, adaptation, input_stats, log=print):
    """Write ``out``: the ONNX (checked against PyTorch on the adapted images), labels.txt, model.json and the
    adapted checkpoint."""
    import onnxruntime
    import torch
    from train_host.export import TOLERANCE, check_graph, onnx_export
    from train_host.models import with_softmax
    onnx_path = os.path.join(out, card.onnx_file)
    tmp = onnx_path + ".part"
    onnx_export(model, contract.size, tmp)
    graph = check_graph(tmp, contract.size, len(card.classes))
    session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    picks = np.unique(np.linspace(0, len(batch) - 1, min(16, len(batch))).round().astype(int))
    with torch.no_grad():
        reference = with_softmax(model).eval()(batch[picks]).numpy()
    served = np.concatenate([session.run([card.output_blob], {card.input_blob: batch[i:i + 1].numpy()})[0]
                             for i in picks])
    worst = float(np.abs(served - reference).max())
    if worst >= TOLERANCE:
        os.remove(tmp)
        raise AdaptError("the exported ONNX differs from PyTorch by %.2e on the adapted images" % worst)
    os.replace(tmp, onnx_path)
    write_labels(os.path.join(out, "labels.txt"), card.classes)
    adapted = ModelCard(classes=card.classes, contract=contract, onnx_file=card.onnx_file,
                        onnx_sha256=sha256_file(onnx_path), arch=card.arch, input_blob=card.input_blob,
                        output_blob=card.output_blob, mean=card.mean, std=card.std, pretrained=card.pretrained,
                        training=card.training, metrics={}, dataset=card.dataset,
                        extra=dict(card.extra, graph=graph, verification={"images": len(picks),
                                                                          "max_abs_diff_onnxruntime_vs_torch": worst}),
                        decision=card.decision, input_stats=input_stats, adaptation=adaptation)
    adapted.save(out)
    checkpoint = dict(checkpoint, state_dict=model.state_dict(), contract=contract.to_dict(), adaptation=adaptation)
    torch.save(checkpoint, os.path.join(out, "model_best.pth.tar"))
    log("adapt: exported %s (ONNX vs PyTorch max |diff| %.1e on %d adapted images), sha256 %s"
        % (onnx_path, worst, len(picks), adapted.onnx_sha256[:12]))
    return adapted


def calibrate_labelled(out, manifest, target_sensitivity, log=print):
    """Choose the decision rule again on labelled recordings of the new device (a path,label CSV)."""
    from train_host import prepare
    from train_host.calibrate import calibrate
    data = os.path.join(out, "labelled-data")
    if prepare.main([manifest, data, "--adapter", "csv", "--contract-from", out, "--split", "test", "--workers", "1",
                     "--force"]) != 0:
        raise AdaptError("%s: prepare.py could not render the labelled recordings (see above)" % manifest)
    return calibrate(out, data, "all", target_sensitivity, write=True, log=log)


def adapt(model_dir, inputs, out, labelled=None, equalize=True, batchnorm=True, min_seconds=60.0,
          max_windows=2000, target_sensitivity=None, force=False, checkpoint_name="model_best.pth.tar", log=print):
    """Adapt ``model_dir`` to the audio ``inputs`` into ``out`` (see the module doc); returns the new card."""
    import torch
    from train_host.export import ExportError, load_checkpoint, model_from_checkpoint
    started = time.time()
    model_dir, out = os.path.abspath(model_dir), os.path.abspath(out)
    if out == model_dir:
        raise AdaptError("--out must be a new folder, not the model being adapted")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise AdaptError("--out %s is not empty; choose a new folder or pass --force" % out)
    card = ModelCard.load(model_dir)
    card.verify_onnx(model_dir)
    if card.adaptation:
        log("adapt: note: %s was itself adapted (%s); adapting again starts from its equaliser"
            % (model_dir, card.adaptation.get("created")))
    try:
        checkpoint = load_checkpoint(os.path.join(model_dir, checkpoint_name))
    except ExportError as error:
        raise AdaptError("%s (adapt.py needs the training checkpoint beside the ONNX)" % error)
    paths = audio_files(inputs)
    windows, summary = accepted_windows(paths, card.contract, log)
    log("adapt: %d file(s), %.0f s of accepted audio in %d window(s) (rejected by the quality gate: %s)"
        % (len(summary["files"]), summary["seconds"], summary["windows"],
           ", ".join("%s %d" % kv for kv in sorted(summary["windows_rejected"].items())) or "none"))
    if summary["seconds"] < min_seconds:
        raise AdaptError("only %.0f s of usable audio (--min-seconds %.0f): record more exams on the new device "
                         "(5-10 minutes)" % (summary["seconds"], min_seconds))
    if len(windows) > max_windows:  # evenly spread over the recordings
        windows = [windows[i] for i in np.linspace(0, len(windows) - 1, max_windows).round().astype(int)]
    contract, equaliser = card.contract, None
    if equalize:
        if not card.input_stats:
            raise AdaptError("%s stores no training input statistics (input_stats) to equalise to: re-export it "
                             "with train_host/export.py, or pass --no-equalize" % os.path.join(model_dir, CARD_NAME))
        reference = DriftReference(card.input_stats, contract.size)
        base = contract.replace(spectrogram=contract.spectrogram.replace(band_gain_db=None, top_db=reference.top_db))
        contract, levels, equaliser = equalise(windows, base, reference.mean, reference.top_db, log)
        before, after = (reference.score(mean_profile(windows, c, reference.top_db)[0])
                         for c in (card.contract, contract))
        equaliser.update(drift_score_before=round(before, 3), drift_score_after=round(after, 3))
        log("adapt: drift score %.2f before, %.2f after (the device warns at %.2f)"
            % (before, after, reference.threshold))
    else:
        levels = [render_segment_levels(samples, contract) for _, samples in windows]
    model = model_from_checkpoint(checkpoint)
    batch = tensors(levels, contract)
    if batchnorm:
        torch.manual_seed(0)
        adapt_batchnorm(model, batch)
        log("adapt: BatchNorm statistics re-estimated on %d window(s)" % len(levels))
    input_stats = card.input_stats
    if equalize and input_stats:
        input_stats = known_device(input_stats, windows, levels, log)
    adaptation = {"version": ADAPTATION_VERSION,
                  "from": {"model": os.path.basename(model_dir), "onnx_sha256": card.onnx_sha256},
                  "files": [os.path.basename(p) for p in summary["files"]], "n_files": len(summary["files"]),
                  "seconds": summary["seconds"], "windows": len(levels),
                  "windows_rejected": summary["windows_rejected"], "list_sha256": list_digest(summary["files"]),
                  "equaliser": equaliser, "batchnorm": {"windows": len(levels)} if batchnorm else None,
                  "labelled": None,
                  "created": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"}
    if not os.path.isdir(out):
        os.makedirs(out)
    adapted = export_adapted(model, checkpoint, card, contract, out, batch, adaptation, input_stats, log)
    if labelled:
        block = calibrate_labelled(out, labelled, target_sensitivity, log)
        adapted = ModelCard.load(out)
        adapted.adaptation = dict(adapted.adaptation, labelled={"manifest": os.path.basename(labelled),
                                                                 "decision": block.get("chosen_on")})
        adapted.save(out)
    log("adapt: done in %.0f s: %s (install it with systemd/install.sh --model-dir %s)"
        % (time.time() - started, out, out))
    return adapted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the model to adapt (its checkpoint beside the ONNX)")
    parser.add_argument("audio", metavar="AUDIO", nargs="+", help="recordings of the new device: files or folders")
    parser.add_argument("--out", required=True, help="the adapted model's folder (new)")
    parser.add_argument("--labelled", metavar="CSV", help="path,label CSV of labelled recordings of the new device: "
                        "the decision rule is chosen again on them")
    parser.add_argument("--target-sensitivity", type=float, metavar="S", help="with --labelled: the most specific "
                        "rule reaching sensitivity S (default: the best balanced accuracy)")
    parser.add_argument("--no-equalize", dest="equalize", action="store_false", help="keep the contract as it is")
    parser.add_argument("--no-batchnorm", dest="batchnorm", action="store_false", help="keep BatchNorm statistics")
    parser.add_argument("--min-seconds", type=float, default=60.0,
                        help="least accepted audio to adapt on (default 60 s; 5-10 minutes are better)")
    parser.add_argument("--max-windows", type=int, default=2000, help="windows used at most (default 2000)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    if args.target_sensitivity is not None and not 0.0 < args.target_sensitivity <= 1.0:
        parser.error("--target-sensitivity must be in (0, 1]")
    if args.target_sensitivity is not None and not args.labelled:
        parser.error("--target-sensitivity needs --labelled (labelled recordings to choose the rule on)")
    if not args.min_seconds >= 0 or args.max_windows < 2:
        parser.error("--min-seconds must be >= 0 and --max-windows >= 2")
    try:
        adapt(args.model_dir, args.audio, args.out, args.labelled, args.equalize, args.batchnorm, args.min_seconds,
              args.max_windows, args.target_sensitivity, args.force)
    except (AdaptError, ConfigError, AudioError, ValueError) as error:
        print("adapt: %s" % error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Turn real recordings into jetson-inference image folders: adapters, segmentation, leak-free splits.

    python train_host/prepare.py ../shared/data/yaseen2018 data/yaseen --adapter folder --preset heart \\
        --class-map AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N
    python train_host/prepare.py ../shared/data/physionet2016 data/physionet --adapter physionet2016 --preset heart
    python train_host/prepare.py ../shared/data/icbhi2017_sample data/icbhi --adapter icbhi2017 --preset lung \\
        --split official
    python train_host/prepare.py ../shared/data/yaseen2018 data/yaseen-f0 --preset heart --split kfold:5:0 ...
    python train_host/prepare.py manifest.csv data/mine --adapter csv --preset heart --size 128

Writes ``DEST/{train,val,test}/<class>/<recording>__NNNN.png``, ``DEST/labels.txt``
and ``DEST/prepare.json`` (the contract, per-image provenance, counts, skipped
inputs).  Steps, in the order of this file:

1. the adapter lists recordings (label, recording id, patient, site, spans,
   the dataset's own split); the contract is the preset with the flags applied;
2. every recording is loaded, resampled to the contract's rate (soxr),
   segmented and rendered by ``stetho.contract.render_segment_levels`` in worker
   processes, into ``DEST/.work/`` as indexed-colour PNGs (the levels and the
   contract's colour table: readers get exactly ``render_segment``'s RGB);
   a bad file becomes a 'skipped' entry and the run goes on;
3. recordings that share audio (cut from one recording with an overlap:
   ``train_host.shared_audio``) are joined, and so are a patient's
   recordings; these groups are split train/val/test, stratified and seeded
   (by fractions, or as fold I of K for cross-validation), or by the
   dataset's official split; ``check_disjoint`` fails the run if a patient,
   recording or group is in two splits;
4. images move into place, labels.txt and prepare.json are written, a summary
   is printed.

Resumable: a re-run reuses every recording whose images exist and whose
source, labels and contract are unchanged (even after an interrupted run);
``--force`` redoes everything.  Results do not depend on ``--workers``.
Nothing is ever written inside SOURCE.  Exit status: 0 done, 1 nothing
usable produced, 2 bad arguments or DEST conflict, 3 split leak.
"""
import argparse
import collections
import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from stetho import AudioError, ConfigError, Contract, preset  # noqa: E402
from stetho.audio_io import load_resampled  # noqa: E402
from stetho.contract import contract_differences, render_segment_levels  # noqa: E402
from stetho.heap import retain_freed_memory  # noqa: E402
from stetho.contract import PRESETS, segment_filename  # noqa: E402
from stetho.labels import check_class_names, write_labels  # noqa: E402
from stetho.png import write_png  # noqa: E402
from stetho.segmentation import MODES, annotated_cycles, segment  # noqa: E402
from stetho.synth import CORPUS_MARKER  # noqa: E402
from train_host import adapters  # noqa: E402
from train_host.shared_audio import connected_groups, file_fingerprint, file_steps, shared_audio_groups  # noqa: E402
from train_host.splits import (SPLITS, SplitLeakError, check_disjoint, dominant_label,  # noqa: E402
                               grouped_stratified_split, kfold_split, official_split, parse_fractions,
                               parse_kfold)

SCHEMA_VERSION = 1
MANIFEST = "prepare.json"
WORK = ".work"                 # staging folder inside DEST: rendered images, contract.json, journal.jsonl
JOURNAL = "journal.jsonl"      # one line per finished recording, appended as results arrive (for resuming)
VAL_OF_TRAIN = 0.15            # --split official / kfold: share of each class's train groups moved to val
DEFAULT_SPLIT = "0.7,0.15,0.15"


class PrepareError(Exception):
    """A problem with the arguments or DEST that stops the run before anything is written (exit 2)."""


# ---------------------------------------------------------------------------------------------
# 1. The contract: the preset with --segment/--window/--hop/--size and then --set applied.

CONTRACT_SECTIONS = ("conditioning", "segmentation", "spectrogram")


def apply_settings(contract, settings):
    """``contract`` with ``SECTION.FIELD=VALUE`` strings applied, in order (VALUE read as JSON, else a string).

    E.g. ``spectrogram.top_db=50``, ``spectrogram.scale=mel``, ``conditioning.lowpass_hz=null``.
    The result is validated like any contract; unknown sections or fields are refused by name.
    """
    for setting in settings:
        key, sep, text = setting.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or section not in CONTRACT_SECTIONS:
            raise ConfigError("--set %r: expected SECTION.FIELD=VALUE with SECTION one of %s"
                              % (setting, ", ".join(CONTRACT_SECTIONS)))
        try:
            value = json.loads(text)
        except ValueError:
            value = text.strip()
        part = getattr(contract, section)
        if field not in [name for name, _ in part.FIELDS]:
            raise ConfigError("--set %r: %s has no field %r (fields: %s)"
                              % (setting, section, field, ", ".join(name for name, _ in part.FIELDS)))
        contract = contract.replace(**{section: part.replace(**{field: value})})
    return contract


def contract_of(path):
    """The contract stored in a model folder (model.json) or a prepared dataset (prepare.json) at ``path``."""
    for name in ("model.json", MANIFEST):
        candidate = os.path.join(path, name) if os.path.isdir(path) else path
        if os.path.basename(candidate) == name and os.path.isfile(candidate):
            meta = read_json(candidate)
            try:
                return Contract.from_dict(meta["contract"])
            except (KeyError, TypeError, ConfigError) as error:
                raise PrepareError("%s: no usable contract (%s)" % (candidate, error))
    raise PrepareError("--contract-from %s: neither a model folder (model.json) nor a prepared dataset (%s)"
                       % (path, MANIFEST))


def build_contract(args, recordings):
    """The contract this run renders with (and stores in prepare.json)."""
    if args.contract_from:
        # exactly the images a model was trained on (to test or calibrate it on other recordings)
        return apply_settings(contract_of(args.contract_from), args.set or [])
    contract = preset(args.preset, size=args.size, window_s=args.window)  # the STFT hop follows R and the window
    all_spans = bool(recordings) and all(rec.spans for rec in recordings)
    mode = args.segment or ("cycles" if all_spans and args.adapter in ("icbhi2017", "csv")
                            else contract.segmentation.mode)
    changes = {"mode": mode}  # the window is the preset's (window_s above), so its hop fits it
    if args.hop is not None:
        changes["hop_s"] = float(args.hop)
    contract = contract.replace(segmentation=contract.segmentation.replace(**changes))
    contract = apply_settings(contract, args.set or [])
    if contract.segmentation.mode == "cycles":
        missing = [rec.path for rec in recordings if not rec.spans]
        if missing:
            raise PrepareError("--segment cycles needs annotated spans, but %d recording(s) have none (e.g. %s); "
                               "use --segment window or an adapter with annotations" % (len(missing), missing[0]))
    return contract


def contract_sha256(contract):
    """Fingerprint of everything that decides the images."""
    return hashlib.sha256(json.dumps(contract.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()


def recording_key(rec, contract_hash):
    """Fingerprint of one recording's work: contract, labels, spans and the source file's size and mtime."""
    try:
        stat = os.stat(rec.path)
        stamp = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        stamp = None
    fields = [contract_hash, rec.path, rec.label, rec.recording, [list(s) for s in rec.spans or []], stamp]
    return hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# 2. Rendering one recording. Runs in the worker processes; touches only DEST/.work.

_WORKER = {}


def _init_worker(contract, work_dir):
    retain_freed_memory()  # every recording frees ~1 MB arrays per image: reuse them, don't page-fault
    _WORKER.update(contract=contract, work_dir=work_dir)


def audio_error_kind(message):
    """A short tag for an AudioError message (for the summary and the 'skipped' list)."""
    for needle, kind in (("empty", "empty"), ("no samples", "empty"), ("truncated", "truncated"),
                         ("NaN", "nan"), ("unsupported", "unsupported"), ("cannot read", "unreadable"),
                         ("no such file", "unreadable")):
        if needle in message:
            return kind
    return "corrupt"


def cut(samples, rec, contract):
    """The recording's pieces: [(label, offset samples, samples, padded, source samples used)].

    - mode 'cycles': one piece per annotated span, fitted to window_s;
    - spans that carry their own labels: the mode applied inside each span;
    - otherwise: the mode applied to the whole recording, labelled with the recording's label.
    """
    seg, rate = contract.segmentation, contract.sample_rate
    length = contract.segment_samples
    if rec.spans and (seg.mode == "cycles" or rec.label is None):
        regions = [(int(round(s.start_s * rate)), int(round(s.end_s * rate)), s.label or rec.label)
                   for s in rec.spans]
    else:
        regions = [(0, samples.size, rec.label)]
    out = []
    for start, end, label in regions:
        start, end = max(0, start), min(samples.size, end)
        if end <= start:
            continue  # a span beyond the end of the audio
        if seg.mode == "cycles":
            pieces = annotated_cycles(samples, rate, [(start / float(rate), end / float(rate))], seg.window_s, seg.pad)
            pieces = [p._replace(offset=start) for p in pieces]
        else:
            pieces = [p._replace(offset=p.offset + start) for p in segment(samples[start:end], rate, seg)]
        offsets = [p.offset for p in pieces] + [end]
        for piece, following in zip(pieces, offsets[1:]):
            used = min(length, end - piece.offset)
            if seg.mode == "peaks":  # a peak-cut cycle runs to the next peak
                used = min(used, following - piece.offset)
            out.append((label, piece.offset, piece.samples, piece.padded, used))
    return out


def render_recording(rec):
    """Load, resample, cut and render one recording into the staging folder.

    Returns ("ok", rec, images) or ("skip", rec, (kind, reason)).  ``images``:
    dicts with file, label, offset_s, duration_s, padded.
    """
    contract, work_dir = _WORKER["contract"], _WORKER["work_dir"]
    rate = contract.sample_rate
    try:
        # streamed: decoded and resampled block by block, as the service replays files (the same samples)
        samples, source_rate, source_frames = load_resampled(rec.path, rate)
        minimum = contract.segmentation.min_duration_s
        if source_frames < minimum * source_rate:
            return "skip", rec, ("too-short", "%s: too short (%.2f s; the contract needs at least %.2f s)"
                                 % (rec.path, source_frames / float(source_rate), minimum))
        pieces = cut(samples, rec, contract)
        if not pieces:
            return "skip", rec, ("no-segments", "%s: no %s segments found (%.2f s of audio)"
                                 % (rec.path, contract.segmentation.mode, samples.size / float(rate)))
        rendered = [render_segment_levels(piece[2], contract) for piece in pieces]
    except AudioError as error:
        return "skip", rec, (audio_error_kind(str(error)), str(error))
    except Exception as error:  # a decoder crash on one odd file must not stop 1000 others; named and counted
        return "skip", rec, ("error", "%s: %s: %s" % (rec.path, type(error).__name__, error))
    images = []
    for index, ((label, offset, _, padded, used), image) in enumerate(zip(pieces, rendered)):
        name = segment_filename(rec.recording, index)
        write_png(os.path.join(work_dir, name), image, palette=contract.palette)  # indexed colour: the same RGB
        images.append({"file": name, "label": label, "offset_s": round(offset / float(rate), 6),
                       "duration_s": round(used / float(rate), 6), "padded": bool(padded)})
    return "ok", rec, images


def render_all(todo, contract, work_dir, workers):
    """Render ``todo`` recordings, in parallel when workers > 1. Yields results in ``todo`` order."""
    _init_worker(contract, work_dir)
    progress = tqdm(total=len(todo), unit="rec", desc="prepare", dynamic_ncols=True, mininterval=0.5,
                    disable=not todo)
    if workers <= 1 or len(todo) <= 1:
        results = map(render_recording, todo)
        pool = None
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                              else "spawn")
        pool = context.Pool(workers, initializer=_init_worker, initargs=(contract, work_dir))
        results = pool.imap(render_recording, todo, chunksize=max(1, min(8, len(todo) // (4 * workers))))
    try:
        for result in results:
            progress.update(1)
            yield result
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()


# ---------------------------------------------------------------------------------------------
# 3. DEST: safety checks, what an earlier run left, and resuming from it.

def write_json(path, data):
    tmp = path + ".part"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError, ValueError) as error:
        raise PrepareError("%s: cannot read (%s); remove it or use --force" % (path, error))


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_dest(dest, source, recordings):
    """Refuse a DEST inside SOURCE (or holding it), and a non-empty DEST not made by this script."""
    roots = set(os.path.dirname(rec.path) for rec in recordings)
    if os.path.isdir(source):
        roots.add(source)
    for root in sorted(roots):
        if inside(dest, root):
            raise PrepareError("DEST %s is inside the source folder %s; prepare never writes inside SOURCE"
                               % (dest, root))
        if inside(root, dest):
            raise PrepareError("the source folder %s is inside DEST %s; choose a separate DEST" % (root, dest))
    if os.path.isdir(dest) and os.listdir(dest):
        if not (os.path.isfile(os.path.join(dest, MANIFEST)) or os.path.isdir(os.path.join(dest, WORK))):
            raise PrepareError("DEST %s is not empty and holds no %s: not a folder made by prepare.py; "
                               "choose a new or empty folder" % (dest, MANIFEST))


def clear_dest(dest):
    """--force: remove what earlier runs made (split folders, staging, labels.txt, prepare.json)."""
    for name in SPLITS + (WORK,):
        path = os.path.join(dest, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
    for name in ("labels.txt", MANIFEST):
        path = os.path.join(dest, name)
        if os.path.isfile(path):
            os.remove(path)


def describe(contract):
    """One line naming a contract dict's main numbers."""
    try:
        seg, spec = contract["segmentation"], contract["spectrogram"]
        return "%s, %d Hz, %s %.2f s hop %.2f s, R=%d" % (contract["name"], spec["sample_rate"], seg["mode"],
                                                          seg["window_s"], seg["hop_s"], spec["size"])
    except (KeyError, TypeError, ValueError):
        return "unreadable"


def previous_work(dest, stamp, force):
    """What earlier runs finished: {recording: (key, [image dicts with 'at' = path relative to DEST])}.

    ``stamp``: this run's {"contract_sha256", "contract", "source", "adapter"}.  Raises PrepareError
    when DEST was made from another source or adapter, or with another contract, and --force is not given.
    """
    manifest_path = os.path.join(dest, MANIFEST)
    stamp_path = os.path.join(dest, WORK, "contract.json")
    for path in (manifest_path, stamp_path):
        if os.path.isfile(path) and not force:
            old = read_json(path)
            if old.get("contract_sha256") != stamp["contract_sha256"]:
                changes = contract_differences(old.get("contract") or {}, stamp["contract"]) or ["unreadable"]
                raise PrepareError("%s was made with a different contract (%s); this run asks for %s (%s). Use "
                                   "--force to redo it, or choose a new DEST"
                                   % (path, describe(old.get("contract") or {}), describe(stamp["contract"]),
                                      "; ".join(changes)))
            for key in ("source", "adapter"):
                if old.get(key) != stamp[key]:
                    raise PrepareError("%s was made from %s %s; this run reads %s. Use --force to replace it, or "
                                       "choose a new DEST" % (path, key, old.get(key), stamp[key]))
    if force:
        clear_dest(dest)
        return {}
    done = {}
    if os.path.isfile(manifest_path):
        old = read_json(manifest_path)
        keys = old.get("fingerprints", {})
        by_recording = collections.defaultdict(list)
        for image in old.get("images", []):
            by_recording[image["recording"]].append(image)
        for recording, images in by_recording.items():
            if recording in keys and all(os.path.isfile(os.path.join(dest, i["path"])) for i in images):
                done[recording] = (keys[recording], [dict(i, file=os.path.basename(i["path"]), at=i["path"])
                                                     for i in images])
    journal = os.path.join(dest, WORK, JOURNAL)
    if os.path.isfile(journal):
        with open(journal) as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                    images = [dict(i, at=os.path.join(WORK, i["file"])) for i in item["images"]]
                except (ValueError, KeyError, TypeError):
                    continue  # the half-written last line of an interrupted run: that recording is redone
                if images and all(os.path.isfile(os.path.join(dest, i["at"])) for i in images):
                    done[item["recording"]] = (item["key"], images)
    return done


# ---------------------------------------------------------------------------------------------
# 4. Splits by group, the leak check, the final layout.

def find_shared_audio(produced, enabled=True):
    """Recordings that share audio (overlapping cuts of one recording), for the splits.

    Returns ``{"checked": bool, "groups": [[recording, ...], ...], "pairs": [...], "seconds": t}``;
    every file is read once more, at its own rate (nothing is resampled), block by block: memory stays
    bounded however long a recording is (``train_host.shared_audio.file_fingerprint``, ``file_steps``).
    """
    started = time.time()
    if not enabled:
        return {"checked": False, "groups": [], "pairs": [], "seconds": 0.0}
    path_of = dict((rec.recording, rec.path) for rec, _ in produced)

    fingerprints, frames = {}, {}
    for recording in tqdm(sorted(path_of), desc="shared audio", unit="rec", leave=False, disable=None):
        fingerprints[recording], frames[recording] = file_fingerprint(path_of[recording])
    groups, pairs = shared_audio_groups(lambda recording: file_steps(path_of[recording], frames[recording]),
                                        path_of, fingerprints)
    return {"checked": True, "groups": groups,
            "pairs": [{"recordings": [a, b], "offset_samples": offset, "overlap_samples": overlap}
                      for a, b, offset, overlap in pairs],
            "seconds": round(time.time() - started, 3)}


def shared_audio_label_warnings(produced, shared_groups):
    """A warning for each set of recordings that share audio but not their labels (the same sound filed twice)."""
    path_and_labels = dict((rec.recording, (rec.path, sorted(set(image["label"] for image in images))))
                           for rec, images in produced)
    warnings = []
    for members in shared_groups:
        if len(set(tuple(path_and_labels[m][1]) for m in members)) > 1:
            labels = set(label for m in members for label in path_and_labels[m][1])
            warnings.append("these recordings share audio but are labelled differently (%s): %s; they are kept in "
                            "one split under the commonest label, check their labels"
                            % (", ".join(sorted(labels)), "; ".join("%s (%s)" % (path_and_labels[m][0],
                                                                                 "/".join(path_and_labels[m][1]))
                                                                     for m in members)))
    return warnings


def recording_groups(produced, shared_groups):
    """{recording: group}: the unit that must stay in one split.

    A patient's recordings form a group, and so does every set of recordings
    that share audio; both joined transitively.  Group names:
    ``patient:<id>[+<id>...]`` when any member has a patient id, else
    ``audio:<first recording>`` for recordings that share audio, else
    ``recording:<id>``.
    """
    by_id = dict((rec.recording, rec) for rec, _ in produced)
    first_of_patient, links = {}, []
    for rec, _ in produced:
        if rec.patient is not None:
            links.append((rec.recording, first_of_patient.setdefault(rec.patient, rec.recording)))
    links += [(members[0], other) for members in shared_groups for other in members[1:]]
    members = dict((group[0], [by_id[r] for r in group]) for group in connected_groups(by_id, links).values())
    groups = {}
    for recs in members.values():
        patients = sorted(set(r.patient for r in recs if r.patient is not None))
        ids = sorted(r.recording for r in recs)
        name = ("patient:" + "+".join(patients) if patients else
                "audio:" + ids[0] if len(ids) > 1 else "recording:" + ids[0])
        for rec in recs:
            groups[rec.recording] = name
    return groups


def assign_splits(args, produced, adapter_name, group_of):
    """{recording: split}, the split description for prepare.json, and warnings.

    ``produced``: [(Recording, images)] for every recording that gave images;
    ``group_of``: {recording: group} (:func:`recording_groups`).
    """
    labels = collections.defaultdict(collections.Counter)
    for rec, images in produced:
        labels[group_of[rec.recording]].update(image["label"] for image in images)
    group_labels = dict((group, dominant_label(counts)) for group, counts in labels.items())
    with_patient = sum(1 for rec, _ in produced if rec.patient is not None)
    joined = sum(1 for rec, _ in produced if group_of[rec.recording].startswith("audio:"))
    group_by = "patient" if with_patient == len(produced) else (
        "recording" if with_patient == 0 else "patient where known, else recording")
    if joined:
        group_by += ", recordings that share audio joined"
    info = {"method": "grouped-stratified", "seed": args.seed, "group_by": group_by}
    if with_patient < len(produced):
        info["note"] = ("%d of %d recordings have no patient id: %s, so one patient's separate "
                        "recordings could fall in different splits; report this next to every figure"
                        % (len(produced) - with_patient, len(produced),
                           "each is its own group" if not joined else
                           "%d of them share audio with another and are joined into %d group(s), the others are "
                           "each their own group" % (joined, len(set(g for g in group_of.values()
                                                                   if g.startswith("audio:"))))))
    warnings = []
    if args.split == "official":
        preset_splits = collections.defaultdict(set)
        for rec, _ in produced:
            preset_splits[group_of[rec.recording]].add(rec.split)
        by_group, shared = official_split(group_labels, preset_splits, args.val_fraction, args.seed)
        info.update(method="official", fractions="official", val_fraction_of_train=args.val_fraction)
        if shared:
            info["shared_by_official_split"] = [g.split(":", 1)[1] for g in shared]
            warnings.append("the dataset's official split itself puts %d group(s) in more than one split (%s); "
                            "kept as published%s" % (len(shared), ", ".join(info["shared_by_official_split"]),
                                                     "" if adapter_name == "icbhi2017" else " — the leak check "
                                                     "will refuse it"))
    elif args.split == "test":
        by_group = dict((group, "test") for group in group_labels)
        info.update(method="test", fractions=[0.0, 0.0, 1.0])
    elif args.split.startswith("kfold"):
        folds, fold = parse_kfold(args.split)
        by_group = kfold_split(group_labels, folds, fold, args.val_fraction, args.seed)
        info.update(method="kfold", fractions="kfold", folds=folds, fold=fold, val_fraction_of_train=args.val_fraction)
    else:
        fractions = parse_fractions(args.split)
        by_group = grouped_stratified_split(group_labels, fractions, args.seed)
        info["fractions"] = [round(f, 6) for f in fractions]
    splits = dict((rec.recording, by_group.get(group_of[rec.recording], rec.split)) for rec, _ in produced)
    return splits, info, warnings


def coverage_warnings(counts, classes, val_wanted=True):
    """Warnings for classes missing from a split, naming the class, the split and the consequence.

    Every split folder holds a folder per class (:func:`remove_stale` makes the empty ones), so torchvision's
    ImageFolder, which jetson-inference's train.py reads train/ and val/ with, numbers the classes alike in every
    split, and refuses a split where a class folder is empty rather than shifting the class indices.
    """
    refuse = "jetson-inference's train.py (torchvision ImageFolder) will refuse this dataset"
    out = []
    empty = [split for split in SPLITS if not sum(counts[split].values())]
    for split in ("train", "test"):
        if split in empty:  # e.g. --split test: one line, not one per class
            out.append("%s/ holds no images: all its class folders are empty, so ImageFolder refuses it%s"
                       % (split, "; " + refuse if split == "train" else ""))
    if "val" in empty:
        if val_wanted:
            out.append("val is empty (too few groups to take one out for validation); model selection has "
                       "nothing to select on, and %s (empty folders val/%s)" % (refuse, ", val/".join(classes)))
        else:
            out.append("val/ holds no images (asked for): %s (empty folders val/%s); train_host/train.py keeps "
                       "its last epoch" % (refuse, ", val/".join(classes)))
    for name in classes:
        for split in SPLITS:
            if counts[split][name] or split in empty:
                continue
            tally = "train %d, val %d, test %d" % (counts["train"][name], counts["val"][name], counts["test"][name])
            if split == "test":
                out.append("class %s has no images in test (%s): test/%s is empty, so ImageFolder refuses test/ "
                           "(jetson-inference's train.py reads only train/ and val/)" % (name, tally, name))
            else:
                out.append("class %s has no images in %s (%s): %s/%s is empty, and %s"
                           % (name, split, tally, split, name, refuse))
    return out


def place(dest, entries):
    """Move every image from where it is ('at') to its final 'path' (both relative to DEST)."""
    for entry in entries:
        if entry["at"] != entry["path"]:
            target = os.path.join(dest, entry["path"])
            folder = os.path.dirname(target)
            if not os.path.isdir(folder):
                os.makedirs(folder)
            os.replace(os.path.join(dest, entry["at"]), target)


def remove_stale(dest, keep):
    """Delete images in DEST's split folders that this run does not list (left by earlier runs), then give every
    split a folder for every class, empty where the split has no image of it.

    The classes are those of ``keep`` (paths ``split/class/file.png``): every class has an image somewhere.
    torchvision's ImageFolder (jetson-inference's train.py) numbers the classes by the sorted folder names of
    each split; with every folder present the numbers agree across splits, and an empty one is refused by
    ImageFolder ("Found no valid file for the classes ...") instead of silently renumbering the others.
    """
    classes = set(rel.split("/")[1] for rel in keep)
    for split in SPLITS:
        root = os.path.join(dest, split)
        for folder, _, files in os.walk(root, topdown=False):
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), dest).replace(os.sep, "/")
                if name.endswith(".png") and rel not in keep:
                    os.remove(os.path.join(folder, name))
            if folder != root and not os.listdir(folder) and os.path.relpath(folder, root) not in classes:
                os.rmdir(folder)
        for name in classes:
            if not os.path.isdir(os.path.join(root, name)):
                os.makedirs(os.path.join(root, name))


# ---------------------------------------------------------------------------------------------
# 5. The summary.

def split_name(info):
    if info["method"] in ("official", "test"):
        return info["method"]
    if info["method"] == "kfold":
        return "fold %d of %d" % (info["fold"], info["folds"])
    return "/".join("%g" % f for f in info["fractions"])


def summary(data, dest, seconds):
    """The one-screen table printed at the end."""
    classes, counts, skipped = data["classes"], data["counts"], data["skipped"]
    contract = data["contract"]
    seg = contract["segmentation"]
    lines = ["", "prepare: %s → %s" % (data["source"], dest),
             "prepare: contract %s, %d Hz, %s %.2f s (hop %.2f s), %dx%d, adapter %s, split %s (seed %d)"
             % (contract["name"], contract["spectrogram"]["sample_rate"], seg["mode"], seg["window_s"], seg["hop_s"],
                data["size"], data["size"], data["adapter"],
                split_name(data["split"]), data["split"]["seed"])]
    width = max([len(c) for c in classes] + [8])
    lines.append("  %-*s %8s %8s %8s %8s" % (width, "class", "train", "val", "test", "total"))
    for name in classes + ["total"]:
        row = [sum(counts[s].values()) if name == "total" else counts[s].get(name, 0) for s in SPLITS]
        lines.append("  %-*s %8d %8d %8d %8d" % (width, name, row[0], row[1], row[2], sum(row)))
    lines.append("  %-*s %8d %8d %8d %8d   (%s)" % (width, "groups", data["patients"]["train"], data["patients"]["val"],
                                                   data["patients"]["test"], sum(data["patients"].values()),
                                                   "by " + data["split"]["group_by"]))
    lines.append("  %-*s %8d %8d %8d %8d" % (width, "records", data["recordings"]["train"],
                                             data["recordings"]["val"], data["recordings"]["test"],
                                             sum(data["recordings"].values())))
    if data["split"].get("note"):
        lines.append("prepare: NOTE %s" % data["split"]["note"])
    kinds = collections.Counter(item["kind"] for item in skipped)
    lines.append("prepare: %d recording(s) rendered, %d reused, %d input(s) skipped%s" % (
        data["work"]["rendered"], data["work"]["reused"], len(skipped),
        (" (" + ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items())) + "; see prepare.json)")
        if skipped else ""))
    for warning in data["warnings"]:
        lines.append("prepare: WARNING %s" % warning)
    shared = data["split"].get("shared_by_official_split")
    lines.append("prepare: %d images in %.1f s; split check passed (%s)" % (
        len(data["images"]), seconds, "no patient, recording or shared audio in two splits" if not shared else
        "no recording in two splits; patient(s) %s in two splits as the official split has them" % ", ".join(shared)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("source", metavar="SOURCE", help="the dataset (a folder; for --adapter csv the manifest)")
    parser.add_argument("dest", metavar="DEST", help="output folder (created; never inside SOURCE)")
    parser.add_argument("--adapter", choices=adapters.ADAPTERS, default="folder",
                        help="dataset layout (default folder)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="contract preset (required unless --contract-from)")
    parser.add_argument("--contract-from", metavar="PATH",
                        help="render with the contract of a model folder (model.json) or a prepared dataset "
                        "(prepare.json) instead of a preset: e.g. a labelled set from another clinic, to test or "
                        "calibrate that model on (--preset, --size, --window, --hop and --segment then do not apply)")
    parser.add_argument("--segment", choices=MODES, help="segmentation mode (default: the preset's; "
                        "'cycles' for icbhi2017 and for csv manifests with start,end)")
    parser.add_argument("--window", type=float, help="segment length in seconds (default: the preset's)")
    parser.add_argument("--hop", type=float, help="window step in seconds (default: the preset's)")
    parser.add_argument("--size", type=int, help="image size R, images are RxR (default: the preset's, 224); the "
                        "STFT hop follows R and --window, about one frame per column (stetho.contract.frame_hop; "
                        "--set spectrogram.hop_length=N overrides it)")
    parser.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                        help="change one number of the contract, e.g. spectrogram.top_db=50 or "
                             "conditioning.lowpass_hz=600 (repeatable; stored in prepare.json and model.json, "
                             "so the device renders the same way)")
    parser.add_argument("--split", default=DEFAULT_SPLIT,
                        help="train,val,test fractions (default %s), 'official' (the dataset's own split) or "
                        "kfold:K:I (fold I of a grouped stratified K-fold as test), or 'test' (every recording in "
                        "test: an external test set for a trained model); with official and kfold, val is "
                        "--val-fraction of each class's train groups" % DEFAULT_SPLIT)
    parser.add_argument("--val-fraction", type=float, default=VAL_OF_TRAIN,
                        help="with --split official or kfold: share of each class's train groups moved to val "
                             "(default %g; 0: no val, and train.py keeps its last epoch)" % VAL_OF_TRAIN)
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (default min(4, CPUs)); results do not depend on it")
    parser.add_argument("--class-map", default="", help="rename classes: OLD=NEW,... (NEW empty leaves OLD out)")
    parser.add_argument("--labels", choices=adapters.ICBHI_LABELS, help="icbhi2017: cycle (normal/crackle/"
                        "wheeze/both, default), diagnosis (patient_diagnosis.csv) or binary (healthy/unhealthy)")
    parser.add_argument("--shared-audio", choices=("join", "ignore"), default="join",
                        help="join (default): find recordings that share audio (files cut from one recording with "
                        "an overlap, or copies) and keep each such set in one split; ignore: skip the search "
                        "(every file read once more at its own rate: ~2 s per 10 min of audio)")
    parser.add_argument("--force", action="store_true", help="redo everything, even with another contract in DEST")
    args = parser.parse_args(argv)
    if args.labels and args.adapter != "icbhi2017":
        parser.error("--labels applies to --adapter icbhi2017 only")
    if not args.preset and not args.contract_from:
        parser.error("give --preset (heart, lung, vascular, cough) or --contract-from MODEL_OR_DATASET")
    if args.contract_from and (args.preset or args.size or args.window or args.hop is not None or args.segment):
        parser.error("--contract-from takes the whole contract from %s: drop --preset/--size/--window/--hop/--segment "
                     "(--set still applies)" % args.contract_from)
    if args.split not in ("official", "test"):
        try:
            parse_kfold(args.split) if args.split.startswith("kfold") else parse_fractions(args.split)
        except ValueError as error:
            parser.error(str(error))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1), not %g" % args.val_fraction)
    if args.val_fraction != VAL_OF_TRAIN and not (args.split == "official" or args.split.startswith("kfold")):
        parser.error("--val-fraction applies to --split official or kfold:K:I (fractions give val's share directly)")
    return args


def gather(args, source, dest):
    """Step 1: recordings, adapter skips, the contract, and what earlier runs in DEST finished.

    Raises PrepareError (or ConfigError / AdapterError) on anything that must stop the run.
    """
    if not os.path.exists(source):
        raise PrepareError("SOURCE %s does not exist" % source)
    recordings, skipped = adapters.load(args.adapter, source, adapters.parse_class_map(args.class_map),
                                        args.labels or "cycle")
    skipped = [s._asdict() for s in skipped]
    if not recordings:
        raise PrepareError("%s: the %s adapter found no usable recordings (%d input(s) skipped)"
                           % (source, args.adapter, len(skipped)))
    if args.split == "official":
        missing = [rec for rec in recordings if rec.split is None]
        if len(missing) == len(recordings):
            raise PrepareError("--split official: the %s adapter found no official split in %s"
                               % (args.adapter, source))
        recordings = [rec for rec in recordings if rec.split is not None]
        skipped += [{"path": rec.path, "kind": "no-split",
                     "reason": "%s: not in the dataset's official split" % rec.path} for rec in missing]
    classes = sorted(set(label for rec in recordings
                         for label in ([rec.label] if rec.label is not None else [s.label for s in rec.spans])))
    for name in classes:
        if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise PrepareError("class name %r cannot be a folder name" % name)
    check_class_names(classes, "classes of %s" % source)
    contract = build_contract(args, recordings)
    check_dest(dest, source, recordings)
    stamp = {"contract_sha256": contract_sha256(contract), "contract": contract.to_dict(), "size": contract.size,
             "source": source, "adapter": args.adapter}
    return recordings, skipped, contract, stamp, previous_work(dest, stamp, args.force)


def dataset_entries(produced, splits, group_of):
    """prepare.json image entries (plus 'at': where the file is now), sorted by path."""
    entries = []
    for rec, images in produced:
        split = splits[rec.recording]
        for image in images:
            entries.append({"path": "/".join((split, image["label"], image["file"])), "split": split,
                            "label": image["label"], "recording": rec.recording, "patient": rec.patient,
                            "group": group_of[rec.recording],
                            "site": rec.site, "source": rec.path, "offset_s": image["offset_s"],
                            "duration_s": image["duration_s"], "padded": image["padded"],
                            "at": image.get("at") or os.path.join(WORK, image["file"])})
    return sorted(entries, key=lambda e: e["path"])


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    source, dest = os.path.abspath(args.source), os.path.abspath(args.dest)

    # 1. recordings, the contract, earlier work
    try:
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise PrepareError("DEST %s is a file, not a folder; choose a new or empty folder" % dest)
        recordings, skipped, contract, stamp, done = gather(args, source, dest)
    except (PrepareError, ConfigError, adapters.AdapterError, OSError) as error:
        print("prepare: error: %s" % error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nprepare: interrupted before anything was written", file=sys.stderr)
        return 130
    contract_hash, seg = stamp["contract_sha256"], contract.segmentation
    print("prepare: %d recording(s) from %s (adapter %s), %d input(s) skipped by the adapter"
          % (len(recordings), source, args.adapter, len(skipped)))
    print("prepare: contract %s: %d Hz, %s segments of %.2f s (hop %.2f s), %dx%d images, %d worker(s)"
          % (contract.name, contract.sample_rate, seg.mode, seg.window_s, seg.hop_s, contract.size, contract.size,
             args.workers))

    # 2. render what is not done yet (into DEST/.work)
    work_dir = os.path.join(dest, WORK)
    try:
        if not os.path.isdir(work_dir):
            os.makedirs(work_dir)
        write_json(os.path.join(work_dir, "contract.json"), stamp)
    except OSError as error:
        print("prepare: error: cannot write into DEST %s (%s)" % (dest, error), file=sys.stderr)
        return 2
    keys = dict((rec.recording, recording_key(rec, contract_hash)) for rec in recordings)
    reuse = dict((r, done[r][1]) for r in keys if r in done and done[r][0] == keys[r])
    todo = [rec for rec in recordings if rec.recording not in reuse]
    if reuse:
        print("prepare: resuming: %d recording(s) already done, %d to render" % (len(reuse), len(todo)))
    results = {}
    try:
        with open(os.path.join(work_dir, JOURNAL), "a") as journal:
            for status, rec, payload in render_all(todo, contract, work_dir, args.workers):
                results[rec.recording] = (status, payload)
                if status == "ok":
                    journal.write(json.dumps({"recording": rec.recording, "key": keys[rec.recording],
                                              "images": payload}) + "\n")
                    journal.flush()
    except KeyboardInterrupt:
        print("\nprepare: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    produced = []
    for rec in recordings:
        status, payload = ("ok", reuse[rec.recording]) if rec.recording in reuse else results[rec.recording]
        if status == "ok":
            produced.append((rec, payload))
        else:
            skipped.append({"path": rec.path, "kind": payload[0], "reason": payload[1]})
    if not produced:
        print("prepare: error: nothing usable was produced: all %d recording(s) failed, e.g.:" % len(recordings),
              file=sys.stderr)
        for item in skipped[-10:]:
            print("  %s" % item["reason"], file=sys.stderr)
        return 1
    classes = sorted(set(image["label"] for _, images in produced for image in images))
    if len(classes) < 2:
        print("prepare: error: the usable recordings hold only class %s; a classifier needs two or more"
              % ", ".join(classes), file=sys.stderr)
        return 1

    # 3. splits and the leak check, before anything moves
    try:
        shared_audio = find_shared_audio(produced, args.shared_audio == "join")
    except KeyboardInterrupt:
        print("\nprepare: interrupted while looking for shared audio; nothing was moved, the rendered images are "
              "kept in %s: run the same command again to resume" % work_dir, file=sys.stderr)
        return 130
    group_of = recording_groups(produced, shared_audio["groups"])
    splits, split_info, warnings = assign_splits(args, produced, args.adapter, group_of)
    split_info["shared_audio"] = shared_audio
    warnings += shared_audio_label_warnings(produced, shared_audio["groups"])
    entries = dataset_entries(produced, splits, group_of)
    allowed = {}
    if split_info.get("shared_by_official_split") and args.adapter == "icbhi2017":
        shared_patients = set(split_info["shared_by_official_split"])
        allowed = {"patient": shared_patients,
                   "group": set(g for g in group_of.values() if g.split(":", 1)[1] in shared_patients)}
    try:
        check_disjoint(entries, ("recording", "patient", "group"), allowed)
    except SplitLeakError as error:
        print("prepare: error: %s; nothing was moved into %s" % (error, dest), file=sys.stderr)
        return 3

    # 4. layout, labels.txt, prepare.json, summary
    place(dest, entries)
    write_labels(os.path.join(dest, "labels.txt"), classes)
    groups, recs = collections.defaultdict(set), collections.defaultdict(set)
    for rec, _ in produced:
        groups[splits[rec.recording]].add(group_of[rec.recording])
        recs[splits[rec.recording]].add(rec.recording)
    counts = dict((s, dict((c, 0) for c in classes)) for s in SPLITS)
    for entry in entries:
        counts[entry["split"]][entry["label"]] += 1
    data = collections.OrderedDict([
        ("schema_version", SCHEMA_VERSION), ("contract", contract.to_dict()), ("contract_sha256", contract_hash),
        ("preset", args.preset or contract.name), ("adapter", args.adapter),
        ("labels", args.labels or ("cycle" if args.adapter == "icbhi2017" else "recording")),
        ("source", source), ("classes", classes), ("size", contract.size), ("split", split_info),
        # a corpus train_host/synthesize.py wrote (its marker file): model.json says so, the status page shows it
        ("synthetic", os.path.isfile(os.path.join(source, CORPUS_MARKER))),
        ("images", [dict((k, v) for k, v in e.items() if k != "at") for e in entries]),
        ("counts", counts), ("patients", dict((s, len(groups[s])) for s in SPLITS)),
        ("recordings", dict((s, len(recs[s])) for s in SPLITS)),
        ("skipped", [{"path": s["path"], "kind": s["kind"], "reason": s["reason"]} for s in skipped]),
        ("warnings", warnings + coverage_warnings(counts, classes, args.val_fraction > 0 and args.split != "test")),
        ("fingerprints", dict((rec.recording, keys[rec.recording]) for rec, _ in produced)),
        ("work", {"rendered": len(todo), "reused": len(reuse), "workers": args.workers,
                  "seconds": round(time.time() - started, 3)}),
        ("created", datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()),
    ])
    write_json(os.path.join(dest, MANIFEST), data)
    remove_stale(dest, set(e["path"] for e in entries))
    shutil.rmtree(work_dir)
    print(summary(data, dest, time.time() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

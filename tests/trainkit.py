"""Tiny prepared datasets for the training/export tests, in prepare.py's layout and prepare.json schema.

Images are rendered with the contract (stetho.segments + render_segment) and
written with stetho.png, exactly as prepare.py does; only the adapters, the
split logic and the bookkeeping of prepare.py are left out.
"""
import json
import os

import numpy as np

from stetho import preset, render_segment, segments, synth
from stetho.contract import segment_filename
from stetho.labels import write_labels
from stetho.png import write_png


def write_dataset(dest, recordings, contract, preset_name, source="synthetic"):
    """recordings: [(recording id, label, split, samples at contract.sample_rate)] → DEST layout + prepare.json."""
    dest = str(dest)
    classes = sorted(set(label for _, label, _, _ in recordings))
    images, counts = [], dict((s, dict((c, 0) for c in classes)) for s in ("train", "val", "test"))
    for recording, label, split, samples in recordings:
        folder = os.path.join(dest, split, label)
        os.makedirs(folder, exist_ok=True)
        for index, piece in enumerate(segments(samples, contract)):
            rel = "/".join((split, label, segment_filename(recording, index)))
            write_png(os.path.join(dest, rel), render_segment(piece.samples, contract))
            images.append({"path": rel, "split": split, "label": label, "recording": recording, "patient": None,
                           "site": None, "source": "%s/%s" % (source, recording),
                           "offset_s": piece.offset / float(contract.sample_rate),
                           "duration_s": contract.segmentation.window_s, "padded": bool(piece.padded)})
            counts[split][label] += 1
    write_labels(os.path.join(dest, "labels.txt"), classes)
    meta = {"schema_version": 1, "contract": contract.to_dict(), "preset": preset_name, "adapter": "test",
            "source": source, "classes": classes, "size": contract.size,
            "split": {"method": "fixed by the test", "fractions": None, "seed": 0}, "images": images,
            "counts": counts, "patients": {"train": 0, "val": 0, "test": 0}, "skipped": [],
            "created": "2024-01-01T00:00:00Z"}
    with open(os.path.join(dest, "prepare.json"), "w") as handle:
        json.dump(meta, handle, indent=1)
    return dest


def synthetic_heart(dest, size=32, per_split=(3, 1, 1), duration_s=4.5, seed=0, kinds=synth.HEART_KINDS):
    """Synthetic heart sounds (NOT clinical), ``per_split`` recordings per class in train/val/test."""
    contract = preset("heart", size=size)
    rng = np.random.RandomState(seed)
    recordings = []
    for kind in kinds:
        for split, n in zip(("train", "val", "test"), per_split):
            for i in range(n):
                audio = synth.heart_sound(kind, bpm=rng.uniform(60, 100), duration_s=duration_s,
                                          rate=contract.sample_rate, seed=int(rng.randint(0, 2 ** 31 - 1)))
                recordings.append(("syn_%s_%s%d" % (kind, split, i), kind, split, audio))
    return write_dataset(dest, recordings, contract, "heart", source="synthetic-seed%d" % seed)

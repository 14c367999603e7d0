#!/usr/bin/env python3
"""Benchmark: time per real Yaseen clip, our contract against "the seeds' way", measured in the same run.

    python bench/render.py [--data ../shared/data/yaseen2018] [--clips 200] [--seed-clips 40]

Ours:        load WAV → resample to 2 kHz (soxr) → condition → render 224×224 → encode PNG (stetho;
             indexed colour, as prepare.py writes it; glibc told to keep freed memory, as prepare.py does).
Seeds' way:  librosa.load → librosa.stft → amplitude_to_db → matplotlib figure (specshow) → savefig PNG
             → PIL open → resize 224×224 → encode PNG  (the usual blog/notebook recipe).
Single process, one thread each. Prints both per-clip times and the ratio; writes bench/results/render.json.
"""
import argparse
import io
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from stetho import load_audio, preset, resample, segments  # noqa: E402
from stetho.contract import render_segment_levels  # noqa: E402
from stetho.heap import retain_freed_memory  # noqa: E402
from stetho.png import encode_png  # noqa: E402
from seeds_way import seeds_figure  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clips(folder, limit):
    paths = []
    for root, _, names in sorted(os.walk(folder)):
        paths += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(".wav")]
    step = max(1, len(paths) // limit) if limit else 1
    return paths[::step][:limit] if limit else paths


def ours(path, contract):
    samples, rate = load_audio(path)
    samples = resample(samples, rate, contract.sample_rate)
    return [encode_png(render_segment_levels(piece.samples, contract), palette=contract.palette)
            for piece in segments(samples, contract)]


def seeds_way(path):
    import matplotlib.pyplot as plt
    from PIL import Image
    figure = seeds_figure(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").resize((224, 224))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def timed(function, items):
    start = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - start) / len(items)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    retain_freed_memory()
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "yaseen2018"))
    parser.add_argument("--clips", type=int, default=200, help="clips timed for ours (0 = all 1000)")
    parser.add_argument("--seed-clips", type=int, default=40, help="clips timed for the seeds' way")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit("bench/render.py: %s not found (needs the Yaseen 2018 set)" % args.data)
    contract = preset("heart")  # R=224; the STFT at the seeds' 10 ms hop (20 samples), so both do the same work
    contract = contract.replace(spectrogram=contract.spectrogram.replace(hop_length=20))
    ours_paths = clips(args.data, args.clips)
    seed_paths = clips(args.data, args.seed_clips)
    ours(ours_paths[0], contract)          # warm imports and caches for both
    seeds_way(seed_paths[0])
    ours_s = timed(lambda p: ours(p, contract), ours_paths)
    seeds_s = timed(seeds_way, seed_paths)
    result = {"clips_ours": len(ours_paths), "clips_seeds_way": len(seed_paths), "ms_per_clip_ours": ours_s * 1e3,
              "ms_per_clip_seeds_way": seeds_s * 1e3, "speedup": seeds_s / ours_s, "goal_speedup": 20.0,
              "size": 224, "cpu": os.cpu_count()}
    print("render benchmark (real Yaseen clips, 224×224, one process)")
    print("  ours        %7.2f ms/clip  (%d clips)" % (result["ms_per_clip_ours"], len(ours_paths)))
    print("  seeds' way  %7.2f ms/clip  (%d clips)" % (result["ms_per_clip_seeds_way"], len(seed_paths)))
    print("  speed-up    %7.1f×  (goal ≥ 20×: %s)" % (result["speedup"], "met" if result["speedup"] >= 20 else "MISSED"))
    out = os.path.join(REPO, "bench", "results", "render.json")
    with open(out, "w") as handle:
        json.dump(result, handle, indent=2)
    print("  written     %s" % os.path.relpath(out, REPO))


if __name__ == "__main__":
    main()

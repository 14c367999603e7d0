#!/usr/bin/env python3
"""Benchmark: prepare the whole Yaseen set (1000 clips) with train_host/prepare.py against "the seeds' way".

    python bench/prepare.py [--data ../shared/data/yaseen2018] [--workers 2] [--seed-clips 40] [--size 224]

Ours:        the real command, timed from the shell's point of view (interpreter start included):
             python train_host/prepare.py YASEEN DEST --preset heart --class-map ... --workers 2 \
                 --set spectrogram.hop_length=20   (the seeds' 10 ms hop: the same STFT work both ways;
                 the preset's own hop at R=224 is 26, fewer frames, less work)
             (load → soxr to 2 kHz → segment → condition → render → PNG, split, prepare.json), then the
             same command again (resume: everything already done).
Seeds' way:  per clip, one process: librosa.load → librosa.stft → amplitude_to_db → matplotlib figure
             (specshow, 2.24 in at 100 dpi = 224×224) → savefig PNG into a class folder; timed on
             --seed-clips clips spread over the classes and extrapolated to the whole set.
Prints both figures (wall and CPU time: the machine is shared, so wall time depends on its load, shown too)
and the ratios; writes bench/results/prepare.json.  Goals: ≥ 20× faster, the full set in under 15 s.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from seeds_way import seeds_figure

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YASEEN_MAP = "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"


def wav_files(folder):
    out = []
    for root, _, names in sorted(os.walk(folder)):
        out += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(".wav")]
    return out


def seeds_way(path, dest):
    """One clip the way the seed notebooks did it: librosa + a matplotlib figure saved as PNG."""
    import matplotlib.pyplot as plt
    figure = seeds_figure(path)
    folder = os.path.join(dest, os.path.basename(os.path.dirname(path)))
    if not os.path.isdir(folder):
        os.makedirs(folder)
    figure.savefig(os.path.join(folder, os.path.splitext(os.path.basename(path))[0] + ".png"))
    plt.close(figure)


def run_prepare(data, dest, workers, size):
    command = [sys.executable, os.path.join(REPO, "train_host", "prepare.py"), data, dest, "--preset", "heart",
               "--class-map", YASEEN_MAP, "--workers", str(workers), "--size", str(size),
               "--set", "spectrogram.hop_length=20"]  # the seeds' 10 ms hop: both ways compute the same STFT
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit("bench/prepare.py: %s failed (exit %d):\n%s" % (" ".join(command), done.returncode, done.stdout))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, " ".join(command)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "yaseen2018"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed-clips", type=int, default=40, help="clips timed for the seeds' way")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    data = os.path.abspath(args.data)
    if not os.path.isdir(data):
        sys.exit("bench/prepare.py: %s not found (needs the Yaseen 2018 set)" % data)
    clips = wav_files(data)
    scratch = tempfile.mkdtemp(prefix="bench-prepare-")
    try:
        dest = os.path.join(scratch, "yaseen")
        load_before = os.getloadavg()[0]
        ours_s, ours_cpu, command = run_prepare(data, dest, args.workers, args.size)
        resume_s, _, _ = run_prepare(data, dest, args.workers, args.size)
        manifest = json.load(open(os.path.join(dest, "prepare.json")))
        step = max(1, len(clips) // args.seed_clips)
        subset = clips[::step][:args.seed_clips]
        seeds_way(subset[0], os.path.join(scratch, "warm"))  # imports and font cache, not timed
        start, cpu_start = time.perf_counter(), time.process_time()
        for path in subset:
            seeds_way(path, os.path.join(scratch, "seeds"))
        seeds_s, seeds_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seeds_full_s = seeds_s / len(subset) * len(clips)
    result = {
        "clips": len(clips), "images": len(manifest["images"]), "size": args.size, "workers": args.workers,
        "cpu": os.cpu_count(), "load_average_1min_before": round(load_before, 2), "command": command,
        "ours_seconds": round(ours_s, 3), "ours_clips_per_s": round(len(clips) / ours_s, 1),
        "ours_cpu_seconds": round(ours_cpu, 3), "resume_seconds": round(resume_s, 3),
        "seeds_way_clips_timed": len(subset), "seeds_way_seconds_timed": round(seeds_s, 3),
        "seeds_way_clips_per_s": round(len(subset) / seeds_s, 2),
        "seeds_way_full_set_seconds_extrapolated": round(seeds_full_s, 1),
        "seeds_way_full_set_cpu_seconds_extrapolated": round(seeds_cpu / len(subset) * len(clips), 1),
        "speedup": round(seeds_full_s / ours_s, 1),
        "speedup_per_process": round(seeds_full_s / ours_s / args.workers, 1),
        "cpu_time_ratio": round(seeds_cpu / len(subset) * len(clips) / ours_cpu, 1),
        "goal_speedup": 20.0, "goal_full_set_seconds": 15.0,
    }
    result["goals_met"] = result["speedup"] >= 20.0 and ours_s < 15.0
    print("prepare benchmark: the whole Yaseen set (%d clips → %d images %dx%d), %d worker(s), %d CPU(s), "
          "load average %.2f before" % (len(clips), result["images"], args.size, args.size, args.workers,
                                        result["cpu"], load_before))
    print("  ours        %7.2f s  %7.1f clips/s   %.2f CPU-s   (%s)"
          % (ours_s, result["ours_clips_per_s"], ours_cpu, command))
    print("  re-run      %7.2f s  (resume: nothing left to render)" % resume_s)
    print("  seeds' way  %7.1f s  %7.2f clips/s   %.1f CPU-s   (%d clips timed in %.1f s, one process, "
          "extrapolated)" % (seeds_full_s, result["seeds_way_clips_per_s"],
                             result["seeds_way_full_set_cpu_seconds_extrapolated"], len(subset), seeds_s))
    print("  speed-up    %7.1f×  wall (%.1f× per process, %.1f× in CPU time; goal ≥ 20×: %s; full set < 15 s: %s)"
          % (result["speedup"], result["speedup_per_process"], result["cpu_time_ratio"],
             "met" if result["speedup"] >= 20 else "MISSED", "met" if ours_s < 15 else "MISSED"))
    out = os.path.join(REPO, "bench", "results", "prepare.json")
    if not os.path.isdir(os.path.dirname(out)):
        os.makedirs(os.path.dirname(out))
    with open(out, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print("  written     %s" % os.path.relpath(out, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())

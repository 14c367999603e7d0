#!/usr/bin/env python3
"""Benchmark memory on a long recording: the service replaying it, and prepare.py rendering it.

    python bench/memory.py [--hours 2] [--rate 44100] [--size 224] [--device-minutes 10]

Issue 28 (item 4): a 2-hour 44.1 kHz WAV used to be decoded whole to float64 (2.5 GB) and resampled whole
before its first window (~6 GB in all, more than a Nano has).  Files are now decoded and resampled block by
block.  Goals: peak RSS of the service replaying a 2-hour 44.1 kHz file ≤ 300 MB; prepare.py on it ≤ 1 GB.

1. A ``--hours`` long 16-bit mono WAV at ``--rate`` (a 10 s synthetic heart sound repeated: what is heard
   does not change the memory) is written in pieces to a temporary folder (never kept: ``--keep`` to keep it).
2. The service replays it with ``--fast`` (onnxruntime, 1 thread, a random-init ResNet18 at R=``--size``):
   peak RSS (the service's own VmHWM), windows, time.
3. prepare.py renders it, beside a 30 s recording of a second class (folder adapter, heart preset, 1 worker,
   shared-audio check on): peak RSS (its own VmHWM, read at exit by a small wrapper), images, time.
4. With ``.venv-device`` (Python 3.6 + numpy 1.19: the Nano's stack, without soxr, so the numpy sinc
   resampler), the service replays a ``--device-minutes`` long 8 kHz file: the sinc resampler streams too
   (it is slow on 44.1 kHz files: ~1400 taps an output, so a short 8 kHz file keeps this step to a minute).

Writes bench/results/memory.json (with the load average before and after: a shared machine) and prints a
summary.
"""
import argparse
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from stetho import synth  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_PYTHON = os.path.join(REPO, ".venv-device", "bin", "python")
GOALS_MB = {"service": 300, "prepare": 1024}
# Runs a script and prints its peak RSS (VmHWM) on stderr however it ends: a child's own figure (the parent's
# ru_maxrss for its children would count what this torch-laden process held when it forked).
PROBE = ("import runpy, sys\n"
         "script = sys.argv[1]\n"
         "sys.argv = sys.argv[1:]\n"
         "try:\n"
         "    runpy.run_path(script, run_name='__main__')\n"
         "finally:\n"
         "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
         "    sys.stderr.write('VmHWM %s kB\\n' % hwm)\n")


def long_wav(path, seconds, rate):
    """Write ``seconds`` of 16-bit mono audio at ``rate`` to ``path`` in 10 s pieces; returns its size (bytes)."""
    piece = synth.heart_sound("murmur", bpm=72, duration_s=10.0, rate=rate, seed=0)
    codes = (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()
    total = int(seconds * rate) * 2
    with open(path, "wb") as handle:
        handle.write(b"RIFF" + struct.pack("<I", 36 + total) + b"WAVEfmt " + struct.pack("<I", 16)
                     + struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", total))
        left = total
        while left:
            chunk = codes[:left]
            handle.write(chunk)
            left -= len(chunk)
    return os.path.getsize(path)


def run_probed(python, script, args, timeout):
    """(CompletedProcess, peak RSS MB) of ``python script args`` under the VmHWM probe."""
    started = time.monotonic()
    done = subprocess.run([python, "-c", PROBE, script] + [str(a) for a in args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    done.wall_s = round(time.monotonic() - started, 1)
    found = re.findall(r"VmHWM (\d+) kB", done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError("%s failed (exit %d): %s" % (script, done.returncode, done.stderr[-3000:]))
    return done, round(int(found[-1]) / 1024.0, 1)


def service(python, model_dir, wav, out, timeout=3600):
    done, peak = run_probed(python, os.path.join(REPO, "deploy_jetson", "service.py"),
                            ["--model-dir", model_dir, "--source", "file:%s" % wav, "--fast", "--quiet",
                             "--threads", "1", "--backend", "onnxruntime", "--output", out], timeout)
    found = re.search(r"service: (\d+) window\(s\) .* in ([\d.]+) s;", done.stdout)
    return {"peak_rss_mb": peak, "windows": int(found.group(1)), "loop_s": float(found.group(2)),
            "wall_s": done.wall_s, "errors_logged": done.stderr.count(" ERROR ")}


def prepare(source, dest, size, timeout=3600):
    done, peak = run_probed(sys.executable, os.path.join(REPO, "train_host", "prepare.py"),
                            [source, dest, "--adapter", "folder", "--preset", "heart", "--size", size,
                             "--workers", "1", "--force"], timeout)
    with open(os.path.join(dest, "prepare.json")) as handle:
        manifest = json.load(handle)
    return {"peak_rss_mb": peak, "images": len(manifest["images"]), "wall_s": done.wall_s,
            "shared_audio_checked": manifest.get("split", {}).get("shared_audio", {}).get("checked")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="length of the long recording (default 2)")
    parser.add_argument("--rate", type=int, default=44100, help="its sample rate, Hz (default 44100)")
    parser.add_argument("--size", type=int, default=224, help="image size R of the model and dataset (default 224)")
    parser.add_argument("--device-minutes", type=float, default=10.0,
                        help="length of the 8 kHz file the device stack replays (0: skip that step)")
    parser.add_argument("--device-python", default=DEVICE_PYTHON)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (it holds the long WAV)")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "memory.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from test_service_support import make_model  # random-init ResNet18 exported as train_host/export.py does

    work = tempfile.mkdtemp(prefix="stetho-bench-memory-")
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "note": "shared 2-core machine; other jobs may have "
                          "run at the same time", "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]},
              "recording": {"hours": args.hours, "rate_hz": args.rate, "format": "WAV, 16-bit mono"},
              "size": args.size, "goals_mb": GOALS_MB,
              "before": "the whole file decoded to float64 and resampled whole: a 2-hour 44.1 kHz file needed ~6 GB "
                        "before its first window, a 2-hour 8 kHz one 1.29 GB (issue 28)"}
    try:
        folder = os.path.join(work, "recordings", "normal")
        os.makedirs(folder)
        wav = os.path.join(folder, "long.wav")
        started = time.monotonic()
        report["recording"]["bytes"] = long_wav(wav, args.hours * 3600, args.rate)
        report["recording"]["write_s"] = round(time.monotonic() - started, 1)
        os.makedirs(os.path.join(work, "recordings", "murmur"))  # prepare.py wants two classes: a short second one
        long_wav(os.path.join(work, "recordings", "murmur", "short.wav"), 30, 4000)
        model_dir = str(make_model(os.path.join(work, "model"), size=args.size))
        print("replaying %.1f h at %d Hz (%.0f MB) with the service ..." % (args.hours, args.rate,
                                                                           report["recording"]["bytes"] / 2.0 ** 20))
        report["service"] = service(sys.executable, model_dir, wav, os.path.join(work, "out"))
        print("preparing it with prepare.py ...")
        report["prepare"] = prepare(os.path.join(work, "recordings"), os.path.join(work, "dataset"), args.size)
        if args.device_minutes and os.path.exists(args.device_python):
            short = os.path.join(work, "device.wav")
            long_wav(short, args.device_minutes * 60, 8000)
            print("replaying %.0f min at 8 kHz on the device stack (%s) ..." % (args.device_minutes,
                                                                               args.device_python))
            entry = service(args.device_python, model_dir, short, os.path.join(work, "out-device"))
            entry.update(minutes=args.device_minutes, rate_hz=8000, resampler="numpy sinc (no soxr)")
            report["device_stack"] = entry
    finally:
        report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        if args.keep:
            print("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["met"] = {"service": report["service"]["peak_rss_mb"] <= GOALS_MB["service"],
                     "prepare": report["prepare"]["peak_rss_mb"] <= GOALS_MB["prepare"]}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    s, p = report["service"], report["prepare"]
    print("memory benchmark: %.1f h at %d Hz, R=%d, %s, load %s → %s" % (
        args.hours, args.rate, args.size, report["machine"]["cpu"], report["machine"]["loadavg_at_start"],
        report["machine"]["loadavg_at_end"]))
    print("  service:   peak RSS %6.1f MB (goal ≤ %d: %s); %d windows in %.0f s" % (
        s["peak_rss_mb"], GOALS_MB["service"], "met" if report["met"]["service"] else "MISSED", s["windows"],
        s["wall_s"]))
    print("  prepare:   peak RSS %6.1f MB (goal ≤ %d: %s); %d images in %.0f s" % (
        p["peak_rss_mb"], GOALS_MB["prepare"], "met" if report["met"]["prepare"] else "MISSED", p["images"],
        p["wall_s"]))
    if "device_stack" in report:
        d = report["device_stack"]
        print("  device stack (%.0f min at 8 kHz, numpy sinc): peak RSS %.1f MB; %d windows in %.0f s" % (
            d["minutes"], d["peak_rss_mb"], d["windows"], d["wall_s"]))
    print("written to %s" % args.output)
    return 0 if all(report["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark: training speed on this CPU at R=128 and R=224, and a whole Yaseen run at R=128 against the clock.

    python bench/train.py [--data ../shared/data/yaseen2018] [--sizes 128,224] [--full-epochs 15] [--no-full]
                          [--out bench/results/train.json]

1. The whole Yaseen set (1000 clips, 5 classes) is prepared at each size with
   train_host/prepare.py into data/bench-yaseen-R (afresh each time: a few seconds).
2. Network only: images/s of a training step (forward + backward + AdamW, batch 32, random
   tensors) and of inference, one thread per core; float32 under three OpenMP wait settings, and
   bfloat16 autocast as train.py's --amp trains on a CPU (in hardware where the CPU has AMX or AVX-512 BF16).
3. A real epoch: train_host/train.py for 1 epoch (from scratch, the default augmentation and
   precise BatchNorm); epoch time and training images/s from its train_log.csv.
4. (R=128, unless --no-full) the whole run as a user runs it: train.py with --full-epochs,
   export and test evaluation; wall time, time to the best epoch, test metrics.
Writes bench/results/train.json.  The machine is shared: the load average before and after
each step is recorded with it.  Without ../shared/data a synthetic set (NOT clinical) stands in.
"""
import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
YASEEN_MAP = "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"


def load():
    return [round(v, 2) for v in os.getloadavg()]


def cpu_name():
    """The CPU's model name as /proc/cpuinfo gives it ("AMD EPYC ..."), else platform.processor() ("" if unknown)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sh(argv):
    """Run a project command from the repository root; its output goes to ours.

    Returns (wall seconds, CPU seconds (user + system) of the command).  On a shared machine the CPU
    time divided by the cores is what the wall time would be with the cores to itself.
    """
    print("$ " + " ".join(argv), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    subprocess.run([sys.executable] + argv, cwd=REPO, check=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare(source, size, synthetic):
    """The bench's image set at ``size``, rendered afresh (--force: a few seconds; a set left by an older contract
    would otherwise be refused)."""
    dest = os.path.join("data", "bench-%s-%d" % ("synthetic" if synthetic else "yaseen", size))
    if synthetic:
        raw = os.path.join("data", "bench-synthetic-raw")
        if not os.path.isdir(os.path.join(REPO, raw)):
            sh(["train_host/synthesize.py", raw, "--per-class", "333"])
        sh(["train_host/prepare.py", raw, dest, "--preset", "heart", "--size", str(size), "--workers", "2", "--force"])
    else:
        sh(["train_host/prepare.py", source, dest, "--preset", "heart", "--size", str(size), "--class-map",
            YASEEN_MAP, "--workers", "2", "--force"])
    return dest


NETWORK_SPEED = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from train_host.models import build_model
size, threads, batch, steps = (int(v) for v in sys.argv[2:6])
bfloat16 = sys.argv[6] == "bfloat16"
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model("resnet18", 5)
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
if bfloat16:  # as train.py trains under --amp on a CPU
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
def step():
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        logits = model(x)
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    optimizer.step()
model.train()
step()
start = time.time()
for _ in range(steps):
    step()
train_ips = steps * batch / (time.time() - start)
model.eval()
with torch.no_grad():
    model(x)
    start = time.time()
    for _ in range(steps):
        model(x)
print(json.dumps([train_ips, steps * batch / (time.time() - start)]))
"""


OPENMP_WAITS = {  # how OpenMP threads wait at barriers (set before torch is imported, so in a fresh process)
    "libgomp default (spin 300k)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000 (train.py)": {"GOMP_SPINCOUNT": "10000"},
}

BFLOAT16 = "bfloat16 autocast + channels_last (train.py --amp on; auto with AMX or AVX-512 BF16)"


def network_speed(size, threads, wait, batch=32, steps=8, precision="float32"):
    """(training images/s, inference images/s) of ResNet18 at size×size on random tensors, in a fresh
    process whose OpenMP wait settings are ``wait`` (a dict of environment variables); ``precision``
    "bfloat16" trains as train.py's --amp does on a CPU (autocast, channels_last; inference stays float32)."""
    env = dict((k, v) for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
    env.update(wait)
    out = subprocess.run([sys.executable, "-c", NETWORK_SPEED, REPO, str(size), str(threads), str(batch), str(steps),
                          precision],
                         env=env, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def epoch_precision(model_dir):
    """The precision train.py trained in ("float32", or the autocast dtype its --amp auto chose), from the
    checkpoint it left in ``model_dir``."""
    from train_host.export import load_checkpoint
    return load_checkpoint(os.path.join(model_dir, "checkpoint.pth.tar"))["training"].get("amp") or "float32"


def read_log(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "yaseen2018"))
    parser.add_argument("--sizes", default="128,224", help="image sizes R to measure (default 128,224)")
    parser.add_argument("--full-epochs", type=int, default=15, help="epochs of the whole run at R=128")
    parser.add_argument("--no-full", action="store_true", help="skip the whole run")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "train.json"),
                        help="results JSON (default bench/results/train.json)")
    args = parser.parse_args(argv)
    import torch  # only for versions; the measurements run in subprocesses
    from train_host.train import cpu_has_amx, cpu_runs_bfloat16  # what train.py's --amp auto asks
    synthetic = not os.path.isdir(args.data)
    if synthetic:
        print("bench/train: %s not found; using a SYNTHETIC set (speed figures only, no accuracy meaning)"
              % args.data)
    result = {"machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "threads": args.threads,
                          "torch": str(torch.__version__), "cuda": torch.cuda.is_available(),
                          "amx": cpu_has_amx(), "bfloat16_in_hardware": cpu_runs_bfloat16()},
              "dataset": "synthetic" if synthetic else os.path.abspath(args.data), "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        entry = {"load_before": load()}
        dest = prepare(os.path.abspath(args.data), size, synthetic)
        entry["network"] = {}
        for name, wait in OPENMP_WAITS.items():
            train_ips, infer_ips = network_speed(size, args.threads, wait)
            entry["network"][name] = {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips}
        train_ips, infer_ips = network_speed(size, args.threads, OPENMP_WAITS["GOMP_SPINCOUNT=10000 (train.py)"],
                                             precision="bfloat16")
        entry["network"][BFLOAT16] = {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips}
        model_dir = os.path.join("models", "bench-epoch-%d" % size)
        entry["epoch_wall_s"], entry["epoch_cpu_s"] = sh(["train_host/train.py", dest, "--model-dir", model_dir, "--epochs", "1",
                                    "--no-pretrained", "--no-export", "--no-progress", "--force",
                                    "--threads", str(args.threads)])
        row = read_log(os.path.join(REPO, model_dir, "train_log.csv"))[-1]
        entry.update(epoch_precision=epoch_precision(os.path.join(REPO, model_dir)),
                     epoch_s=float(row["epoch_s"]), train_images_per_s=float(row["images_per_s"]),
                     train_images=sum(json.load(open(os.path.join(REPO, dest, "prepare.json")))["counts"]["train"]
                                      .values()), load_after=load())
        result["sizes"][str(size)] = entry
        print("bench/train: R=%d  network train / inference images/s: %s; real epoch (%s) %.1f s (%d images, "
              "%.1f img/s in the training loop; the command used %.0f CPU s); load %s → %s"
              % (size, "; ".join("%s %.1f / %.1f" % (name, v["train_images_per_s"], v["infer_images_per_s"])
                                 for name, v in entry["network"].items()),
                 entry["epoch_precision"], entry["epoch_s"], entry["train_images"], entry["train_images_per_s"], entry["epoch_cpu_s"],
                 entry["load_before"], entry["load_after"]), flush=True)
    if not args.no_full and "128" in result["sizes"]:
        dest = os.path.join("data", "bench-%s-128" % ("synthetic" if synthetic else "yaseen"))
        model_dir = os.path.join("models", "bench-full-128")
        full = {"epochs": args.full_epochs, "load_before": load(),
                "command": "python train_host/train.py %s --model-dir %s --epochs %d --no-pretrained --force"
                           % (dest, model_dir, args.full_epochs)}
        full["wall_s"], full["cpu_s"] = sh(["train_host/train.py", dest, "--model-dir", model_dir, "--epochs", str(args.full_epochs),
                             "--no-pretrained", "--no-progress", "--force", "--threads", str(args.threads)])
        rows = read_log(os.path.join(REPO, model_dir, "train_log.csv"))
        best = max(int(r["epoch"]) for r in rows if r["best"] == "1")
        metrics = json.load(open(os.path.join(REPO, model_dir, "metrics.json")))
        full.update(epochs_run=len(rows), best_epoch=best,
                    seconds_to_best_epoch=round(sum(float(r["epoch_s"]) for r in rows[:best + 1]), 1),
                    training_seconds=round(sum(float(r["epoch_s"]) for r in rows), 1),
                    val_balanced_accuracy_best=float(rows[best]["val_balanced_accuracy"]),
                    test={level: {k: metrics[level][k] for k in ("n", "accuracy", "balanced_accuracy", "mcc")}
                          for level in ("window", "recording")}, load_after=load())
        result["full_run_128"] = full
        full["cpu_s_per_core"] = full["cpu_s"] / result["machine"]["cores"]
        print("bench/train: whole run at R=128: %.0f s wall, %.0f CPU s (%.0f s per core) (%d epochs, best epoch %d "
              "reached after %.0f s of training); test accuracy %.4f (window) / %.4f (recording)%s"
              % (full["wall_s"], full["cpu_s"], full["cpu_s_per_core"], full["epochs_run"], best,
                 full["seconds_to_best_epoch"],
                 full["test"]["window"]["accuracy"], full["test"]["recording"]["accuracy"],
                 " — SYNTHETIC data, not clinical" if synthetic else " — Yaseen, split by source recording (no patient ids)"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    out = os.path.abspath(args.out)
    with open(out, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print("bench/train: wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

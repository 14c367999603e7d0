#!/usr/bin/env python3
"""Train a ResNet on a prepared spectrogram dataset, keep the best epoch by a clinical metric, test it, export it.

    python train_host/train.py DATA --model-dir models/<name> [--arch resnet18] [--epochs 30] [-b 32] [--lr 1e-3]

DATA is train_host/prepare.py's output (prepare.json + {train,val,test}/<class>/*.png).
The network input is the dataset's image size R (a different --resolution is
refused: resizing would break the contract).  Every epoch is validated; the
best one by --select (default: balanced accuracy on val; 'last' keeps the final epoch) is kept in
model_best.pth.tar, the latest in checkpoint.pth.tar (jetson-inference's keys:
epoch, arch, resolution, classes, num_classes, state_dict, accuracy, so its
onnx_export.py can read them).  At the end the best epoch is exported
(train_host/export.py), evaluated on test with onnxruntime (train_host/evaluate.py)
and summarised on one screen.  train_log.csv gets one row per epoch.

Runs on CUDA with AMP when present, else on the CPU with one thread per core.
Deterministic for a given --seed (same data order, augmentation and weights).
"""
import argparse
import copy
import csv
import math
import os
import random
import shutil
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts
# libgomp's threads spin 300k times at every barrier before they sleep.  Where the cores are shared (a CI
# runner, a workstation running other jobs) a spinning thread holds the core its partner needs and a step
# gets 2-10x slower; never spinning (OMP_WAIT_POLICY=PASSIVE) costs ~15% on free cores.  A short spin
# keeps both: R=128, 2 threads, images/s on free cores / beside one busy process: default 22.5 / 11.9,
# PASSIVE 19.7 / 18.2, GOMP_SPINCOUNT=10000 23.8 / 17.4 (bench/train.py).  Before torch is imported.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

from stetho.decision import DecisionRule  # noqa: E402
from stetho.errors import ConfigError  # noqa: E402
from stetho.labels import write_labels  # noqa: E402
from stetho.modelcard import CARD_NAME, ModelCard, sha256_file  # noqa: E402
from train_host import metrics as M  # noqa: E402
from train_host.augment import AugmentConfig, SpecAugment  # noqa: E402
from train_host.data import (EpochSampler, SpectrogramImages, class_weights, load_prepared,  # noqa: E402
                             site_balanced_weights)
from train_host.models import (ARCHS, build_model, count_parameters, imagenet_weights, load_matching,  # noqa: E402
                               read_weights_file)

LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
               "val_icbhi_score", "val_mcc", "val_select", "best", "epoch_s", "images_per_s")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
DEFAULT_WD = {"adamw": 0.05, "sgd": 1e-4}
SELECT_LAST = "last"
BALANCE_CHOICES = ("none", "weights", "sampler", "site-sampler", "site-recording-sampler")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DATA", help="prepared dataset (prepare.json inside)")
    p.add_argument("--model-dir", required=True, help="output folder, e.g. models/heart")
    # network
    p.add_argument("-a", "--arch", default="resnet18", choices=sorted(ARCHS), help="network")
    p.add_argument("--cbam", action="store_true", help="ResNet + CBAM blocks (ICBHI-paper style)")
    p.add_argument("--resolution", type=int, default=None, help="must equal the dataset's image size if given")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true", default=True,
                         help="start from torchvision's ImageNet weights if cached or downloadable (default)")
    weights.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="start from scratch")
    weights.add_argument("--weights", metavar="PATH", help="start from a local state_dict / checkpoint file")
    # optimisation
    p.add_argument("--epochs", type=int, default=30, help="total number of epochs (a resumed run counts on)")
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--lr", "--learning-rate", type=float, default=None,
                   help="peak learning rate (default: adamw 1e-3, sgd 0.05)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None,
                   help="weight decay (default: adamw 0.05, sgd 1e-4)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, then cosine decay")
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="final lr as a fraction of --lr")
    p.add_argument("--ema-epochs", type=float, default=0.0, metavar="E",
                   help="validate, keep and export an exponential moving average of the weights with a time "
                        "constant of E epochs (0: the weights as trained)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup (Zhang et al. 2018): train on pairs of images blended by λ ~ Beta(ALPHA, ALPHA) "
                        "against the same blend of their labels (0: off; 0.2-0.4 usual)")
    p.add_argument("--loss", default="ce", choices=("ce", "focal"), help="cross-entropy or focal loss")
    p.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss focusing parameter γ")
    p.add_argument("--focal-alpha", type=float, default=0.25, help="focal loss weight α")
    p.add_argument("--epoch-fraction", type=float, default=1.0, metavar="F",
                   help="an epoch is this fraction of the training images (drawn afresh each epoch): windows "
                        "cut with overlap give more distinct images at the cost of fewer (0 < F <= 1)")
    p.add_argument("--balance", default="none", choices=BALANCE_CHOICES,
                   help="class imbalance: none, inverse-frequency loss weights, a class-balanced sampler, a "
                        "sampler balancing the classes inside every site (prepare.json's 'site': recordings "
                        "from several clinics/devices whose class mix differs), or that sampler with every "
                        "recording of a site and class drawn as often as the others, long or short "
                        "(site-recording-sampler)")
    # model selection
    p.add_argument("--select", default="balanced_accuracy", choices=sorted(M.SELECT_KEYS) + [SELECT_LAST],
                   help="validation metric that picks model_best, or 'last': the final epoch, the end of the "
                        "cosine schedule, whatever val says (val is still measured and logged)")
    p.add_argument("--select-level", default="window", choices=("window", "recording"),
                   help="compute --select on windows or on recordings (mean window probabilities)")
    p.add_argument("--normal-class", default=None, help="normal class for the ICBHI score and the decision rule "
                                                         "(default: normal/healthy/N)")
    p.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                   help="after training, store the most specific threshold on P(abnormal) whose sensitivity on val "
                        "recordings is at least S (a screening operating point); default: the threshold with the "
                        "best balanced accuracy on val (train_host/calibrate.py re-chooses it later)")
    p.add_argument("--precise-bn", type=int, default=256, metavar="N",
                   help="recompute BatchNorm statistics on N training images after each epoch (0: off)")
    p.add_argument("--patience", type=int, default=10, help="stop after N epochs without improvement (0: never)")
    # augmentation (train split only)
    p.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    p.add_argument("--aug-shift", type=float, default=None,
                   help="max time roll, fraction of the width (default: from the dataset's contract: 0 for "
                        "peak-cut cycles, segmentation.mode 'peaks', whose images start at a peak; else 1)")
    p.add_argument("--aug-stretch", type=float, default=0.0,
                   help="max time stretch, fraction (0.2: up to 1.2x slower or faster; another heart rate)")
    p.add_argument("--aug-time-masks", type=int, default=2, help="number of time masks")
    p.add_argument("--aug-time-mask", type=float, default=0.1, help="max time-mask width, fraction")
    p.add_argument("--aug-freq-masks", type=int, default=2, help="number of frequency masks")
    p.add_argument("--aug-freq-mask", type=float, default=0.1, help="max frequency-mask height, fraction")
    p.add_argument("--aug-gain-db", type=float, default=6.0, help="max spectral tilt / gain jitter (dB)")
    p.add_argument("--aug-eq-db", type=float, default=0.0,
                   help="another stethoscope's response: a random smooth EQ curve of up to ± this many dB over the "
                        "band (0: off; e.g. 10)")
    p.add_argument("--aug-lowpass", type=float, default=0.0, metavar="P",
                   help="probability of a random low-pass at 150-800 Hz (a bell, a lightly pressed diaphragm)")
    p.add_argument("--aug-highpass", type=float, default=0.0, metavar="P",
                   help="probability of a random high-pass at 20-150 Hz (a diaphragm, a stethoscope's filter mode)")
    p.add_argument("--aug-noise-db", type=float, default=0.0,
                   help="add a noise floor up to this many dB above the bottom of the shown range to half "
                        "of the images (0: off; e.g. 40 for recordings from other devices and rooms)")
    # run
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue from a checkpoint (default PATH: MODEL_DIR/checkpoint.pth.tar)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation")
    p.add_argument("-j", "--workers", type=int, default=None,
                   help="data loading processes (default: 0 on CPU, where they would steal cores; 4 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per available core)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                   help="mixed precision: float16 on CUDA; bfloat16 on a CPU (auto: on CUDA, and on CPUs with "
                        "AMX or AVX-512 BF16, where it trains ResNet18 1.3-1.4x faster at R=64, 2.0-2.4x at R=128; "
                        "elsewhere bfloat16 is emulated and slow)")
    p.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="same as --amp off")
    p.add_argument("--no-export", action="store_true", help="stop after training (no export, no test)")
    p.add_argument("--force", action="store_true", help="start over in a model folder that holds another run")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error("--%s must be at least 1" % name.replace("_", "-"))
    if args.target_sensitivity is not None and not 0.0 < args.target_sensitivity <= 1.0:
        p.error("--target-sensitivity must be in (0, 1], not %r" % args.target_sensitivity)
    if args.patience < 0 or args.precise_bn < 0 or (args.workers is not None and args.workers < 0):
        p.error("--patience, --precise-bn and --workers cannot be negative")
    return args


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): mean of -α (1 - p_t)^γ log p_t, p_t = softmax probability of the target.

    ``weight`` (per class, optional) multiplies each sample's term like CrossEntropyLoss's weight
    (the mean is then taken over the weights, as CrossEntropyLoss does).
    """

    def __init__(self, gamma=2.0, alpha=0.25, weight=None):
        super(FocalLoss, self).__init__()
        self.gamma, self.alpha = gamma, alpha
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits, target):
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -self.alpha * (1.0 - log_p.exp()) ** self.gamma * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (loss * w).sum() / w.sum()


def learning_rate(step, total_steps, warmup_steps, peak, floor):
    """lr of step ``step`` (from 0): linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay that
    reaches ``floor`` at the last step (``total_steps - 1``)."""
    if step < warmup_steps:
        return peak * (step + 1) / float(warmup_steps)
    progress = min(1.0, (step + 1 - warmup_steps) / float(max(1, total_steps - warmup_steps)))
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def sampling_weights(balance, train_set, n_classes):
    """The training sampler's per-image weights for ``--balance`` (None: every image once per epoch).

    ``train_set`` has ``labels``, ``sites`` and ``recordings``, one per image."""
    if balance == "sampler":
        per_class = class_weights(train_set.labels, n_classes)
        return [per_class[label] for label in train_set.labels]
    if balance == "site-sampler":
        return site_balanced_weights(train_set.labels, train_set.sites)
    if balance == "site-recording-sampler":
        return site_balanced_weights(train_set.labels, train_set.sites, train_set.recordings)
    return None


def mix_batch(images, target, alpha, rng):
    """mixup: blend each image with another of the batch (a permutation drawn from ``rng``, a numpy Generator).

    Returns ``(mixed, partner_target, lam)`` with ``mixed = lam * images + (1 - lam) * images[perm]``,
    ``partner_target = target[perm]`` and ``lam ~ Beta(alpha, alpha)``; the loss is then
    ``lam * loss(target) + (1 - lam) * loss(partner_target)``.
    The images are normalised tensors, an affine map of the uint8 pictures, so blending them blends the pictures.
    """
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(target))).to(target.device)
    return lam * images + (1.0 - lam) * images[perm], target[perm], lam


def ema_decay(time_constant_epochs, steps_per_epoch):
    """Per-step decay of a weight average whose memory is ``time_constant_epochs`` epochs: exp(-1/(E*steps))."""
    return math.exp(-1.0 / (time_constant_epochs * max(steps_per_epoch, 1)))


def update_average(average, model, decay, step):
    """One step of the exponential moving average of ``model``'s parameters into ``average`` (in place).

    The decay is capped at (1+step)/(10+step) (TensorFlow's ExponentialMovingAverage with num_updates), so the
    average is not pinned to the random initial weights for its first epochs.  Buffers (BatchNorm statistics)
    are not averaged: they belong to weights, and are recomputed for the average's own weights (--precise-bn).
    """
    decay = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for kept, current in zip(average.parameters(), model.parameters()):
            kept.lerp_(current.detach(), 1.0 - decay)
    return decay


def copy_buffers(target, source):
    """Copy ``source``'s buffers (BatchNorm running statistics) into ``target``, a network of the same shape."""
    with torch.no_grad():
        for kept, current in zip(target.buffers(), source.buffers()):
            kept.copy_(current)


def _cpu_probe(name):
    """torch's own CPU feature probe ``torch.cpu.<name>()``; False where this torch lacks it."""
    probe = getattr(getattr(torch, "cpu", None), name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def cpu_has_amx():
    """True when this CPU has AMX tiles (Intel Sapphire Rapids and later)."""
    return _cpu_probe("_is_amx_tile_supported")


def cpu_runs_bfloat16():
    """True when oneDNN runs bfloat16 convolutions in hardware on this CPU: AMX tiles (Intel Sapphire Rapids
    and later) or the AVX-512 BF16 instructions (AMD Zen 4 and later, Intel Cooper Lake)."""
    return cpu_has_amx() or _cpu_probe("_is_avx512_bf16_supported")


def mixed_precision(choice, use_cuda):
    """The autocast dtype for ``--amp choice`` ("auto", "on" or "off"), or None for full float32.

    CUDA: float16 (with a gradient scaler).  CPU: bfloat16 (no scaler needed: float32's exponent range), by
    default only where the CPU runs it in hardware (:func:`cpu_runs_bfloat16`): measured with bench/train.py
    (1 thread, batch 32, channels_last), ResNet18 training steps are 1.3x faster at R=64, 1.9x at R=96 and 2.4x
    at R=128 on a Xeon with AMX, 1.4x at R=64 and 2.0x at R=128 on an AMD EPYC with AVX-512 BF16
    (bench/results/train-bfloat16-avx512.json); with neither, bfloat16 is emulated and slower than float32.
    The weights, the optimiser and the exported ONNX stay float32 either way.
    """
    if choice == "off":
        return None
    if use_cuda:
        return torch.float16
    if choice == "on" or cpu_runs_bfloat16():
        return torch.bfloat16
    return None


def run_epoch_eval(model, loader, criterion, device, amp):
    """(mean loss, probabilities (n, N) float64) of ``model`` on ``loader`` (no augmentation); ``amp``: under
    float16 autocast (CUDA)."""
    model.eval()
    losses, probs, count = 0.0, [], 0
    with torch.no_grad():
        for images, target in loader:
            images, target = images.to(device), target.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
            losses += float(criterion(logits.float(), target)) * len(target)
            count += len(target)
            probs.append(torch.softmax(logits.float(), dim=1).double().cpu().numpy())
    return losses / max(count, 1), np.concatenate(probs) if probs else np.zeros((0, 0))


def recalibrate_batchnorm(model, loader, max_images, device):
    """Precise BatchNorm statistics (Wu & Johnson 2021) for the current weights.

    The running mean/variance that eval mode (and the ONNX) use are an exponential average over
    past batches, i.e. over older weights; on small datasets they lag the weights and eval-mode
    predictions collapse although train-mode ones are right.  Here they are recomputed as the plain
    average over up to ``max_images`` un-augmented training images.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    model.train()
    seen = 0
    with torch.no_grad():
        for images, _ in loader:
            if seen >= max_images:
                break
            model(images.to(device))
            seen += len(images)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    return seen


def read_log_rows(path, before_epoch):
    """Rows of an existing train_log.csv for epochs < before_epoch (a resumed run keeps them)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) < before_epoch]


def write_log(path, rows):
    tmp = path + ".part"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def fmt(value, spec="%.4f"):
    return "–" if value is None else spec % value


def main(argv=None):
    args = parse_args(argv)
    if args.ema_epochs < 0:
        return fail("--ema-epochs %g: must be >= 0 (0: off)" % args.ema_epochs)
    if not 0.0 < args.epoch_fraction <= 1.0:
        return fail("--epoch-fraction %g: must be in (0, 1]" % args.epoch_fraction)
    if args.mixup < 0:
        return fail("--mixup %g: must be >= 0 (0: off)" % args.mixup)
    from train_host.calibrate import calibrate
    from train_host.evaluate import evaluate
    from train_host.export import ExportError, export, load_checkpoint, optimizer_entries, own_optimizer_state
    from train_host.operating_point import OperatingPointError

    # ---- device, threads, seeds -------------------------------------------------------------------
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda, but no CUDA device is available")
    device = torch.device("cuda" if use_cuda else "cpu")
    amp_dtype = mixed_precision(args.amp, use_cuda)
    amp = amp_dtype is not None
    precision = str(amp_dtype).replace("torch.", "") if amp else None  # as model.json's training.amp says it
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or cores
    torch.set_num_threads(threads)
    workers = args.workers if args.workers is not None else (min(4, cores) if use_cuda else 0)
    random.seed(args.seed)
    np.random.seed(args.seed % 2 ** 32)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- data ---------------------------------------------------------------------------------------
    try:
        dataset = load_prepared(args.data)
    except ConfigError as error:
        return fail(str(error))
    R, classes = dataset.size, dataset.classes
    if args.resolution is not None and args.resolution != R:
        return fail("--resolution %d differs from the dataset's image size %d (%s); resizing would break the "
                    "contract: prepare the data at %d instead" % (args.resolution, R,
                                                                  os.path.join(dataset.root, "prepare.json"),
                                                                  args.resolution))
    # a time roll is a new phase: right for windows cut anywhere, wrong for cycles cut at a peak (the device
    # cuts them there too), so the contract sets the default; --aug-shift overrides it
    peaks = dataset.contract.segmentation.mode == "peaks"
    shift = args.aug_shift if args.aug_shift is not None else (0.0 if peaks else 1.0)
    try:
        augment_cfg = None if args.no_augment else AugmentConfig(
            shift=shift, stretch=args.aug_stretch, time_masks=args.aug_time_masks,
            time_mask=args.aug_time_mask, freq_masks=args.aug_freq_masks, freq_mask=args.aug_freq_mask,
            gain_db=args.aug_gain_db, noise_db=args.aug_noise_db,
            eq_db=args.aug_eq_db, lowpass=args.aug_lowpass, highpass=args.aug_highpass)
    except ConfigError as error:
        return fail(str(error))
    augment = SpecAugment(augment_cfg, dataset.contract.spectrogram) if augment_cfg and augment_cfg.active else None
    if augment_cfg is not None:
        print("=> augment: time roll up to %g of the width (%s)" % (shift, "--aug-shift" if args.aug_shift is not None
              else "the contract's segmentation.mode %r: %s" % (dataset.contract.segmentation.mode,
                                                                "cycles start at a peak, no roll" if peaks
                                                                else "windows start anywhere")))
    train_set = SpectrogramImages(dataset, "train", augment=augment)
    val_set = SpectrogramImages(dataset, "val")
    if len(train_set) < 2:
        return fail("%s: the train split has %d image(s); need at least 2" % (dataset.root, len(train_set)))
    counts = np.bincount(train_set.labels, minlength=len(classes))
    if (counts == 0).any():
        print("=> warning: no training images for class(es) %s" % [c for c, n in zip(classes, counts) if n == 0])
    if not len(val_set):
        print("=> warning: no validation images; the last epoch will be kept as the best")
    print("=> dataset:  %s  (%d classes: %s; train %d / val %d / test %d images; contract %s, %dx%d)"
          % (dataset.root, len(classes), " ".join(classes), len(train_set), len(val_set), len(dataset.split("test")),
             dataset.contract.name, R, R))

    # ---- model folder: never silently replace another run -----------------------------------------
    model_dir = os.path.abspath(args.model_dir)
    os.makedirs(model_dir, exist_ok=True)
    checkpoint_path = os.path.join(model_dir, "checkpoint.pth.tar")
    best_path = os.path.join(model_dir, "model_best.pth.tar")
    log_path = os.path.join(model_dir, "train_log.csv")
    resume_path = None
    if args.resume:
        resume_path = checkpoint_path if args.resume == "auto" else args.resume
        if not os.path.isfile(resume_path):
            return fail("--resume: %s not found" % resume_path)
    elif not args.force:
        for path in (checkpoint_path, os.path.join(model_dir, CARD_NAME)):
            if os.path.isfile(path):
                return fail("%s already holds a run (%s); use --resume to continue it or --force to start over"
                            % (model_dir, os.path.basename(path)))

    # ---- network and starting weights --------------------------------------------------------------
    model = build_model(args.arch, len(classes), cbam=args.cbam)
    if args.weights:
        try:
            loaded, skipped = load_matching(model, read_weights_file(args.weights))
        except ValueError as error:
            return fail("--weights %s" % error)
        pretrained = {"used": True, "requested": "file", "file": os.path.basename(args.weights),
                      "sha256": sha256_file(args.weights), "loaded": len(loaded), "skipped": skipped}
        weights_note = "weights from %s (%d tensors, %d skipped)" % (args.weights, len(loaded), len(skipped))
    elif args.pretrained and not resume_path:
        state, pretrained = imagenet_weights(args.arch)
        if state is not None:
            loaded, skipped = load_matching(model, state)
            pretrained.update(loaded=len(loaded), skipped=skipped)
            weights_note = "ImageNet weights (%s)" % pretrained["source"]
        else:
            print("=> WARNING: ImageNet weights unavailable (%s); training %s FROM SCRATCH"
                  % (pretrained["reason"], args.arch))
            weights_note = "from scratch (ImageNet weights unavailable)"
    else:
        pretrained = {"used": False, "requested": "none"}
        weights_note = "from scratch"
    model.to(device)
    channels_last = use_cuda or amp  # on a CPU it pays only with bfloat16 (fp32 at R=64: 5 % slower)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    # ---- loss, sampler, optimiser ---------------------------------------------------------------------
    weight = None
    if args.balance == "weights":
        weight = torch.tensor(class_weights(train_set.labels, len(classes)), dtype=torch.float32, device=device)
    if args.loss == "focal":
        criterion = FocalLoss(args.focal_gamma, args.focal_alpha, weight).to(device)
    else:
        criterion = nn.CrossEntropyLoss(weight=weight)
    eval_criterion = nn.CrossEntropyLoss()
    sampler = EpochSampler(len(train_set), args.seed, weights=sampling_weights(args.balance, train_set, len(classes)),
                           fraction=args.epoch_fraction)
    loader_kwargs = dict(num_workers=workers, pin_memory=use_cuda, persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                                               drop_last=len(sampler) > args.batch_size, **loader_kwargs)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kwargs)
    plain_train = SpectrogramImages(dataset, "train")  # un-augmented, for the BatchNorm statistics
    bn_subset = np.random.default_rng([args.seed, 1]).permutation(len(plain_train))[:max(args.precise_bn, 0)]
    bn_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(plain_train, sorted(bn_subset.tolist())),
                                            batch_size=args.batch_size, shuffle=False,
                                            drop_last=len(bn_subset) > args.batch_size, **loader_kwargs)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    weight_decay = args.weight_decay if args.weight_decay is not None else DEFAULT_WD[args.optimizer]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=weight_decay,
                                    nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and use_cuda)
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))
    # the weights that are validated, kept and exported: the trained ones, or their moving average
    average = copy.deepcopy(model).requires_grad_(False) if args.ema_epochs > 0 else None
    decay = ema_decay(args.ema_epochs, steps_per_epoch) if average is not None else None
    evaluated = average if average is not None else model

    # ---- resume ----------------------------------------------------------------------------------------
    start_epoch, best_value, best_epoch, stale = 0, None, None, 0
    rows = []
    if resume_path:
        try:
            checkpoint = load_checkpoint(resume_path)
        except ExportError as error:
            return fail(str(error))
        missing = [key for key in ("optimizer", "select", "dataset") if key not in checkpoint]
        if missing:
            return fail("%s: lacks %s; only checkpoints of this train.py can be resumed (use --weights to start "
                        "from other weights)" % (resume_path, ", ".join(missing)))
        if checkpoint["dataset"].get("fingerprint") != dataset.fingerprint:
            return fail("%s was trained on another dataset than %s; start a new --model-dir (or use --weights)"
                        % (resume_path, dataset.root))
        if (checkpoint["arch"], bool(checkpoint.get("cbam")), list(checkpoint["classes"])) != (args.arch, args.cbam,
                                                                                             classes):
            return fail("%s is a %s%s for %s; pass the same --arch/--cbam" % (
                resume_path, checkpoint["arch"], " + CBAM" if checkpoint.get("cbam") else "", checkpoint["classes"]))
        # an averaging run keeps the trained weights apart ("train_state_dict"); "state_dict" is what was validated
        model.load_state_dict(checkpoint.get("train_state_dict", checkpoint["state_dict"]))
        if average is not None:
            average.load_state_dict(checkpoint["state_dict"])
        try:  # this project's state: 'optimizer' is the SGD state jetson-inference's train.py --resume loads
            optimizer.load_state_dict(own_optimizer_state(checkpoint, args.optimizer, resume_path))
        except ExportError as error:
            return fail(str(error))
        scaler.load_state_dict(checkpoint.get("scaler", {}))
        pretrained = checkpoint.get("pretrained", pretrained)
        start_epoch = checkpoint["epoch"] + 1
        best_value, best_epoch = checkpoint["select"]["best"], checkpoint["select"]["best_epoch"]
        stale = checkpoint["select"]["epochs_since_best"]
        rows = read_log_rows(log_path, start_epoch)
        weights_note = "resumed from %s (epoch %d done)" % (resume_path, checkpoint["epoch"])
    write_labels(os.path.join(model_dir, "labels.txt"), classes)

    print("=> using model:  %s%s, %.1f M parameters, %s" % (args.arch, " + CBAM" if args.cbam else "",
                                                           count_parameters(model) / 1e6, weights_note))
    print("=> device: %s%s, %d thread(s), %d loader worker(s); batch %d, %s lr %.2g wd %.2g, warm-up %.1f epoch(s) "
          "+ cosine%s; loss %s, balance %s%s; select %s (%s level) on val, patience %d; augment %s"
          % (device, " (AMP %s)" % precision if amp else "", threads, workers, args.batch_size, args.optimizer, lr,
             weight_decay, args.warmup_epochs,
             ", weights averaged over ~%g epoch(s) (decay %.5f a step)" % (args.ema_epochs, decay) if decay else "",
             args.loss, args.balance,
             ", %d of %d images an epoch" % (len(sampler), len(train_set)) if len(sampler) < len(train_set) else "",
             args.select, args.select_level, args.patience,
             ("off" if augment is None else "on") + (", mixup α %g" % args.mixup if args.mixup > 0 else "")))

    # ---- the loop ----------------------------------------------------------------------------------------
    from tqdm import tqdm
    training = {"arch": args.arch, "cbam": args.cbam, "resolution": R, "epochs": args.epochs,
                "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": lr, "weight_decay": weight_decay,
                "momentum": args.momentum if args.optimizer == "sgd" else None, "warmup_epochs": args.warmup_epochs,
                "min_lr_ratio": args.min_lr_ratio, "ema_epochs": args.ema_epochs or None, "ema_decay": decay,
                "mixup": args.mixup or None, "loss": args.loss,
                "focal": {"gamma": args.focal_gamma, "alpha": args.focal_alpha} if args.loss == "focal" else None,
                "balance": args.balance, "epoch_fraction": args.epoch_fraction,
                "select": args.select, "select_level": args.select_level,
                "patience": args.patience, "augment": augment_cfg.to_dict() if augment is not None else None,
                "seed": args.seed, "device": str(device), "amp": precision or False, "threads": threads,
                "workers": workers,
                "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    run_start = time.time()
    epoch = start_epoch - 1
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        mix_rng = np.random.default_rng([args.seed, 2, epoch]) if args.mixup > 0 else None  # exact on --resume
        model.train()
        epoch_start = time.time()
        seen, loss_sum, correct = 0, 0.0, 0
        bar = tqdm(train_loader, desc="Epoch: [%d]" % epoch, unit="batch", leave=False, disable=not args.progress)
        for i, (images, target) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            current_lr = learning_rate(step, total_steps, warmup_steps, lr, lr * args.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            partner, lam = target, 1.0
            if mix_rng is not None:
                images, partner, lam = mix_batch(images, target, args.mixup, mix_rng)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float16, enabled=amp):
                logits = model(images)
                loss = criterion(logits.float(), target)
                if lam < 1.0:
                    loss = lam * loss + (1.0 - lam) * criterion(logits.float(), partner)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                update_average(average, model, decay, step)
            seen += len(target)
            loss_sum += float(loss.detach()) * len(target)
            predicted = logits.argmax(dim=1)
            correct += lam * int((predicted == target).sum()) + (1.0 - lam) * int((predicted == partner).sum())
            bar.set_postfix(loss="%.4f" % (loss_sum / seen), acc="%.3f" % (correct / float(seen)))
        train_seconds = time.time() - epoch_start
        train_loss, train_acc = loss_sum / seen, correct / float(seen)
        if args.precise_bn > 0:
            recalibrate_batchnorm(evaluated, bn_loader, args.precise_bn, device)
        elif average is not None:
            copy_buffers(average, model)  # the trained weights' running statistics: the nearest there are

        val, val_loss, value = None, None, None
        if len(val_set):
            # float32 on a CPU whatever the training's autocast: the epoch is chosen on the float32 ONNX's answers
            val_loss, val_probs = run_epoch_eval(evaluated, val_loader, eval_criterion, device, amp and use_cuda)
            val = M.evaluate_levels(np.array(val_set.labels), val_probs, val_set.recordings, classes,
                                    args.normal_class)
            if args.select != SELECT_LAST:
                value = M.selection_value(val[args.select_level], args.select)
        # ties (common on small sets) go to the lower validation loss; with nothing to select by (no val, or
        # --select last) the latest epoch wins
        score = (0.0, float(epoch)) if value is None else (value, -val_loss)
        is_best = best_value is None or score > tuple(best_value)
        if is_best:
            best_value, best_epoch, stale = list(score), epoch, 0
        else:
            stale += 1
        window = val["window"] if val else {}
        state = {
            # jetson-inference's keys
            "epoch": epoch, "arch": args.arch, "resolution": R, "classes": classes, "num_classes": len(classes),
            "state_dict": evaluated.state_dict(),
            "accuracy": {"train": 100.0 * train_acc, "val": 100.0 * window["accuracy"] if val else None},
            # this project's
            "loss": {"train": train_loss, "val": val_loss}, **optimizer_entries(model, args.optimizer, optimizer),
            "scaler": scaler.state_dict(), "cbam": args.cbam, "contract": dataset.meta["contract"],
            "dataset": {"path": dataset.root, "fingerprint": dataset.fingerprint}, "pretrained": pretrained,
            "training": training,
            "select": {"metric": args.select, "level": args.select_level, "value": value, "best": best_value,
                       "best_epoch": best_epoch, "epochs_since_best": stale},
            "val": {level: {k: val[level][k] for k in ("accuracy", "balanced_accuracy", "icbhi_score", "mcc",
                                                        "roc_auc")} for level in val} if val else None,
        }
        if average is not None:
            state["train_state_dict"] = model.state_dict()  # what --resume continues from
        torch.save(state, checkpoint_path + ".part")
        os.replace(checkpoint_path + ".part", checkpoint_path)
        if is_best:
            shutil.copyfile(checkpoint_path, best_path)
        rows.append({"epoch": epoch, "lr": "%.6g" % current_lr, "train_loss": "%.6f" % train_loss,
                     "train_accuracy": "%.6f" % train_acc, "val_loss": fmt(val_loss, "%.6f"),
                     "val_accuracy": fmt(window.get("accuracy"), "%.6f"),
                     "val_balanced_accuracy": fmt(window.get("balanced_accuracy"), "%.6f"),
                     "val_icbhi_score": fmt(window.get("icbhi_score"), "%.6f"),
                     "val_mcc": fmt(window.get("mcc"), "%.6f"), "val_select": fmt(value, "%.6f"),
                     "best": int(is_best), "epoch_s": "%.2f" % (time.time() - epoch_start),
                     "images_per_s": "%.2f" % (seen / train_seconds)})
        write_log(log_path, [dict((k, ("" if v == "–" else v)) for k, v in row.items()) for row in rows])
        print("Epoch: [%d/%d] train loss %.4f acc %.3f | val loss %s acc %s MAcc %s ICBHI %s MCC %s | %.1f s, "
              "%.1f img/s%s" % (epoch, args.epochs - 1, train_loss, train_acc, fmt(val_loss), fmt(window.get("accuracy")),
                                fmt(window.get("balanced_accuracy")), fmt(window.get("icbhi_score")),
                                fmt(window.get("mcc")), time.time() - epoch_start, seen / train_seconds,
                                "  * best" if is_best else ""))
        if args.patience and stale >= args.patience and len(val_set):
            print("=> early stop: no better %s for %d epochs (best epoch %d)" % (args.select, stale, best_epoch))
            stopped_early = True
            break
    train_time = time.time() - run_start
    if epoch < start_epoch:
        print("=> nothing to train: %s is at epoch %d and --epochs is %d" % (resume_path, start_epoch - 1,
                                                                             args.epochs))
    print("=> saved %s (epoch %d) and %s (best epoch %s)" % (checkpoint_path, epoch, best_path, best_epoch))
    if args.no_export:
        return 0

    # ---- export the best epoch, test it as the device will run it, summarise ------------------------------
    best_checkpoint = torch.load(best_path, map_location="cpu", weights_only=True)
    best_checkpoint["training"] = dict(training, epochs_run=epoch + 1, best_epoch=best_epoch,
                                       stopped_early=stopped_early, train_seconds=round(train_time, 1),
                                       images_per_s=float(rows[-1]["images_per_s"]) if rows else None,
                                       val=best_checkpoint.get("val"))
    torch.save(best_checkpoint, best_path)
    try:
        exported = export(model_dir, "model_best.pth.tar", dataset.root, force=True)
        # the operating point, on val recordings as the device will score them (the ONNX, recording means)
        calibrate(model_dir, dataset.root, "val", args.target_sensitivity, args.normal_class, write=True,
                  fallback=True, log=lambda line: print("=> " + line[len("calibrate: "):]))
        if dataset.split("test"):
            test = evaluate(model_dir, dataset.root, "test", normal_class=args.normal_class,
                            progress=args.progress)
        else:
            test = None
            print("=> no test images: skipped the test evaluation")
    except (ExportError, ConfigError, OperatingPointError, ValueError) as error:
        return fail(str(error))
    summary(args, dataset, model_dir, best_checkpoint, exported, test, train_time, pretrained)
    return 0


def summary(args, dataset, model_dir, best, exported, test, train_time, pretrained):
    """The one-screen summary."""
    line = "=" * 78
    card = ModelCard.load(model_dir)
    out = [line, "%s  %s%s  %dx%d  %d classes: %s" % (os.path.basename(model_dir), best["arch"],
                                                     " + CBAM" if best.get("cbam") else "", best["resolution"],
                                                     best["resolution"], len(best["classes"]),
                                                     " ".join(best["classes"])),
           "data      %s (contract %s, %d Hz, %.2f s windows)" % (short(dataset.root), dataset.contract.name,
                                                                  dataset.contract.sample_rate,
                                                                  dataset.contract.segmentation.window_s),
           "weights   %s" % ("ImageNet (%s)" % pretrained.get("source", pretrained.get("file"))
                             if pretrained.get("used") else "from scratch"
                             + (" - ImageNet unavailable: %s" % pretrained["reason"] if pretrained.get("reason")
                                else "")),
           "training  %d epoch(s) run in %.0f s, %s%s"
           % (best["training"]["epochs_run"], train_time,
              "kept the last epoch, %d (--select last)" % best["epoch"] if args.select == SELECT_LAST
              else "best epoch %d by val %s (%s level) = %s" % (best["epoch"], args.select, args.select_level,
                                                                fmt(best["select"]["value"])),
              ", stopped early" if best["training"]["stopped_early"] else "")]
    rule = DecisionRule(card.decision, card.classes)
    out.append("rule      %s" % rule.describe())
    if test:
        for level in ("window", "recording"):
            m = test[level]
            out.append("test %-9s n=%-5d acc %s  MAcc %s  SE %s  SP %s  ICBHI %s  MCC %s  AUC %s  (argmax)"
                       % (level, m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]),
                          fmt(m["macro_sensitivity"]), fmt(m["macro_specificity"]), fmt(m["icbhi_score"]),
                          fmt(m["mcc"]), fmt(m["roc_auc"])))
        if test.get("at_rule"):
            m = test["at_rule"]["recording"]
            out.append("test recording n=%-5d acc %s  MAcc %s  SE %s  SP %s  at the rule (the device's exam verdict)"
                       % (m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["icbhi_sensitivity"]),
                          fmt(m["icbhi_specificity"])))
    if all(entry.get("patient") is None for entry in dataset.images):
        out.append("note      no patient ids in this dataset: splits are by recording (report this with the figures)")
    checks = exported["verification"]
    out += ["export    %s  sha256 %s  opset %d; ORT vs torch max |diff| %.1e on %d images, top-1 identical"
            % (short(exported["onnx"]), card.onnx_sha256[:12], exported["graph"]["opset"],
               checks["max_abs_diff_onnxruntime_vs_torch"], checks["images"]),
            "files     %s: %s" % (short(model_dir), " ".join(sorted(f for f in os.listdir(model_dir)
                                                                          if not f.endswith(".part")))),
            "device    imagenet.py --model=%s --labels=%s --input_blob=input_0 --output_blob=output_0 IMAGE"
            % (short(exported["onnx"]), short(os.path.join(model_dir, "labels.txt"))),
            line]
    print("\n".join(out))


def short(path):
    """``path`` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def fail(message):
    print("train: %s" % message, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Training: the loss, the schedule, the data path, augmentation, and real tiny runs (synthetic and Yaseen)."""
import csv
import json
import math
import os
import subprocess
import sys

if "OMP_WAIT_POLICY" not in os.environ:  # see train_host/train.py; before torch is imported
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numpy as np
import pytest
import torch

from stetho.tensor import imagenet_tensor
from stetho.png import read_png
from train_host import train
from train_host.augment import NO_AUGMENT, AugmentConfig, Palette, SpecAugment, apply_gain
from train_host.data import EpochSampler, SpectrogramImages, class_weights, load_prepared, to_tensor
from trainkit import synthetic_heart

torch.set_num_threads(2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--no-pretrained", "--threads", "2", "--no-progress", "-b", "8"]


# ---- pure parts -------------------------------------------------------------------------------------------

def test_focal_loss_against_hand_computed_value():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    target = torch.tensor([0, 1])
    # sample 1: p_t = e²/(e²+e+1); sample 2: p_t = 1/(2+e³)
    p1 = math.exp(2) / (math.exp(2) + math.e + 1)
    p2 = 1 / (2 + math.exp(3))
    by_hand = [-0.25 * (1 - p) ** 2 * math.log(p) for p in (p1, p2)]
    assert p1 == pytest.approx(0.665241, abs=1e-6)
    assert by_hand[0] == pytest.approx(0.011420, abs=1e-6)
    loss = train.FocalLoss(gamma=2.0, alpha=0.25)(logits, target)
    assert float(loss) == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    # class weights: weighted mean, as CrossEntropyLoss(weight=...) takes it
    weighted = train.FocalLoss(2.0, 0.25, weight=[1.0, 3.0, 1.0])(logits, target)
    assert float(weighted) == pytest.approx((by_hand[0] + 3 * by_hand[1]) / 4, rel=1e-6)
    # γ = 0, α = 1 is plain cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert float(train.FocalLoss(0.0, 1.0)(logits, target)) == pytest.approx(float(ce), rel=1e-6)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    lrs = [train.learning_rate(step, 100, 10, 1e-3, 1e-5) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-5)


def test_training_tensor_equals_the_imagenet_tensor():
    rng = np.random.default_rng(0)
    for size in (32, 64):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        ours = to_tensor(image).numpy()[None]
        np.testing.assert_allclose(ours, imagenet_tensor(image, size), rtol=0, atol=1e-6)


def test_augmentation_respects_the_spectrogram(tmp_path):
    from stetho import preset
    spec = preset("heart", size=32).spectrogram
    palette = Palette(spec.colormap)
    levels = np.random.default_rng(1).integers(0, 256, size=(32, 32)).astype(np.uint8)
    levels[0, 0] = 255
    image = palette.colours(levels)
    # the palette inverts the colormap (viridis repeats two colours; those map to a neighbour)
    assert np.abs(palette.levels(image).astype(int) - levels.astype(int)).max() <= 1
    # time roll: columns move, never rows; nothing is flipped
    rolled = SpecAugment(AugmentConfig(shift=1.0, time_masks=0, freq_masks=0, gain_db=0.0), spec)(
        image, np.random.default_rng(3))
    shift = [s for s in range(32) if np.array_equal(np.roll(image, s, axis=1), rolled)]
    assert len(shift) == 1
    # masks paint whole columns / rows in the colour of silence (level 0)
    masked = SpecAugment(AugmentConfig(shift=0.0, time_masks=1, time_mask=0.5, freq_masks=1, freq_mask=0.5,
                                       gain_db=0.0), spec)(image, np.random.default_rng(5))
    floor = np.all(masked == palette.floor, axis=2)
    changed = np.any(masked != image, axis=2)
    assert changed.any() and floor[changed].all()
    whole_bands = floor.all(axis=0)[None, :] | floor.all(axis=1)[:, None]
    assert whole_bands[changed].all()
    # gain: a tilt in dB; max-normalised contracts keep the image's peak level
    tilted = apply_gain(levels, np.linspace(6, -6, 32), spec.top_db, keep_peak=True)
    assert tilted.max() == levels.max() and not np.array_equal(tilted, levels)
    flat = apply_gain(levels, 10.0, spec.top_db, keep_peak=True)  # pure gain: nothing changes
    np.testing.assert_array_equal(flat[levels > 40], levels[levels > 40])
    # same seed → same image; the no-augment config is inactive
    aug = SpecAugment(AugmentConfig(), spec)
    assert np.array_equal(aug(image, np.random.default_rng(9)), aug(image, np.random.default_rng(9)))
    assert not NO_AUGMENT.active
    with pytest.raises(ValueError, match="colormap"):
        aug(np.zeros((32, 32, 3), dtype=np.uint8) + 7, np.random.default_rng(0))


def test_time_stretch_resamples_columns_and_keeps_the_colormap():
    from stetho import preset
    from train_host.augment import stretch_time
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[..., 0] = np.arange(8)  # column j painted j
    assert np.array_equal(stretch_time(image, 1.0), image)
    # twice as slow: every column shown twice, the first half of the window fills it
    assert stretch_time(image, 2.0)[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # twice as fast: every other column, then the window's start again (circular, as the roll)
    assert stretch_time(image, 0.5)[0, :, 0].tolist() == [0, 2, 4, 6, 0, 2, 4, 6]
    # rows (frequencies) never move
    assert np.array_equal(stretch_time(image, 1.3)[:, :, 0], np.tile(stretch_time(image, 1.3)[:1, :, 0], (4, 1)))
    # through SpecAugment: factors within ±20 % in log, colours stay the colormap's, seeded
    spec = preset("heart", size=32).spectrogram
    palette = Palette(spec.colormap)
    # a beat every 8 columns, 2 columns wide (a decimated one-column event can fall between the picked columns)
    periodic = palette.colours(np.tile((np.arange(32) % 8 < 2).astype(np.uint8) * 255, (32, 1)))
    aug = SpecAugment(AugmentConfig(shift=0.0, stretch=0.2, time_masks=0, freq_masks=0, gain_db=0.0), spec)
    periods = set()
    for seed in range(30):
        levels = palette.levels(aug(periodic, np.random.default_rng(seed)))  # raises on a colour off the colormap
        onsets = np.flatnonzero(np.diff(np.r_[0, levels[0] > 0].astype(int)) == 1)
        periods.add(int(onsets[1] - onsets[0]))  # the beat's period in columns: 8 / factor
    assert periods <= set(range(6, 11)) and len(periods) >= 3  # 8 / 1.2 ≈ 6.7 … 8 × 1.2 = 9.6, rounded by columns
    assert np.array_equal(aug(periodic, np.random.default_rng(4)), aug(periodic, np.random.default_rng(4)))
    assert AugmentConfig().stretch == 0.0
    with pytest.raises(ValueError, match="stretch"):
        AugmentConfig(stretch=1.5)


def test_noise_augmentation_adds_a_floor_in_power_and_keeps_the_signal():
    from train_host.augment import add_noise
    top_db = 80.0
    levels = np.zeros((16, 16), dtype=np.uint8)
    levels[8, :] = 255  # a loud tone on one row, silence (−80 dB) elsewhere
    flat = np.ones((16, 16))
    noisy = add_noise(levels, 40.0, 0.0, flat, top_db, keep_peak=True)
    assert np.all(noisy[8] == 255)  # 40 dB of noise under a 0 dB tone: the tone is unchanged
    assert np.all(noisy[levels == 0] == 128)  # silence becomes the floor: 40 of 80 dB → level 127.5, rounded to even
    # a floor at the level of the signal raises it by 3 dB (powers add), not by 40 dB
    half = np.full((16, 16), 128, dtype=np.uint8)
    raised = add_noise(half, 40.0 + 0.156, 0.0, flat, top_db, keep_peak=False)
    assert np.all(np.abs(raised.astype(int) - (128 + round(3.01 * 255 / 80))) <= 1)
    # slope: more noise at the top rows than at the bottom ones for a positive slope
    sloped = add_noise(levels, 30.0, 6.0, flat, top_db, keep_peak=True)
    assert sloped[0, 0] > sloped[-1, 0]
    # through SpecAugment: seeded, half of the images, inactive by default
    from stetho import preset
    spec = preset("heart", size=16).spectrogram
    palette = Palette(spec.colormap)
    aug = SpecAugment(AugmentConfig(shift=0.0, time_masks=0, freq_masks=0, gain_db=0.0, noise_db=40.0), spec)
    image = palette.colours(levels)
    outputs = [aug(image, np.random.default_rng(seed)) for seed in range(40)]
    changed = sum(not np.array_equal(out, image) for out in outputs)
    assert 10 <= changed <= 30
    assert np.array_equal(aug(image, np.random.default_rng(3)), outputs[3])
    assert AugmentConfig().noise_db == 0.0
    with pytest.raises(ValueError, match="noise_db"):
        AugmentConfig(noise_db=-1.0)


def test_site_balanced_weights_hide_the_site_from_the_class():
    from train_host.data import site_balanced_weights
    # site a: 30 abnormal, 10 normal; site b: 5 abnormal, 55 normal; 4 items with no site, all one class
    labels = [0] * 30 + [1] * 10 + [0] * 5 + [1] * 55 + [1] * 4
    sites = ["a"] * 40 + ["b"] * 60 + [None] * 4
    w = site_balanced_weights(labels, sites)
    labels, sites = np.array(labels), np.array(sites, dtype=object)
    assert abs(w.sum() - len(labels)) < 1e-9
    for site, size in (("a", 40), ("b", 60)):
        inside = sites == site
        assert abs(w[inside].sum() - size) < 1e-9  # each site keeps its share
        mass = [w[inside & (labels == c)].sum() for c in (0, 1)]
        assert abs(mass[0] - mass[1]) < 1e-9  # inside it, the classes are even
    assert np.allclose(w[104 - 4:], 1.0)  # the site-less group holds one class: left as it is
    # per recording: inside a site and class, a 1-window recording is drawn as often as a 9-window one
    labels, sites = [0] * 10 + [1] * 10, ["a"] * 20
    recordings = ["long"] * 9 + ["short"] + ["n%d" % i for i in range(10)]
    w = site_balanced_weights(labels, sites, recordings)
    assert abs(w.sum() - 20) < 1e-9 and abs(w[:10].sum() - w[10:].sum()) < 1e-9
    assert abs(w[:9].sum() - w[9]) < 1e-9 and np.allclose(w[10:], 1.0)
    assert np.allclose(site_balanced_weights(labels, sites, ["r%d" % i for i in range(20)]),
                       site_balanced_weights(labels, sites))  # one window each: the site sampler's weights
    # with no sites at all it is class balancing
    from train_host.data import class_weights
    plain = site_balanced_weights([0, 0, 0, 1], [None] * 4)
    assert np.allclose(plain, class_weights([0, 0, 0, 1], 2)[[0, 0, 0, 1]])


def test_balance_flag_picks_the_sampling_weights():
    from types import SimpleNamespace
    from train_host.data import site_balanced_weights
    images = SimpleNamespace(labels=[0, 0, 0, 1], sites=["a", "a", "b", "b"], recordings=["x", "x", "y", "z"])
    assert train.sampling_weights("none", images, 2) is None
    assert train.sampling_weights("weights", images, 2) is None  # that one weighs the loss instead
    assert np.allclose(train.sampling_weights("sampler", images, 2), [2 / 3, 2 / 3, 2 / 3, 2])
    assert np.allclose(train.sampling_weights("site-sampler", images, 2), site_balanced_weights([0, 0, 0, 1],
                                                                                                 images.sites))
    # site b: y (class 0) and z (class 1) share it evenly; site a: x's two windows carry one recording's mass
    assert np.allclose(train.sampling_weights("site-recording-sampler", images, 2), [1, 1, 1, 1])
    images.labels, images.sites, images.recordings = [0, 0, 0, 0], ["a"] * 4, ["x", "x", "x", "y"]
    assert np.allclose(train.sampling_weights("site-recording-sampler", images, 1), [2 / 3, 2 / 3, 2 / 3, 2])
    assert set(train.BALANCE_CHOICES) == {"none", "weights", "sampler", "site-sampler", "site-recording-sampler"}


def test_sampler_is_seeded_per_epoch_and_balances():
    sampler = EpochSampler(10, seed=4)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    labels = [0] * 90 + [1] * 10
    per_class = class_weights(labels, 2)
    np.testing.assert_allclose(per_class, [100 / 180, 100 / 20])
    balanced = EpochSampler(100, seed=0, weights=[per_class[c] for c in labels])
    drawn = np.array([labels[i] for i, _ in balanced])
    assert 0.35 < drawn.mean() < 0.65


def test_a_fraction_of_the_set_per_epoch_is_another_part_each_epoch():
    sampler = EpochSampler(9, seed=4, fraction=1 / 3.0)
    assert len(sampler) == 3
    seen = set()
    for epoch in range(12):
        sampler.set_epoch(epoch)
        drawn = [i for i, _ in sampler]
        assert len(drawn) == len(set(drawn)) == 3  # without weights: distinct images, a part of a permutation
        seen.update(drawn)
    assert seen == set(range(9))  # over the epochs every image is seen
    weighted = EpochSampler(100, seed=0, weights=[1.0] * 100, fraction=0.25)
    assert len(weighted) == 25 and len(list(weighted)) == 25
    assert len(EpochSampler(3, seed=0, fraction=0.01)) == 1  # never an empty epoch
    assert list(EpochSampler(5, seed=0, fraction=1.0)) == list(EpochSampler(5, seed=0))  # 1: the plain sampler
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="epoch fraction"):
            EpochSampler(5, seed=0, fraction=bad)


# ---- a synthetic dataset -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """3 synthetic classes (NOT clinical), 3/1/1 recordings each, 2 windows per recording, 32×32."""
    return synthetic_heart(tmp_path_factory.mktemp("syn") / "data", size=32)


def test_dataset_reads_prepare_json_and_refuses_bad_input(synthetic, tmp_path):
    dataset = load_prepared(synthetic)
    assert dataset.classes == ["extra", "murmur", "normal"] and dataset.size == 32
    images = SpectrogramImages(dataset, "train")
    assert len(images) == 18 and len(set(images.recordings)) == 9
    tensor, label = images[0]
    png = read_png(images.paths[0])
    np.testing.assert_allclose(tensor.numpy()[None], imagenet_tensor(png, 32), atol=1e-6)
    assert dataset.classes[label] == dataset.split("train")[0]["label"]
    with pytest.raises(ValueError, match="prepare.json"):
        load_prepared(tmp_path)
    # a wrong-sized image is named
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(synthetic, copy)
    from stetho.png import write_png
    write_png(str(copy / images.entries[0]["path"]), np.zeros((16, 16, 3), dtype=np.uint8))
    broken = SpectrogramImages(load_prepared(copy), "train")
    with pytest.raises(ValueError, match=images.entries[0]["path"].split("/")[-1] + ".*16x16"):
        broken[0]
    # labels.txt that disagrees with prepare.json
    (copy / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="labels.txt"):
        load_prepared(copy)


def run(argv):
    return train.main([str(a) for a in argv])


def test_resolution_mismatch_and_existing_runs_are_refused(synthetic, tmp_path, capsys):
    assert run([synthetic, "--model-dir", tmp_path / "m", "--resolution", 64] + TINY) == 2
    assert "differs from the dataset's image size 32" in capsys.readouterr().err
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "checkpoint.pth.tar").write_bytes(b"x")
    assert run([synthetic, "--model-dir", tmp_path / "m", "--epochs", 1] + TINY) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "m" / "checkpoint.pth.tar").read_bytes() == b"x"  # nothing was lost


def test_training_is_deterministic_under_a_seed(synthetic, tmp_path):
    states = []
    for name in ("a", "b"):
        assert run([synthetic, "--model-dir", tmp_path / name, "--epochs", 1, "--seed", 7, "--no-export"] + TINY) == 0
        states.append(torch.load(tmp_path / name / "checkpoint.pth.tar", weights_only=True)["state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    logs = [(tmp_path / n / "train_log.csv").read_text().splitlines()[1].split(",")[:6] for n in ("a", "b")]
    assert logs[0] == logs[1]


def test_the_loop_learns_and_the_export_keeps_it(synthetic, tmp_path):
    """After a short training the exported ONNX, fed as imageNet feeds it, gets every training image right."""
    import onnxruntime
    from train_host.export import export
    model_dir = tmp_path / "m"
    assert run([synthetic, "--model-dir", model_dir, "--epochs", 12, "--patience", 0, "--no-augment",
                "--no-export"] + TINY) == 0
    with open(model_dir / "train_log.csv") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert losses[-1] < 0.2 * losses[0]
    export(str(model_dir), "checkpoint.pth.tar", log=lambda *a: None)
    session = onnxruntime.InferenceSession(str(model_dir / "resnet18.onnx"), providers=["CPUExecutionProvider"])
    dataset = load_prepared(synthetic)
    wrong = []
    for entry in dataset.split("train"):
        probs = session.run(None, {"input_0": imagenet_tensor(read_png(os.path.join(synthetic, entry["path"])), 32)})[0]
        if dataset.classes[int(probs.argmax())] != entry["label"]:
            wrong.append(entry["path"])
    assert not wrong, "misclassified training images: %s" % wrong


# ---- Yaseen, 5 classes × 8 clips, through prepare.py and the CLI -------------------------------------------

@pytest.fixture(scope="module")
def yaseen_run(yaseen, tmp_path_factory):
    """prepare.py (csv manifest: 8 clips per class, 4/2/2 by recording) → train.py 2 epochs at R=64.

    Clips 1, 26, 51 ... 176: neighbouring Yaseen clips are overlapping cuts of one recording, and prepare.py
    refuses a manifest split that puts them on both sides; these share no audio.
    """
    root = tmp_path_factory.mktemp("yaseen")
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for folder in sorted(p for p in os.listdir(yaseen) if os.path.isdir(yaseen / p)):
            names = sorted(n for n in os.listdir(yaseen / folder) if n.endswith(".wav"))[::25][:8]
            for name, split in zip(names, ["train"] * 4 + ["val"] * 2 + ["test"] * 2):
                writer.writerow([str(yaseen / folder / name), folder.replace("_New", ""), split])
    env = dict(os.environ, OMP_NUM_THREADS="2")
    prepared = subprocess.run([sys.executable, "train_host/prepare.py", str(root / "manifest.csv"), str(root / "data"),
                               "--adapter", "csv", "--preset", "heart", "--size", "64", "--split", "official",
                               "--workers", "2"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
    assert prepared.returncode == 0, prepared.stdout
    model_dir = root / "model"
    trained = subprocess.run([sys.executable, "train_host/train.py", str(root / "data"), "--model-dir", str(model_dir),
                              "--epochs", "2"] + TINY, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True)
    assert trained.returncode == 0, trained.stdout
    return root / "data", model_dir, trained.stdout


@pytest.mark.slow
@pytest.mark.realdata
def test_yaseen_tiny_run_exports_a_reloadable_model(yaseen_run):
    import onnxruntime
    from stetho import ModelCard
    from stetho.labels import read_labels
    data, model_dir, stdout = yaseen_run
    for name in ("resnet18.onnx", "labels.txt", "model.json", "checkpoint.pth.tar", "model_best.pth.tar",
                 "train_log.csv", "metrics.json", "report.md", "predictions.csv", "confusion_matrix.png", "roc.png",
                 "training_curves.png"):
        assert (model_dir / name).is_file(), name
    assert "test window" in stdout and "imagenet.py --model=" in stdout
    assert "WARNING" not in stdout  # --no-pretrained: no attempt to fetch ImageNet weights
    # checkpoints carry jetson-inference's keys
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        checkpoint = torch.load(model_dir / name, map_location="cpu", weights_only=True)
        for key in ("epoch", "arch", "resolution", "classes", "num_classes", "state_dict", "accuracy"):
            assert key in checkpoint, (name, key)
        assert checkpoint["arch"] == "resnet18" and checkpoint["resolution"] == 64
        assert checkpoint["classes"] == ["AS", "MR", "MS", "MVP", "N"] and checkpoint["num_classes"] == 5
    assert torch.load(model_dir / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    # reload: the card, the labels, the ONNX (sha256 checked), and the same probabilities as predictions.csv
    card = ModelCard.load(str(model_dir))
    assert card.resolution == 64 and card.contract == load_prepared(data).contract
    assert card.pretrained["used"] is False and card.training["epochs_run"] == 2
    card.verify_onnx(str(model_dir))
    assert read_labels(model_dir / "labels.txt") == card.classes
    session = onnxruntime.InferenceSession(str(model_dir / "resnet18.onnx"), providers=["CPUExecutionProvider"])
    with open(model_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(load_prepared(data).split("test"))
    for row in rows[:3]:
        probs = session.run(["output_0"], {"input_0": imagenet_tensor(read_png(os.path.join(data, row["path"])), 64)})[0]
        np.testing.assert_allclose(probs[0], [float(row["p_" + c]) for c in card.classes], atol=1e-6)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["window"]["n"] == len(rows) and metrics["recording"]["n"] == 10
    assert card.metrics["test"]["window"]["accuracy"] == metrics["window"]["accuracy"]


@pytest.mark.slow
@pytest.mark.realdata
def test_resume_continues_the_epoch_count(yaseen_run):
    data, model_dir, _ = yaseen_run
    before = torch.load(model_dir / "checkpoint.pth.tar", weights_only=True)
    assert run([data, "--model-dir", model_dir, "--epochs", 3, "--resume", "--no-export"] + TINY) == 0
    after = torch.load(model_dir / "checkpoint.pth.tar", weights_only=True)
    assert before["epoch"] == 1 and after["epoch"] == 2
    assert any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    with open(model_dir / "train_log.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0, 1, 2]
    # already at --epochs: nothing more to train
    assert run([data, "--model-dir", model_dir, "--epochs", 3, "--resume", "--no-export"] + TINY) == 0
    assert torch.load(model_dir / "checkpoint.pth.tar", weights_only=True)["epoch"] == 2


def test_other_knobs_run_and_are_recorded(synthetic, tmp_path):
    """CBAM + focal loss + balanced sampler + SGD + ICBHI selection + time stretch, started from a local weights
    file."""
    weights = tmp_path / "start.pth"
    torch.save(torchvision_resnet18_state(), str(weights))
    model_dir = tmp_path / "m"
    assert run([synthetic, "--model-dir", model_dir, "--epochs", 1, "--cbam", "--loss", "focal", "--balance",
                "sampler", "--optimizer", "sgd", "--select", "icbhi", "--select-level", "recording",
                "--aug-stretch", 0.25, "--weights", weights, "--no-export"] + TINY[1:]) == 0
    checkpoint = torch.load(model_dir / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["cbam"] and any(".cbam." in k for k in checkpoint["state_dict"])
    assert checkpoint["pretrained"]["requested"] == "file" and checkpoint["pretrained"]["loaded"] == 120
    assert checkpoint["pretrained"]["skipped"] == ["fc.bias", "fc.weight"]  # 1000 ImageNet classes ≠ 3
    training = checkpoint["training"]
    assert (training["loss"], training["balance"], training["optimizer"], training["select"]) == (
        "focal", "sampler", "sgd", "icbhi")
    assert checkpoint["select"]["level"] == "recording"
    assert training["augment"]["stretch"] == 0.25


def test_select_last_keeps_the_final_epoch_and_select_auc_ranks_by_val_auc(synthetic, tmp_path, capsys):
    """--select last: every epoch replaces model_best, whatever val says, and patience never stops the run;
    --select auc: the number epochs are compared by is val's ROC AUC at the chosen level."""
    last = tmp_path / "last"
    assert run([synthetic, "--model-dir", last, "--epochs", 3, "--select", "last", "--patience", 1,
                "--lr", 0.05] + TINY) == 0
    out = capsys.readouterr().out
    with open(last / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["best"], row["val_select"]) for row in rows] == [("0", "1", ""), ("1", "1", ""),
                                                                               ("2", "1", "")]
    best = torch.load(last / "model_best.pth.tar", weights_only=True)
    assert best["epoch"] == 2 and best["training"]["select"] == "last" and not best["training"]["stopped_early"]
    assert "kept the last epoch, 2 (--select last)" in out
    assert json.loads((last / "model.json").read_text())["training"]["select"] == "last"

    auc = tmp_path / "auc"
    assert run([synthetic, "--model-dir", auc, "--epochs", 2, "--select", "auc", "--no-export"] + TINY) == 0
    checkpoint = torch.load(auc / "checkpoint.pth.tar", weights_only=True)
    with open(auc / "train_log.csv") as handle:
        logged = float(list(csv.DictReader(handle))[-1]["val_select"])
    assert checkpoint["select"]["value"] == pytest.approx(checkpoint["val"]["window"]["roc_auc"])
    assert logged == pytest.approx(checkpoint["val"]["window"]["roc_auc"], abs=1e-6)


def torchvision_resnet18_state():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_imagenet_weights_offline_means_from_scratch(tmp_path, monkeypatch):
    from train_host.models import imagenet_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state, info = imagenet_weights("resnet18", download=False)
    assert state is None and info["used"] is False and "not cached" in info["reason"]


# ---- mixed precision ---------------------------------------------------------------------------------------

def test_mixed_precision_follows_the_flag_the_device_and_the_cpu(monkeypatch):
    assert train.mixed_precision("off", use_cuda=True) is None
    assert train.mixed_precision("auto", use_cuda=True) is torch.float16
    assert train.mixed_precision("on", use_cuda=False) is torch.bfloat16
    monkeypatch.setattr(train, "cpu_runs_bfloat16", lambda: False)
    assert train.mixed_precision("auto", use_cuda=False) is None  # emulated bfloat16 would be slower
    monkeypatch.setattr(train, "cpu_runs_bfloat16", lambda: True)
    assert train.mixed_precision("auto", use_cuda=False) is torch.bfloat16
    assert train.mixed_precision("off", use_cuda=False) is None
    assert train.parse_args(["d", "--model-dir", "m", "--no-amp"]).amp == "off"


def assert_exported_onnx_answers_as(model_dir, checkpoint, synthetic):
    """export.py on model_dir's checkpoint.pth.tar gives an ONNX whose answer on a val image equals that of the
    float32 network holding ``checkpoint``'s state_dict."""
    import onnxruntime
    from train_host.export import export
    from train_host.models import build_model
    export(str(model_dir), "checkpoint.pth.tar", log=lambda *a: None)
    model = build_model("resnet18", len(checkpoint["classes"]), cbam=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    session = onnxruntime.InferenceSession(str(model_dir / "resnet18.onnx"), providers=["CPUExecutionProvider"])
    entry = load_prepared(synthetic).split("val")[0]
    tensor = imagenet_tensor(read_png(os.path.join(synthetic, entry["path"])), 32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(tensor)), dim=1).numpy()
    np.testing.assert_allclose(session.run(None, {"input_0": tensor})[0], expected, atol=1e-5)


@pytest.mark.parametrize("device, precision", [
    ("cpu", "bfloat16"),
    pytest.param("cuda", "float16", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
])
def test_mixed_precision_training_learns_and_exports_float32(synthetic, tmp_path, device, precision):
    """--amp on trains under autocast: bfloat16 on a CPU (emulated where the CPU lacks it), float16 with a gradient
    scaler on CUDA; the checkpoint says which, the weights stay float32, and the exported ONNX answers as the
    float32 network does. The device is named: on a GPU machine "auto" would pick CUDA, and float16."""
    from train_host.export import load_checkpoint
    model_dir = tmp_path / "m"
    assert run([synthetic, "--model-dir", model_dir, "--epochs", 8, "--patience", 0, "--no-augment", "--amp", "on",
                "--device", device, "--no-export"] + TINY) == 0
    with open(model_dir / "train_log.csv") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert losses[-1] < 0.5 * losses[0]
    checkpoint = load_checkpoint(str(model_dir / "checkpoint.pth.tar"))
    assert checkpoint["training"]["amp"] == precision
    assert all(v.dtype in (torch.float32, torch.int64) for v in checkpoint["state_dict"].values())
    assert_exported_onnx_answers_as(model_dir, checkpoint, synthetic)


def run_killed_after_epochs(epochs, argv, monkeypatch):
    """Run train.py and interrupt it (KeyboardInterrupt, as Ctrl-C or a kill would) once ``epochs`` epochs are
    logged and checkpointed: what --resume has to continue from."""
    write_log, logs = train.write_log, []

    def killed(path, rows):
        write_log(path, rows)
        logs.append(path)
        if len(logs) == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_log", killed)
    with pytest.raises(KeyboardInterrupt):
        run(argv)
    monkeypatch.setattr(train, "write_log", write_log)


def test_weight_average_decays_per_step_and_warms_up():
    assert train.ema_decay(2.0, 50) == pytest.approx(math.exp(-1.0 / 100))
    kept, current = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        kept.weight.fill_(0.0), kept.bias.fill_(0.0), current.weight.fill_(1.0), current.bias.fill_(-2.0)
    # step 0: the decay is capped at 1/10, so the average takes 90 % of the new weights
    assert train.update_average(kept, current, 0.99, step=0) == pytest.approx(0.1)
    assert torch.allclose(kept.weight, torch.full((1, 2), 0.9)) and torch.allclose(kept.bias, torch.tensor([-1.8]))
    # late: the decay asked for; the average moves 1 % of the way
    assert train.update_average(kept, current, 0.99, step=10 ** 6) == pytest.approx(0.99)
    assert torch.allclose(kept.weight, torch.full((1, 2), 0.9 + 0.01 * 0.1))
    assert current.weight.eq(1.0).all()  # the trained weights are only read


def test_weight_average_is_validated_and_exported_and_resumes_exactly(synthetic, tmp_path, capsys, monkeypatch):
    """--ema-epochs: training itself is unchanged (the trained weights equal a plain run's), the average is what
    is validated, kept and exported, and a run killed half way and resumed ends where an uninterrupted one does."""
    from train_host.export import load_checkpoint
    assert run([synthetic, "--model-dir", tmp_path / "bad", "--ema-epochs", -1] + TINY) == 2
    assert "--ema-epochs -1: must be >= 0" in capsys.readouterr().err
    plain, whole, halves = tmp_path / "plain", tmp_path / "whole", tmp_path / "halves"
    common = ["--patience", 0, "--no-export", "--seed", 3] + TINY
    assert run([synthetic, "--model-dir", plain, "--epochs", 4] + common) == 0
    assert run([synthetic, "--model-dir", whole, "--epochs", 4, "--ema-epochs", 1] + common) == 0
    run_killed_after_epochs(2, [synthetic, "--model-dir", halves, "--epochs", 4, "--ema-epochs", 1] + common,
                            monkeypatch)
    assert torch.load(halves / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    assert run([synthetic, "--model-dir", halves, "--epochs", 4, "--ema-epochs", 1, "--resume"] + common) == 0
    trained = load_checkpoint(str(plain / "checkpoint.pth.tar"))["state_dict"]
    averaged = load_checkpoint(str(whole / "checkpoint.pth.tar"))
    resumed = load_checkpoint(str(halves / "checkpoint.pth.tar"))
    assert averaged["training"]["ema_epochs"] == 1 and 0 < averaged["training"]["ema_decay"] < 1
    weights = [k for k in trained if "running" not in k and "num_batches" not in k]
    for key in weights:
        assert torch.equal(averaged["train_state_dict"][key], trained[key]), key
    assert any(not torch.allclose(averaged["state_dict"][k], trained[k]) for k in weights)
    for name in ("state_dict", "train_state_dict"):
        for key, value in averaged[name].items():
            assert torch.allclose(resumed[name][key].float(), value.float(), atol=1e-6), (name, key)
    assert_exported_onnx_answers_as(whole, averaged, synthetic)  # the averaged network


def test_epoch_fraction_trains_on_part_of_the_set_each_epoch_and_model_json_says_so(synthetic, tmp_path, capsys):
    assert run([synthetic, "--model-dir", tmp_path / "bad", "--epoch-fraction", 0] + TINY) == 2
    assert "--epoch-fraction 0: must be in (0, 1]" in capsys.readouterr().err
    assert run([synthetic, "--model-dir", tmp_path / "half", "--epochs", 1, "--epoch-fraction", 0.5,
                "--patience", 0] + TINY) == 0
    out = capsys.readouterr().out
    assert "9 of 18 images an epoch" in out
    card = json.loads((tmp_path / "half" / "model.json").read_text())
    assert card["training"]["epoch_fraction"] == 0.5


def test_mixup_blends_images_and_pairs_their_labels():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    target = torch.tensor([0, 1, 2, 3])
    mixed, partner, lam = train.mix_batch(images, target, 0.4, np.random.default_rng(7))
    again = train.mix_batch(images, target, 0.4, np.random.default_rng(7))
    assert 0.0 < lam < 1.0 and again[2] == lam and torch.equal(again[0], mixed)  # the rng decides everything
    assert sorted(partner.tolist()) == [0, 1, 2, 3] and not torch.equal(partner, target)
    perm = partner  # labels 0..3 are their own indices here, so the partner labels are the permutation
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
    # Beta(α, α) with α < 1 is U-shaped: most blends keep one image dominant
    lams = np.array([train.mix_batch(images, target, 0.4, np.random.default_rng(seed))[2] for seed in range(400)])
    assert abs(lams.mean() - 0.5) < 0.05 and np.mean((lams < 0.2) | (lams > 0.8)) > 0.45


def test_mixup_runs_every_step_and_resumes_exactly(synthetic, tmp_path, capsys, monkeypatch):
    """--mixup: every training batch is blended (a fresh λ each step), model.json's training says so, and a run
    killed half way and resumed ends where an uninterrupted one does (the blends are drawn per epoch)."""
    from train_host.export import load_checkpoint
    assert run([synthetic, "--model-dir", tmp_path / "bad", "--mixup", -1] + TINY) == 2
    assert "--mixup -1: must be >= 0" in capsys.readouterr().err
    mix_batch, lams = train.mix_batch, []

    def counted(images, target, alpha, rng):
        assert alpha == 0.4
        result = mix_batch(images, target, alpha, rng)
        lams.append(result[2])
        return result

    monkeypatch.setattr(train, "mix_batch", counted)
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    common = ["--patience", 0, "--no-export", "--seed", 3, "--mixup", 0.4] + TINY
    assert run([synthetic, "--model-dir", whole, "--epochs", 4] + common) == 0
    with open(whole / "train_log.csv") as handle:
        epochs = list(csv.DictReader(handle))
    steps = len(SpectrogramImages(load_prepared(str(synthetic)), "train")) // 8
    assert len(epochs) == 4 and len(lams) == 4 * steps and len(set(lams)) == len(lams)
    run_killed_after_epochs(2, [synthetic, "--model-dir", halves, "--epochs", 4] + common, monkeypatch)
    assert run([synthetic, "--model-dir", halves, "--epochs", 4, "--resume"] + common) == 0
    assert lams[-2 * steps:] == lams[2 * steps:4 * steps]  # the resumed epochs drew the same blends
    kept, resumed = (load_checkpoint(str(d / "checkpoint.pth.tar")) for d in (whole, halves))
    assert kept["training"]["mixup"] == 0.4
    for key, value in kept["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key].float(), value.float(), atol=1e-6), key

"""A new stethoscope: the contract's equaliser, the drift check, and train_host/adapt.py end to end.

The "new device" here is synthetic heart sound through a low-pass filter plus a noise floor (a bell, a duller
microphone): not clinical, but a real change of every window's spectral profile, which is what the drift check
measures and the equaliser undoes.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stetho import ConfigError, preset, render_segment, synth, write_wav
from stetho.conditioning import design_lowpass, fir_filter
from stetho.drift import DriftReference, ProfileMean, row_profile
from train_host.input_stats import block_from_profiles

from test_service_support import REPO, read_jsonl, run_service
from trainkit import synthetic_heart

RATE = 2000


def test_zero_band_gains_leave_every_image_as_it_was_and_the_contract_as_it_was_stored():
    contract = preset("heart", size=64)
    x = synth.heart_sound("murmur", duration_s=3.0, rate=RATE, seed=3)
    flat = contract.replace(spectrogram=contract.spectrogram.replace(band_gain_db=[0.0] * contract.spectrogram.n_rows))
    assert np.array_equal(render_segment(x, flat), render_segment(x, contract))
    assert "band_gain_db" not in contract.to_dict()["spectrogram"]  # stored contracts keep their hashes
    tilted = contract.replace(spectrogram=contract.spectrogram.replace(
        band_gain_db=list(np.linspace(-12.0, 12.0, contract.spectrogram.n_rows))))
    assert not np.array_equal(render_segment(x, tilted), render_segment(x, contract))
    for bad in ([0.0] * 5, [float("nan")] * contract.spectrogram.n_rows, [41.0] * contract.spectrogram.n_rows):
        with pytest.raises(ConfigError):
            contract.spectrogram.replace(band_gain_db=bad)
    assert preset("lung", size=32).spectrogram.n_rows == 128  # mel bands


def test_a_band_gain_raises_its_rows_in_the_image():
    contract = preset("heart", size=64)
    x = 0.3 * np.random.default_rng(0).standard_normal(3 * RATE)
    gains = np.zeros(contract.spectrogram.n_rows)
    freqs = contract.spectrogram.row_frequencies()
    gains[freqs < 300] = -15.0  # the low band 15 dB down: white noise's low rows darken, the top stays
    plain = row_profile(render_segment_levels(x, contract), 80.0)
    equalised = contract.replace(spectrogram=contract.spectrogram.replace(band_gain_db=list(gains)))
    lowered = row_profile(render_segment_levels(x, equalised), 80.0)
    assert (plain - lowered)[-20:].mean() > 10.0 and abs((plain - lowered)[:20].mean()) < 2.0


def render_segment_levels(x, contract):
    from stetho.contract import render_segment_levels as levels
    return levels(x, contract)


def test_the_drift_reference_scores_profiles_and_refuses_a_bad_block():
    rng = np.random.default_rng(1)
    training = rng.normal(20.0, 2.0, size=(200, 16))
    block = block_from_profiles(training, 16, 80.0)
    reference = DriftReference(block, 16)
    held = rng.normal(20.0, 2.0, size=(400, 16))
    flagged = np.mean([reference.score(p) >= reference.threshold for p in held])
    assert 0.0 < flagged < 0.15  # about 5 % of recordings like the training data's
    assert reference.score(training.mean(axis=0) + 6.0) > 2 * reference.threshold  # a device 6 dB brighter
    assert reference.judge(None, 0)["flag"] is None and reference.judge(held[0], 2)["flag"] is None
    with pytest.raises(ConfigError):
        DriftReference(dict(block, scale=[0.0] * 16), 16)
    with pytest.raises(ConfigError):
        DriftReference(dict(block, mean=[1.0] * 15), 16)
    # two clinics of 180 and 20 recordings, 8 dB apart: the minority's own recordings are not drift
    clinics = np.concatenate([rng.normal(20.0, 1.0, size=(180, 16)), rng.normal(28.0, 1.0, size=(20, 16))])
    reference = DriftReference(block_from_profiles(clinics, 16, 80.0), 16)
    minority = rng.normal(28.0, 1.0, size=(100, 16))
    assert np.mean([reference.score(p) >= reference.threshold for p in minority]) < 0.2
    assert reference.score(np.full(16, 36.0)) >= reference.threshold  # a third kind of device is
    running = ProfileMean(window=3)
    for value in (1.0, 2.0, 3.0, 4.0):
        running.add(np.full(16, value))
    assert running.count == 3 and np.allclose(running.mean(), 3.0)


def test_the_device_level_check_sees_a_device_that_single_exams_barely_show():
    """A device 1.5 dB brighter in every row: one exam in four is flagged, every run of 20 exams is; runs of
    exams like the training data's are not."""
    rng = np.random.default_rng(1)
    block = block_from_profiles(rng.normal(20.0, 2.0, size=(200, 16)), 16, 80.0)
    reference = DriftReference(block, 16)
    assert block["device"]["exams"] == 20 and 0 < block["device"]["threshold"] < block["threshold"]
    like = [reference.score(p) for p in rng.normal(20.0, 2.0, size=(400, 16))]
    brighter = [reference.score(p) for p in rng.normal(21.5, 2.0, size=(400, 16))]
    assert 0.1 < np.mean(np.array(brighter) >= reference.threshold) < 0.4
    runs_like = [reference.judge_device(like[i:i + 20])["flag"] for i in range(0, 400, 20)]
    runs_brighter = [reference.judge_device(brighter[i:i + 20])["flag"] for i in range(0, 400, 20)]
    assert sum(runs_like) <= 1 and all(runs_brighter)
    # the last 20 judged exams count; exams without a score (too few windows) are skipped; fewer: no flag yet
    assert reference.judge_device(like[:19] + [None])["flag"] is None
    assert reference.judge_device(like[:5] + brighter[:20])["exams"] == 20
    assert reference.judge_device(like[:5] + brighter[:20])["flag"] is True
    assert DriftReference(dict(block, device=None), 16).judge_device(brighter) is None  # older cards: no check
    with pytest.raises(ConfigError):
        DriftReference(dict(block, device={"exams": 1, "threshold": 1.0}), 16)
    with pytest.raises(ConfigError):
        DriftReference(dict(block, device={"exams": 20}), 16)


# ---- adapt.py end to end ---------------------------------------------------------------------------------------

def new_device(x, seed):
    """A bell-like, duller device: a 250 Hz low-pass and a noise floor."""
    y = fir_filter(x, design_lowpass(250.0, RATE, 60.0)) + 0.004 * np.random.default_rng(seed).standard_normal(x.size)
    return 0.8 * y / np.abs(y).max()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    synthetic_heart(str(root / "data"), size=32, per_split=(8, 3, 3))
    run = subprocess.run([sys.executable, str(REPO / "train_host" / "train.py"), str(root / "data"), "--model-dir",
                          str(root / "model"), "--no-pretrained", "--epochs", "1", "-b", "8", "--no-progress",
                          "--threads", "2"], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=600)
    assert run.returncode == 0, run.stdout
    device = root / "device"
    device.mkdir()
    labels = []
    for i in range(12):
        kind = synth.HEART_KINDS[i % 3]
        path = device / ("rec%02d.wav" % i)
        write_wav(str(path), new_device(synth.heart_sound(kind, duration_s=10.0, rate=RATE, seed=200 + i), i), RATE)
        labels.append((str(path), kind))
    with open(str(root / "labels.csv"), "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label")] + labels)
    return root


def adapt(*args):
    return subprocess.run([sys.executable, str(REPO / "train_host" / "adapt.py")] + [str(a) for a in args],
                          cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)


def test_training_stores_input_statistics_and_the_service_flags_the_new_device(trained, tmp_path):
    card = json.loads((trained / "model" / "model.json").read_text())
    assert card["input_stats"]["kind"] == "row-profile-rms-z" and card["input_stats"]["rows"] == 32
    run = run_service("--model-dir", trained / "model", "--source", "file:%s" % (trained / "device"), "--fast",
                      "--quiet", "--output", tmp_path / "o", "--exam-min-s", "4")
    assert run.returncode == 0, run.stderr
    exams = read_jsonl(tmp_path / "o" / "exams.jsonl")
    assert len(exams) == 12 and sum(e["drift"]["flag"] for e in exams) >= 10
    device = exams[-1]["device_drift"]  # the device-level check waits for 20 judged exams
    assert device["exams"] == 12 and device["needed"] == 20 and device["flag"] is None
    assert device["mean_score"] == pytest.approx(np.mean([e["drift"]["score"] for e in exams]), abs=1e-3)
    clean = tmp_path / "clean"  # the training data's own kind of recording: rarely flagged
    clean.mkdir()
    for i in range(12):
        write_wav(str(clean / ("c%02d.wav" % i)), synth.heart_sound(synth.HEART_KINDS[i % 3], bpm=60 + 3 * i,
                                                                    duration_s=10.0, rate=RATE, seed=500 + i), RATE)
    same = run_service("--model-dir", trained / "model", "--source", "file:%s" % clean, "--fast", "--quiet",
                       "--output", tmp_path / "same", "--exam-min-s", "4")
    assert same.returncode == 0, same.stderr
    assert sum(e["drift"]["flag"] for e in read_jsonl(tmp_path / "same" / "exams.jsonl")) <= 3


def test_adapt_equalises_re_estimates_batchnorm_and_writes_a_verified_model(trained, tmp_path):
    out = tmp_path / "adapted"
    run = adapt(trained / "model", trained / "device", "--out", out, "--labelled", trained / "labels.csv")
    assert run.returncode == 0, run.stderr + run.stdout
    card = json.loads((out / "model.json").read_text())
    adaptation = card["adaptation"]
    assert adaptation["n_files"] == 12 and adaptation["seconds"] >= 100 and adaptation["batchnorm"]["windows"] > 0
    assert len(adaptation["list_sha256"]) == 64 and adaptation["from"]["model"] == "model"
    equaliser = adaptation["equaliser"]
    assert equaliser["drift_score_before"] >= card["input_stats"]["threshold"] > equaliser["drift_score_after"]
    assert len(card["contract"]["spectrogram"]["band_gain_db"]) == preset("heart", size=32).spectrogram.n_rows
    assert card["decision"]["chosen_on"]["split"] == "all" and adaptation["labelled"]["manifest"] == "labels.csv"
    trained_stats = json.loads((trained / "model" / "model.json").read_text())["input_stats"]
    assert card["input_stats"]["adapted_centres"] >= 1 and (len(card["input_stats"]["centres"]) ==
                                                           len(trained_stats["centres"]) +
                                                           card["input_stats"]["adapted_centres"])
    served = run_service("--model-dir", out, "--source", "file:%s" % (trained / "device"), "--fast", "--quiet",
                         "--output", tmp_path / "o", "--exam-min-s", "4")
    assert served.returncode == 0, served.stderr
    exams = read_jsonl(tmp_path / "o" / "exams.jsonl")
    assert sum(e["drift"]["flag"] for e in exams) <= 2  # the equalised device sounds like the training data


def test_adapt_refuses_too_little_audio_and_its_own_folder(trained, tmp_path):
    run = adapt(trained / "model", trained / "device" / "rec00.wav", "--out", tmp_path / "a")
    assert run.returncode == 2 and "of usable audio" in run.stderr and not (tmp_path / "a").exists()
    run = adapt(trained / "model", trained / "device", "--out", trained / "model")
    assert run.returncode == 2 and "new folder" in run.stderr
    run = adapt(trained / "model", tmp_path / "nothing-here", "--out", tmp_path / "b")
    assert run.returncode == 2 and "no such file or folder" in run.stderr


def test_the_service_keeps_accepted_exams_as_audio_that_adapt_reads(trained, tmp_path):
    device = tmp_path / "stream.wav"
    parts = [new_device(synth.heart_sound("murmur", duration_s=12.0, rate=RATE, seed=s), s) for s in (1, 2)]
    write_wav(str(device), np.concatenate([parts[0], np.zeros(6 * RATE), parts[1]]), RATE)
    pcm = (np.clip(np.concatenate([parts[0], np.zeros(6 * RATE, np.float32), parts[1]]), -1, 1) * 32767
           ).astype("<i2").tobytes()
    kept = tmp_path / "kept"
    from test_service_support import service_cmd
    run = subprocess.run(service_cmd("--model-dir", trained / "model", "--source", "stdin", "--quiet", "--output",
                                     tmp_path / "o", "--keep-audio", kept), input=pcm, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert run.returncode == 0, run.stderr
    exams = read_jsonl(tmp_path / "o" / "exams.jsonl")
    names = sorted(os.listdir(str(kept)))
    assert len(exams) == 2 and [e["audio"] for e in exams] == names and len(names) == 2
    from stetho import load_audio
    audio, rate = load_audio(str(kept / names[0]))
    assert rate == RATE and 11.0 <= audio.size / float(RATE) <= 13.5
    adapted = adapt(trained / "model", kept, "--out", tmp_path / "adapted", "--min-seconds", "20")
    assert adapted.returncode == 0, adapted.stderr

"""The device path run on the Nano's software: Python 3.6, numpy 1.19 and onnxruntime 1.10 (JetPack 4.6's).

vermin checks the syntax; these tests execute the code.  `make venv` builds ``.venv-device`` from a Python
3.6 interpreter when the machine has one (pyenv's, /usr/bin/python3.6); ``STETHO_DEVICE_PYTHON`` names
another.  Without one they skip, saying why.

- the contract on both stacks: for the same 2 kHz audio, the spectrogram levels, RGB image, network tensor,
  overlay, PNG pixels and quality verdict are identical (tests/device_probe.py, run by both interpreters);
- the service itself under Python 3.6 replays a recording with onnxruntime 1.10: byte-identical images and
  probabilities within 1e-5 of the workstation's service on the same model.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stetho import synth, write_wav
from test_service_support import REPO, make_model, read_jsonl

DEVICE_VENV = REPO / ".venv-device"


def _device_python():
    candidate = os.environ.get("STETHO_DEVICE_PYTHON") or str(DEVICE_VENV / "bin" / "python")
    if not os.path.exists(candidate):
        pytest.skip("no device Python (%s missing: `make venv` builds it where Python 3.6 is installed)" % candidate)
    done = subprocess.run([candidate, "-c", "import sys, numpy, onnxruntime; print(sys.version_info[:2], "
                                            "numpy.__version__, onnxruntime.__version__)"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert done.returncode == 0, "%s cannot import numpy and onnxruntime: %s" % (candidate, done.stdout)
    return candidate, done.stdout.strip()


@pytest.fixture(scope="module")
def device_python():
    python, versions = _device_python()
    assert versions.startswith("(3, 6) 1.19."), "the device venv should be Python 3.6 + numpy 1.19, is %s" % versions
    return python


def _run(python, args, cwd=REPO):
    done = subprocess.run([python] + [str(a) for a in args], cwd=str(cwd), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert done.returncode == 0, "%s %s failed:\n%s" % (python, args, done.stderr)
    return done.stdout


def _recordings(folder):
    """2 kHz WAVs: a murmur, a normal heart, a silent stretch, a clipped one, rubbing noise, and real
    PhysioNet recordings (native 2 kHz) when ../shared/data is there."""
    rng = np.random.RandomState(7)
    heart = synth.heart_sound("normal", bpm=70, duration_s=7.5, rate=2000, seed=2)
    sounds = {
        "murmur": synth.heart_sound("murmur", bpm=80, duration_s=7.5, rate=2000, seed=1),
        "normal": heart,
        "silent": np.concatenate([heart[:4000], np.zeros(8000)]),
        "clipped": np.clip(heart * 30, -1, 1),
        "rubbing": 0.3 * rng.standard_normal(9000),
    }
    paths = []
    for name, audio in sorted(sounds.items()):
        path = folder / ("%s.wav" % name)
        write_wav(str(path), audio, 2000)
        paths.append(str(path))
    physionet = REPO.parent / "shared" / "data" / "physionet2016"
    for site in "abcdf":
        first = physionet / ("training-%s" % site) / ("%s0001.wav" % site)
        if first.exists():
            paths.append(str(first))
    return paths


def test_device_stack_computes_the_same_bytes_as_the_workstation(device_python, tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"wavs": _recordings(tmp_path), "sizes": [64, 128, 224],
                               "classes": ["abnormal", "murmur", "normal"]}))
    workstation = json.loads(_run(sys.executable, ["tests/device_probe.py", job]))
    device = json.loads(_run(device_python, ["tests/device_probe.py", job]))
    assert device["python"].startswith("3.6.") and device["numpy"].startswith("1.19.")
    assert sorted(device["results"]) == sorted(workstation["results"])
    windows = 0
    for key, expected in sorted(workstation["results"].items()):
        got = device["results"][key]
        assert len(got) == len(expected) > 0, key
        for ours, theirs in zip(got, expected):
            assert ours == theirs, "%s, window at sample %d: the Nano's stack differs" % (key, theirs["offset"])
            assert ours["tensor_from_levels"] == ours["tensor"]  # the service's lookup, numpy 1.19's way included
        windows += len(expected)
    verdicts = set(w["quality"] for windows_of in workstation["results"].values() for w in windows_of)
    assert {"ok", "silent", "clipping", "rubbing"} <= verdicts  # the gate's branches were all exercised
    assert windows >= 3 * 5 * 4


def test_service_runs_under_python36_with_the_workstations_images_and_probabilities(device_python, tmp_path):
    decision = {"version": 1, "rule": "threshold", "normal_class": "normal", "threshold": 0.5,
                "objective": "max balanced accuracy", "chosen_on": {"split": "val", "recordings": 10}}
    model = make_model(tmp_path / "model", size=64, decision=decision)
    wav = tmp_path / "replay.wav"
    write_wav(str(wav), synth.heart_sound("murmur", bpm=75, duration_s=20, rate=2000, seed=5), 2000)
    outputs = {}
    for name, python in (("workstation", sys.executable), ("device", device_python)):
        out = tmp_path / name
        stdout = _run(python, ["deploy_jetson/service.py", "--model-dir", model, "--source", "file:%s" % wav, "--fast",
                               "--backend", "onnxruntime", "--no-quality", "--smooth", "1", "--output", out,
                               "--save-images", out / "images"])
        assert "imagenet:" in stdout
        outputs[name] = out
    ours, theirs = (read_jsonl(outputs[n] / "results.jsonl") for n in ("device", "workstation"))
    assert len(ours) == len(theirs) == 12  # 3 s windows every 1.5 s over 20 s
    for a, b in zip(ours, theirs):
        assert (a["start_s"], a["decision"]) == (b["start_s"], b["decision"])
        np.testing.assert_allclose([a["probabilities"][k] for k in sorted(a["probabilities"])],
                                   [b["probabilities"][k] for k in sorted(b["probabilities"])], atol=1e-5)
    # the exam: one verdict for the file, the same on both stacks (the stored rule on the same mean)
    ours, theirs = (read_jsonl(outputs[n] / "exams.jsonl") for n in ("device", "workstation"))
    assert len(ours) == len(theirs) == 1 and ours[0]["verdict"] == theirs[0]["verdict"]
    np.testing.assert_allclose([ours[0]["mean_probabilities"][k] for k in sorted(ours[0]["mean_probabilities"])],
                               [theirs[0]["mean_probabilities"][k] for k in sorted(ours[0]["mean_probabilities"])],
                               atol=1e-5)
    assert os.listdir(str(outputs["device"] / "exams")) and ours[0]["rule"] == "threshold"
    names = sorted(os.listdir(str(outputs["device"] / "images")))
    assert len(names) == 12 and names == sorted(os.listdir(str(outputs["workstation"] / "images")))
    for name in names:
        assert (outputs["device"] / "images" / name).read_bytes() == (outputs["workstation"] / "images" / name).read_bytes()

"""deploy_jetson/classify.py, the imagenet.py-style one-shot tool: audio and PNG input, lines, overlay, JSON."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from stetho import synth, write_wav
from stetho.png import read_png

from test_service_support import REPO, make_model, read_jsonl, run_service

LINE = re.compile(r"^imagenet:  \d\d\.\d\d% class #(\d) \((extra|murmur|normal)\)$")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "tiny")


def classify(*args):
    return subprocess.run([sys.executable, str(REPO / "deploy_jetson" / "classify.py")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


def test_a_recording_gets_window_lines_a_mean_answer_and_an_overlay(model, tmp_path):
    wav = tmp_path / "rec.wav"
    write_wav(str(wav), synth.heart_sound("extra", duration_s=7.0, rate=8000, seed=4), 8000)
    run = classify("--model=%s" % (model / "resnet18.onnx"), "--labels=%s" % (model / "labels.txt"), "--topK=3",
                   "--min-s", "0", "--json", tmp_path / "out.json", wav, tmp_path / "overlay.png")
    assert run.returncode == 0, run.stderr
    windows = [l for l in run.stdout.splitlines() if l.startswith("window ")]
    answer = [l for l in run.stdout.splitlines() if l.startswith("imagenet:")]
    assert len(windows) == 3 and windows[1].startswith("window 0001    1.50-   4.50 s  imagenet:  ")  # 7 s: 0, 1.5, 3
    assert len(answer) == 3 and all(LINE.match(l) for l in answer)
    assert sorted(LINE.match(l).group(1) for l in answer) == ["0", "1", "2"]  # top-3 of 3 classes
    result = json.loads((tmp_path / "out.json").read_text())
    mean = np.mean([w["probabilities"] for w in result["windows"]], axis=0)
    np.testing.assert_allclose(result["probabilities"], mean)
    assert "%05.2f%%" % (100 * mean.max()) in answer[0]
    overlay = read_png(str(tmp_path / "overlay.png"))
    assert overlay.shape[0] == 384 and overlay.shape[1] > 2 * 32 * 9  # two 32×32 windows side by side, enlarged ×9

    # and the service, on the same recording, saw the same windows and the same probabilities
    service = run_service("--model-dir", model, "--source", "file:%s" % wav, "--fast", "--quiet", "--smooth", "1",
                          "--output", tmp_path / "svc")
    assert service.returncode == 0, service.stderr
    served = read_jsonl(tmp_path / "svc" / "results.jsonl")
    assert [r["start_s"] for r in served] == [w["start_s"] for w in result["windows"]]
    for r, w in zip(served, result["windows"]):
        np.testing.assert_allclose([r["probabilities"][c] for c in result["classes"]], w["probabilities"], atol=1e-6)


def test_a_spectrogram_png_works_without_a_model_card_like_imagenet_py(model, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("resnet18.onnx", "labels.txt"):
        os.symlink(str(model / name), str(bare / name))
    images = tmp_path / "images"
    run_service("--model-dir", model, "--source", "file:%s" % _short_wav(tmp_path), "--fast", "--quiet",
                "--output", tmp_path / "svc", "--save-images", images, "--smooth", "1")
    png = images / "short__0000.png"
    run = classify("--model=%s" % (bare / "resnet18.onnx"), "--labels=%s" % (bare / "labels.txt"),
                   "--input_blob=input_0", "--output_blob=output_0", png, tmp_path / "o.png")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert LINE.match(lines[0]) and lines[1].startswith("classify: verdict %s" % LINE.match(lines[0]).group(2))
    served = read_jsonl(tmp_path / "svc" / "results.jsonl")[0]
    label = LINE.match(lines[0]).group(2)
    assert "%05.2f%%" % (100 * served["probabilities"][label]) in lines[0]  # same image, same answer
    assert read_png(str(tmp_path / "o.png")).shape[0] == 384  # no model card: no axes; the image, text and bars


def test_bad_input_gets_a_clear_error_naming_the_file(model, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    os.symlink(str(model / "resnet18.onnx"), str(bare / "resnet18.onnx"))
    os.symlink(str(model / "labels.txt"), str(bare / "labels.txt"))
    run = classify("--model=%s" % (bare / "resnet18.onnx"), _short_wav(tmp_path))
    assert run.returncode == 2 and "model.json: missing" in run.stderr          # audio needs the contract
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    run = classify("--model=%s" % (model / "resnet18.onnx"), junk)
    assert run.returncode == 2 and str(junk) in run.stderr
    run = classify("--model=%s" % (model / "resnet18.onnx"), "--output_blob=prob", _short_wav(tmp_path))
    assert run.returncode == 2 and "no output named 'prob'" in run.stderr


def _short_wav(tmp_path):
    path = tmp_path / "short.wav"
    if not path.exists():
        write_wav(str(path), synth.heart_sound("normal", duration_s=3.2, rate=2000, seed=9), 2000)
    return path


def _wav(tmp_path, name, samples, rate=2000):
    path = tmp_path / name
    write_wav(str(path), np.clip(samples, -1.0, 1.0), rate)
    return path


@pytest.mark.parametrize("name,make,answer", [
    ("silence", lambda: np.zeros(10 * 2000), "no signal (silent 5 window(s))"),
    ("noise", lambda: 0.3 * np.random.default_rng(0).standard_normal(10 * 2000), "poor contact (rubbing 5 window(s))"),
    ("clipped", lambda: 5 * synth.heart_sound("murmur", duration_s=10.0, rate=2000, seed=1),
     "poor contact (clipping 5 window(s))"),
])
def test_what_the_service_would_not_classify_gets_no_class(model, tmp_path, name, make, answer):
    """Silence, broadband rubbing and clipping are reported, never classified (the service's quality gate)."""
    wav = _wav(tmp_path, name + ".wav", make())
    run = classify("--model=%s" % (model / "resnet18.onnx"), "--json", tmp_path / "a.json", wav)
    assert run.returncode == 3, run.stderr
    assert "imagenet:" not in run.stdout and "classify: no verdict: %s" % answer in run.stdout
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["probabilities"] is None and all(w["probabilities"] is None for w in result["windows"])


def test_a_one_sample_file_and_a_short_recording_get_no_verdict(model, tmp_path):
    one = _wav(tmp_path, "one.wav", np.full(1, 0.2))
    run = classify("--model=%s" % (model / "resnet18.onnx"), one)
    assert run.returncode == 3 and "no verdict" in run.stdout and "too short" in run.stdout, run.stdout + run.stderr
    assert "imagenet:" not in run.stdout
    short = _wav(tmp_path, "short5.wav", synth.heart_sound("normal", duration_s=5.0, rate=2000, seed=2))
    run = classify("--model=%s" % (model / "resnet18.onnx"), short)
    assert run.returncode == 3 and "too short (4.5 s of accepted audio, 8 s needed" in run.stdout


def test_the_output_never_overwrites_the_recording(model, tmp_path):
    wav = _wav(tmp_path, "keep.wav", synth.heart_sound("normal", duration_s=10.0, rate=2000, seed=3))
    before = wav.read_bytes()
    for output in (wav, tmp_path / "keep.WAV.png.wav", tmp_path / "notes.png"):
        if output.name == "notes.png":
            output.write_text("my notes, not a picture")
        run = classify("--model=%s" % (model / "resnet18.onnx"), wav, output)
        assert run.returncode == 2 and str(output) in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert wav.read_bytes() == before and (tmp_path / "notes.png").read_text() == "my notes, not a picture"

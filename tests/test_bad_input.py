"""Bad input to the device and workstation CLIs: each gets one clear line and exit status 2, never a traceback.

Every case runs the real script in a subprocess (deploy_jetson/service.py, deploy_jetson/render.py,
train_host/prepare.py), as a user or systemd would start it (issue 28, items 13 and 14).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stetho import synth, write_wav
from test_service_support import make_model, service_cmd

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BINARY = b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe[service]\nmodel-dir = x\n\x89PNG\r\n\x1a\n\xc3\x28"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "tiny")


def run(cmd, stdin=subprocess.DEVNULL, **kwargs):
    return subprocess.run([str(c) for c in cmd], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, cwd=str(REPO), **kwargs)


def assert_one_line_error(result, *needles):
    """Exit status 2 and exactly one line on stderr, holding every needle; no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---- service.py: flags, settings files, model.json, stdin ------------------------------------------------------

SERVICE_CASES = [
    (["--smooth", "0"], ["--smooth 0", "1..1000"]),
    (["--block", "nan"], ["--block nan", "0.01..5.0"]),
    (["--block", "1e9"], ["--block 1000000000.0"]),
    (["--http", "127.0.0.1:99999"], ["--http '127.0.0.1:99999'", "port 0-65535"]),
    (["--http", "localhost"], ["--http 'localhost'", "HOST:PORT"]),
    (["--threshold", "2"], ["--threshold 2.0", "0.0..1.0"]),
    (["--threshold", "nan"], ["--threshold nan"]),
    (["--max-windows", "-1"], ["--max-windows -1", "at least 0"]),
    (["--threads", "0"], ["--threads 0"]),
    (["--retry-initial", "10", "--retry-max", "1"], ["--retry-initial 10", "longer than --retry-max 1"]),
    (["--quality-silence-dbfs", "10"], ["--quality-silence-dbfs 10.0", "-200..0 dBFS"]),
    (["--quality-clip-fraction", "-0.1"], ["--quality-clip-fraction -0.1", "above 0"]),
    (["--quality-handling-share", "-1"], ["--quality-handling-share -1.0"]),
    (["--quality-flatness", "nan"], ["--quality-flatness nan"]),
]


@pytest.mark.parametrize("flags, needles", SERVICE_CASES, ids=[" ".join(c[0]) for c in SERVICE_CASES])
def test_service_refuses_a_bad_flag_in_one_line(model, tmp_path, flags, needles):
    result = run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path / "out", *flags))
    assert_one_line_error(result, "service.py: error:", *needles)
    assert not (tmp_path / "out").exists()  # refused before any folder was made


def test_service_refuses_the_same_values_from_the_environment_and_settings_files(model, tmp_path):
    env = dict(os.environ, STETHO_SMOOTH="0")
    assert_one_line_error(run(service_cmd("--model-dir", model, "--source", "stdin"), env=env), "--smooth 0")
    ini = tmp_path / "stetho.ini"
    ini.write_text("[service]\nblock = 1e9\n")
    assert_one_line_error(run(service_cmd("--model-dir", model, "--source", "stdin", "--config", ini)), "--block")


@pytest.mark.parametrize("flag", ["--config", "--env-file"])
def test_service_refuses_a_binary_settings_file(model, tmp_path, flag):
    binary = tmp_path / "settings.bin"
    binary.write_bytes(BINARY)
    result = run(service_cmd("--model-dir", model, "--source", "stdin", flag, binary))
    assert_one_line_error(result, str(binary), "not a text file")


def test_service_refuses_a_folder_as_latest(model, tmp_path):
    folder = tmp_path / "latest"
    folder.mkdir()
    result = run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path / "o", "--latest", folder))
    assert_one_line_error(result, "--latest %s: is a folder" % folder, "latest.png")


def test_service_refuses_stdin_when_standard_input_is_closed(model, tmp_path):
    result = run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path / "o"), stdin=None,
                 preexec_fn=lambda: os.close(0))
    assert_one_line_error(result, "--source stdin: standard input is closed")


@pytest.mark.parametrize("field, value, needle", [
    ("hop_s", 0.0001, "segmentation.hop_s 0.0001 is outside 0.01..60 s"),
    ("window_s", 1e7, "segmentation.window_s 10000000.0 is outside 0.1..60 s"),
    ("window_s", "3", "segmentation.window_s '3' is outside"),
    ("min_duration_s", -1.0, "segmentation.min_duration_s -1.0 is outside"),
])
def test_service_refuses_a_model_json_with_unusable_segmentation(model, tmp_path, field, value, needle):
    bad = tmp_path / "bad"
    shutil.copytree(str(model), str(bad))
    card = json.loads((bad / "model.json").read_text())
    card["contract"]["segmentation"][field] = value
    (bad / "model.json").write_text(json.dumps(card))
    result = run(service_cmd("--model-dir", bad, "--source", "stdin", "--output", tmp_path / "o"))
    assert_one_line_error(result, "model.json", needle)


# ---- render.py ---------------------------------------------------------------------------------------------------

RENDER = REPO / "deploy_jetson" / "render.py"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A 9 s heart recording silent after 4.5 s, a 0.5 s one (the heart contract needs 1 s), and one at 500 Hz
    (below stetho.audio_io.MIN_RATE, which the service's file source refuses too)."""
    folder = tmp_path_factory.mktemp("recordings")
    x = synth.heart_sound("normal", duration_s=9.0, rate=2000, seed=4)
    x[9000:] = 0.0
    write_wav(str(folder / "fades.wav"), x, 2000)
    write_wav(str(folder / "short.wav"), synth.heart_sound("normal", duration_s=0.5, rate=2000), 2000)
    write_wav(str(folder / "slow.wav"), synth.heart_sound("normal", duration_s=5.0, rate=500), 500)
    return folder


def test_render_refuses_an_output_that_is_a_file(recordings, tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"an earlier image")
    result = run([PYTHON, RENDER, "--preset", "heart", "--size", 32, recordings / "fades.wav", target])
    assert_one_line_error(result, "OUTPUT %s is a file" % target)
    assert target.read_bytes() == b"an earlier image"


def test_render_writes_only_what_the_service_would_classify(recordings, tmp_path):
    """The service gives a recording shorter than min_duration_s no window, and classifies no window its
    quality gate rejects; render.py writes neither, and says which (--keep-rejected writes the windows)."""
    out = tmp_path / "out"
    result = run([PYTHON, RENDER, "--preset", "heart", "--size", 32, recordings / "fades.wav",
                  recordings / "short.wav", recordings / "slow.wav", out])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "slow.wav: sample rate 500 Hz is implausible" in result.stderr
    assert "short.wav: too short (0.50 s; the contract, and so the service, needs at least 1.00 s)" in result.stderr
    assert "fades.wav: 2 window(s) rejected by the quality gate and not written" in result.stderr
    assert "0003 silent" in result.stderr and "0004 silent" in result.stderr
    assert sorted(os.listdir(str(out))) == ["fades__%04d.png" % i for i in range(3)]
    kept = run([PYTHON, RENDER, "--preset", "heart", "--size", 32, "--keep-rejected", recordings / "fades.wav",
                tmp_path / "kept"])
    assert kept.returncode == 0 and "written: --keep-rejected" in kept.stderr
    assert sorted(os.listdir(str(tmp_path / "kept"))) == ["fades__%04d.png" % i for i in range(5)]
    nothing = run([PYTHON, RENDER, "--preset", "heart", recordings / "short.wav", tmp_path / "none"])
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr and "0 image(s)" in nothing.stdout


# ---- prepare.py --------------------------------------------------------------------------------------------------

PREPARE = REPO / "train_host" / "prepare.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for label in ("normal", "murmur"):
        (root / label).mkdir()
        for i in range(3):
            write_wav(str(root / label / ("%s%d.wav" % (label, i))),
                      synth.heart_sound(label, duration_s=4.0, rate=2000, seed=i), 2000)
    return root


def test_prepare_refuses_a_dest_that_is_a_file(corpus, tmp_path):
    dest = tmp_path / "dest.txt"
    dest.write_text("my notes")
    result = run([PYTHON, PREPARE, corpus, dest, "--preset", "heart", "--size", 24])
    assert_one_line_error(result, "DEST %s is a file" % dest)
    result = run([PYTHON, PREPARE, corpus, dest / "sub", "--preset", "heart", "--size", 24, "--workers", 1])
    assert_one_line_error(result, "cannot write into DEST %s" % (dest / "sub"))
    assert dest.read_text() == "my notes"


INTERRUPT_IN_SHARED_AUDIO = r'''
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from train_host import prepare
real = prepare.shared_audio_groups

def interrupted(*args, **kwargs):  # Ctrl-C while the shared-audio search runs
    os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)
prepare.shared_audio_groups = interrupted
sys.exit(prepare.main(sys.argv[2:]))
'''


def test_prepare_exits_cleanly_on_ctrl_c_during_the_shared_audio_step_and_resumes(corpus, tmp_path):
    dest = tmp_path / "dest"
    args = [corpus, dest, "--preset", "heart", "--size", 24, "--workers", 1]
    result = run([PYTHON, "-c", INTERRUPT_IN_SHARED_AUDIO, REPO] + args)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert "interrupted while looking for shared audio; nothing was moved" in result.stderr
    assert sorted(os.listdir(str(dest))) == [".work"] and len(list((dest / ".work").glob("*.png"))) == 6
    again = run([PYTHON, PREPARE] + args)
    assert again.returncode == 0, again.stderr
    assert "resuming: 6 recording(s) already done, 0 to render" in again.stdout

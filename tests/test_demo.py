"""`make demo` end to end, as a newcomer runs it: the synthetic corpus → prepare.py → a real training run →
the service replaying held-out recordings.  The model must clearly work on its synthetic task (issue 30: 1):
recording-level test accuracy ≥ 0.95 and confident, right exam verdicts on recordings it never saw.
SYNTHETIC data: these floors say the pipeline works, nothing clinical.

Every path is the test's own (RAW, HELDOUT, DATASET, MODEL, RUN on the make command line); the virtual
environment is taken as built (-o: a test never installs packages).  About 40 s on 2 free cores.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from stetho import synth, write_wav
from train_host import synthesize

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make not installed")
# A replayed recording's exam verdict counts as confident when the mean probability of its class over the
# exam's windows is at least this.  Chance is 1/3 and the service calls a window 'uncertain' below 0.5; the
# demo's model gives 1.00 on five corpus/training seeds, the old demo's gave 0.67 to its held-out murmur.
CONFIDENT = 0.8
ACCURACY_FLOOR = 0.95
# Variables the Makefile takes from the environment (?=): a caller's settings must not change the demo.
MAKE_VARIABLES = ("DATA", "PRESET", "SIZE", "EPOCHS", "NAME", "CLASSMAP", "TRAIN_FLAGS", "DEMO_TRAIN_FLAGS", "VENV",
                  "PYTHON", "MODEL_DIR", "RECIPE", "PREPARED", "FORCE")


def make_demo(repo, tmp_path, *variables):
    """``make demo`` from the repository root with this interpreter and every output under ``tmp_path`` (RAW only
    without DATA=: with it, DATA is the raw folder)."""
    paths = {"HELDOUT": tmp_path / "heldout.wav", "DATASET": tmp_path / "data", "MODEL": tmp_path / "model",
             "RUN": tmp_path / "run"}
    if not any(v.startswith("DATA=") for v in variables):
        paths["RAW"] = tmp_path / "raw"
    cmd = [MAKE, "-s", "-o", ".venv/.demo-installed", "demo", "VENV=.venv", "PY=" + sys.executable,
           "NAME=test-demo"] + ["%s=%s" % (k, v) for k, v in sorted(paths.items())] + list(variables)
    env = dict((k, v) for k, v in os.environ.items() if k not in MAKE_VARIABLES)
    started = time.time()
    done = subprocess.run(cmd, cwd=str(repo), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)
    return done, paths, time.time() - started


def exams(run_dir):
    with open(str(run_dir / "exams.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def replay(model_dir, source, out_dir):
    """deploy_jetson/service.py on ``source`` (a WAV or a folder), fast; returns (exam lines, window lines)."""
    done = subprocess.run([sys.executable, "deploy_jetson/service.py", "--model-dir", str(model_dir), "--source",
                           "file:%s" % source, "--fast", "--output", str(out_dir), "--quiet"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    with open(str(out_dir / "results.jsonl")) as handle:
        windows = [json.loads(line) for line in handle if line.strip()]
    return exams(out_dir), windows


@needs_make
@pytest.mark.slow
def test_make_demo_trains_a_model_that_clearly_works(repo, tmp_path):
    done, paths, seconds = make_demo(repo, tmp_path)
    out = done.stdout
    assert done.returncode == 0, out[-4000:]
    print("make demo: %.0f s (load average %s)" % (seconds, " ".join("%.2f" % v for v in os.getloadavg())))

    # the training summary, on the test split the training never saw (a real run: metrics.json from evaluate.py)
    with open(str(paths["MODEL"] / "metrics.json")) as handle:
        metrics = json.load(handle)
    recording = metrics["recording"]
    assert recording["n"] >= 20, "too few test recordings for a 0.95 floor to mean anything: %d" % recording["n"]
    assert recording["accuracy"] >= ACCURACY_FLOOR, (recording["accuracy"], recording["confusion_matrix"])
    assert metrics["window"]["accuracy"] >= ACCURACY_FLOOR, metrics["window"]["confusion_matrix"]
    assert "test recording n=%d" % recording["n"] in out

    # the model card says the data were synthetic (the status page's banner), and names no path of this machine
    with open(str(paths["MODEL"] / "model.json")) as handle:
        card_text = handle.read()
    card = json.loads(card_text)
    assert card["dataset"]["synthetic"] is True
    assert str(tmp_path) not in card_text
    for name in ("metrics.json", "report.md", "predictions.csv"):  # nor do the reports
        path = paths["MODEL"] / name
        assert path.is_file() and str(tmp_path) not in path.read_text(), name
    training = card["training"]   # DEMO_TRAIN_FLAGS, the built-in set's only
    assert ((training["batch_size"], training["augment"]["freq_masks"], training["augment"]["time_masks"],
             training["threads"]) == (16, 0, 0, 1))

    # the service replays the held-out murmur: every window and the one exam verdict right and confident
    lines = exams(paths["RUN"])
    assert len(lines) == 1, lines
    exam = lines[0]
    assert exam["verdict"] == "murmur" and exam["label"] == "murmur", exam
    assert exam["mean_probabilities"]["murmur"] >= CONFIDENT, exam["mean_probabilities"]
    assert exam["accepted_s"] >= exam["min_s"] == 8.0
    window_lines = [line for line in out.splitlines() if line.startswith("imagenet:")]
    assert len(window_lines) >= 6 and all("(murmur)" in line for line in window_lines), window_lines
    assert any(line.startswith("exam: 1 heldout murmur") for line in out.splitlines()), out[-2000:]
    assert "Synthetic demo data: the numbers mean nothing clinically." in out

    # held-out recordings of the two other classes, never in the corpus, through the same service: one exam each
    other = tmp_path / "other-held-out"
    other.mkdir()
    for kind in ("normal", "extra"):
        write_wav(str(other / ("%s.wav" % kind)), synthesize.held_out_recording(kind, seed=0, rate=4000), 4000)
    lines, windows = replay(paths["MODEL"], other, tmp_path / "run-other")
    assert sorted((e["stream"], e["verdict"]) for e in lines) == [("extra", "extra"), ("normal", "normal")], lines
    for exam in lines:
        assert exam["mean_probabilities"][exam["verdict"]] >= CONFIDENT, exam
    assert all(w["decision"] == w["stream"] for w in windows), [(w["stream"], w["decision"]) for w in windows]


@needs_make
@pytest.mark.slow
def test_make_demo_runs_a_real_folder_dataset(repo, tmp_path):
    """DATA=folder end to end on a small folder dataset (1 epoch at 32×32: that it runs, not how well): no
    synthetic corpus, no demo-only training flags, one of the folder's own test recordings replayed."""
    folder = tmp_path / "folder-set"
    assert synthesize.main([str(folder), "--per-class", "6"]) == 0
    done, paths, _ = make_demo(repo, tmp_path, "DATA=%s" % folder, "EPOCHS=1", "SIZE=32")
    assert done.returncode == 0, done.stdout[-4000:]
    replayed = [line for line in done.stdout.splitlines() if line.startswith("== the service replays ")]
    assert len(replayed) == 1 and str(folder) in replayed[0], replayed
    assert len(exams(paths["RUN"])) == 1
    assert not (tmp_path / "raw").exists() and not (tmp_path / "heldout.wav").exists()
    assert "synthesize:" not in done.stdout
    with open(str(paths["MODEL"] / "model.json")) as handle:
        training = json.load(handle)["training"]
    assert (training["batch_size"], training["augment"]["freq_masks"], training["augment"]["time_masks"]) == (32, 2, 2)
    assert "mean nothing clinically" not in done.stdout   # the notice is the built-in set's
    with open(str(paths["DATASET"] / "prepare.json")) as handle:
        assert json.load(handle)["synthetic"] is True   # the corpus's marker, whichever way it was prepared


def test_synthesize_marks_its_corpus_and_prepare_records_it(tmp_path):
    """The corpus carries stetho.synth.CORPUS_MARKER; a folder without it is not synthetic."""
    assert synthesize.main([str(tmp_path / "syn"), "--per-class", "2"]) == 0
    assert (tmp_path / "syn" / synth.CORPUS_MARKER).is_file()
    real = tmp_path / "plain"
    for kind in ("a", "b"):
        (real / kind).mkdir(parents=True)
        for i in range(3):
            write_wav(str(real / kind / ("%s%d.wav" % (kind, i))), synth.heart_sound("normal", seed=i), 2000)
    for source, expected in ((tmp_path / "syn", True), (real, False)):
        dest = tmp_path / ("prepared-" + source.name)
        done = subprocess.run([sys.executable, "train_host/prepare.py", str(source), str(dest), "--preset", "heart",
                               "--size", "32", "--workers", "1"],
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        assert done.returncode == 0, done.stdout[-2000:]
        with open(str(dest / "prepare.json")) as handle:
            assert json.load(handle)["synthetic"] is expected
        assert "not-in-class-folder" not in done.stdout   # the hidden marker is no input file


def test_synthesize_never_deletes_what_it_did_not_write(tmp_path, capsys):
    dest = tmp_path / "corpus"
    assert synthesize.main([str(dest), "--per-class", "3"]) == 0
    assert synthesize.main([str(dest), "--per-class", "1"]) == 0   # an earlier corpus is replaced, not mixed in
    assert sorted(p.name for p in dest.rglob("*.wav")) == ["syn_extra_000.wav", "syn_murmur_000.wav",
                                                           "syn_normal_000.wav"]
    mine = dest / "normal" / "notes.txt"
    mine.write_text("mine")
    capsys.readouterr()
    assert synthesize.main([str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(mine) in err[0] and "not part of a synthetic corpus" in err[0]
    assert mine.read_text() == "mine" and len(list(dest.rglob("*.wav"))) == 3


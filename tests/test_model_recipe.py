"""`make model RECIPE=... DATA=...` (train_host/model.py): a recipe's prepare.py → train.py on a whole dataset,
exported to a folder systemd/install.sh accepts; the recipes are the objects bench/accuracy.py's protocols read."""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from train_host import model as model_cmd
from train_host import recipes

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make not installed")
SYSTEM_COMMANDS = ("systemctl", "useradd", "userdel", "usermod", "groupadd", "chown", "getent", "journalctl")


def load_accuracy(repo):
    """bench/accuracy.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_accuracy", str(repo / "bench" / "accuracy.py"))
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    return accuracy


def make(repo, *variables, dry_run=False):
    """``make model VARIABLES`` from the repository root with this interpreter; the virtual environments are taken
    as built (-o: a test never installs packages)."""
    cmd = [MAKE, "-s", "-o", ".venv/.demo-installed", "model", "VENV=.venv",
           "DEVICE_VENV=.venv-device", "PY=" + sys.executable] + list(variables)
    if dry_run:
        cmd.insert(1, "-n")
    env = dict(os.environ)
    for name in ("EPOCHS", "SIZE", "RECIPE", "DATA", "MODEL_DIR", "PREPARED", "FORCE"):
        env.pop(name, None)
    return subprocess.run(cmd, cwd=str(repo), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)


def model_lines(text):
    return [line for line in text.splitlines() if line.startswith("model: ")]


# ---- one definition --------------------------------------------------------------------------------------------

def test_the_accuracy_protocols_read_the_recipes(repo):
    accuracy = load_accuracy(repo)
    assert accuracy.RECIPES is recipes.RECIPES and accuracy.recipes is recipes   # the same objects, not a copy
    assert set(recipes.PROTOCOL_OF) == set(recipes.RECIPES)
    for name, recipe in recipes.RECIPES.items():
        proto = recipes.PROTOCOL_OF[name]
        assert accuracy.RECIPE_OF[proto] == name
        protocol = dict(accuracy.PROTOCOLS[proto])
        protocol.pop("folds")
        assert protocol == recipes.settings(recipe), name
        assert protocol["dataset"] == recipe.dataset


def test_make_model_runs_the_protocols_command_lines_but_for_the_split(repo, tmp_path):
    """model.py's prepare.py and train.py commands are a protocol fold's, word for word, except the split (one
    held-back split instead of K folds), the worker/thread counts and --force."""
    accuracy = load_accuracy(repo)
    for name, recipe in recipes.RECIPES.items():
        proto = recipes.PROTOCOL_OF[name]
        args = accuracy.parse_args(["--protocol", proto, "--threads", "3", "--workers", "5"])
        cfg = accuracy.protocol_settings(proto, args)
        fold = dict(accuracy.fold_commands(proto, cfg, "RAW", "DATA", "MODEL", 0, args))
        margs = model_cmd.parse_args([name, "RAW", "--threads", "3", "--workers", "5"])
        ours = dict(model_cmd.commands(recipe, model_cmd.settings_of(recipe, margs), "RAW", "DATA", "MODEL", margs))
        split = fold["prepare"].index("--split") + 1
        assert ours["prepare"][:split] == fold["prepare"][:split], name
        assert ours["prepare"][split + 1:] == fold["prepare"][split + 1:], name
        assert ours["prepare"][split] == recipe.split
        assert ours["train"] == fold["train"], name
    assert recipes.RECIPES["physionet2016"].split == recipes.RECIPES["yaseen2018"].split == "0.7,0.15,0.15"
    assert recipes.RECIPES["icbhi2017"].split == "official"
    # --epochs/--size replace the recipe's, nothing else
    margs = model_cmd.parse_args(["physionet2016", "RAW", "--epochs", "1", "--size", "32", "--force"])
    recipe = recipes.RECIPES["physionet2016"]
    prepare, train = [c for _, c in model_cmd.commands(recipe, model_cmd.settings_of(recipe, margs), "RAW", "DATA",
                                                       "MODEL", margs)]
    assert prepare[prepare.index("--size") + 1] == "32" and prepare[-1] == "--force"
    assert train[train.index("--epochs") + 1] == "1" and "--threads" not in train
    assert train[-len(recipe.train_args):] == list(recipe.train_args)


# ---- bad arguments ---------------------------------------------------------------------------------------------

@needs_make
def test_make_model_refuses_an_unknown_recipe_or_a_missing_data_folder_in_one_line(repo, tmp_path):
    for variables, message in (
            (["RECIPE=physionet2017", "DATA=" + str(tmp_path)],
             "model: unknown recipe 'physionet2017' (known: yaseen2018, physionet2016, icbhi2017)"),
            (["DATA=" + str(tmp_path)], "model: RECIPE is required: one of yaseen2018, physionet2016, icbhi2017"),
            (["RECIPE=yaseen2018", "DATA=" + str(tmp_path / "nowhere")],
             "model: DATA folder %s does not exist" % (tmp_path / "nowhere")),
            (["RECIPE=yaseen2018"], "model: DATA= is required: the folder holding the yaseen2018 recordings "
                                    "(e.g. ../shared/data/yaseen2018)"),
            (["RECIPE=yaseen2018", "DATA=" + str(tmp_path), "EPOCHS=none"],
             "model: argument --epochs: 'none' is not a positive whole number")):
        done = make(repo, "MODEL_DIR=" + str(tmp_path / "m"), "PREPARED=" + str(tmp_path / "d"), *variables)
        assert done.returncode != 0
        assert model_lines(done.stderr) == [message] and "Traceback" not in done.stderr + done.stdout
        assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()


@needs_make
def test_only_the_epochs_and_size_given_replace_the_recipes(repo, tmp_path):
    """The Makefile's demo defaults (EPOCHS 8, SIZE 64) must not leak into a recipe: only values given on the
    command line are passed on."""
    plain = make(repo, "RECIPE=physionet2016", "DATA=/d", dry_run=True)
    assert plain.returncode == 0, plain.stderr
    assert "--epochs" not in plain.stdout and "--size" not in plain.stdout and "--force" not in plain.stdout
    assert '"physionet2016" "/d" --model-dir "models/physionet2016"' in plain.stdout
    quick = make(repo, "RECIPE=physionet2016", "DATA=/d", "EPOCHS=1", "SIZE=32", "FORCE=1", "MODEL_DIR=/m",
                 dry_run=True)
    assert '--model-dir "/m"' in quick.stdout and '--epochs "1"' in quick.stdout and '--size "32"' in quick.stdout
    assert "--force" in quick.stdout


def test_an_existing_model_is_kept_unless_forced(tmp_path, capsys):
    data = tmp_path / "raw"
    data.mkdir()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    assert model_cmd.main(["yaseen2018", str(data), "--model-dir", str(folder), "--prepared", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a model: FORCE=1 (--force) replaces it" in err
    (folder / "model.json").unlink()
    (folder / "notes.txt").write_text("mine")           # not a model folder: refused even with --force
    assert model_cmd.main(["yaseen2018", str(data), "--model-dir", str(folder), "--force"]) == 2
    assert "is not empty and holds no model" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "mine" and not (tmp_path / "d").exists()


# ---- real recordings -------------------------------------------------------------------------------------------

def yaseen_clips(yaseen, dest, step=40):
    """Every ``step``-th clip of each Yaseen class (distinct source recordings), as symlinks."""
    for cls in sorted(os.listdir(str(yaseen))):
        names = sorted(n for n in os.listdir(str(yaseen / cls)) if n.endswith(".wav"))[::step]
        (dest / cls).mkdir(parents=True)
        for name in names:
            os.symlink(str(yaseen / cls / name), str(dest / cls / name))
    return dest


def staged_install(repo, tmp_path, model_dir):
    """systemd/install.sh with DESTDIR on a copy of the code, the system commands stand-ins that fail if called
    (as tests/test_systemd.py does); (exit status, output, the staged root)."""
    checkout = tmp_path / "checkout"
    for name in ("stetho", "deploy_jetson", "systemd", "docs"):
        shutil.copytree(str(repo / name), str(checkout / name), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(str(repo / "README.md"), str(checkout / "README.md"))
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    for name in SYSTEM_COMMANDS:
        (fake_bin / name).write_text('#!/bin/sh\necho "%s $*" >> "%s"\nexit 1\n' % (name, tmp_path / "calls.log"))
        (fake_bin / name).chmod(0o755)
    env = dict(os.environ, DESTDIR=str(tmp_path / "root"), CHECK_PYTHON=sys.executable,
               PATH="%s:%s" % (fake_bin, os.environ.get("PATH", "/usr/bin:/bin")))
    done = subprocess.run(["bash", str(checkout / "systemd" / "install.sh"), "--model-dir", str(model_dir)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert not (tmp_path / "calls.log").exists()
    return done.returncode, done.stdout, tmp_path / "root"


@needs_make
def test_make_model_yaseen_tiny_gives_a_folder_install_sh_accepts(repo, tmp_path, yaseen):
    raw = yaseen_clips(yaseen, tmp_path / "raw")
    model_dir, prepared = tmp_path / "models" / "yaseen2018", tmp_path / "data" / "yaseen2018"
    done = make(repo, "RECIPE=yaseen2018", "DATA=" + str(raw), "EPOCHS=1", "SIZE=32", "MODEL_DIR=" + str(model_dir),
                "PREPARED=" + str(prepared))                         # ~20 s on an idle 2-core box
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    out = done.stdout
    for name in ("resnet18.onnx", "labels.txt", "model.json", "metrics.json", "report.md", "recipe.json"):
        assert (model_dir / name).is_file(), name
    card = json.loads((model_dir / "model.json").read_text())
    assert card["decision"]["chosen_on"]["split"] == "val" and card["decision"]["rule"] in ("threshold", "argmax")
    assert card["contract"]["spectrogram"]["size"] == 32 and card["training"]["epochs"] == 1
    assert card["contract"]["segmentation"]["window_s"] == 3.0 and card["contract"]["segmentation"]["hop_s"] == 1.5
    assert card["training"]["select"] == "last" and card["training"]["balance"] == "none"
    assert card["classes"] == ["AS", "MR", "MS", "MVP", "N"]
    # the held-back split: test recordings never trained on, reported in metrics.json
    prepared_json = json.loads((prepared / "prepare.json").read_text())
    split_of = dict((i["recording"], i["split"]) for i in prepared_json["images"])
    assert sorted(set(split_of.values())) == ["test", "train", "val"]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_recordings"] == sum(s == "test" for s in split_of.values())
    record = json.loads((model_dir / "recipe.json").read_text())
    assert record["recipe"] == "yaseen2018" and record["overrides"] == {"epochs": 1, "size": 32}
    assert record["seconds"]["total"] >= record["seconds"]["train"] > 0
    lines = out.splitlines()
    assert any(line.startswith("  took ") for line in lines)
    assert lines[-1] == "  install   sudo systemd/install.sh --model-dir %s" % model_dir
    assert "no patient ids" in out
    # install.sh takes the folder as it is
    code, log, root = staged_install(repo, tmp_path, model_dir)
    assert code == 0, log
    installed = root / "var/lib/stetho/models/yaseen2018"
    assert sorted(p.name for p in installed.iterdir()) == ["labels.txt", "metrics.json", "model.json",
                                                           "report.md", "resnet18.onnx"]   # no checkpoints
    assert hashlib.sha256((installed / "resnet18.onnx").read_bytes()).hexdigest() == card["onnx_sha256"]
    assert "STETHO_MODEL_DIR=/var/lib/stetho/models/yaseen2018" in (root / "etc/default/stetho").read_text()
    # a second run keeps the model it made
    again = make(repo, "RECIPE=yaseen2018", "DATA=" + str(raw), "MODEL_DIR=" + str(model_dir),
                 "PREPARED=" + str(prepared))
    assert again.returncode != 0 and len(model_lines(again.stderr)) == 1 and "FORCE=1" in again.stderr
    assert hashlib.sha256((model_dir / "resnet18.onnx").read_bytes()).hexdigest() == card["onnx_sha256"]


def test_the_icbhi_sample_recipe_runs_and_says_what_it_is(repo, tmp_path, shared_data, capfd):
    source = shared_data / "icbhi2017_sample"
    if not source.is_dir():
        pytest.skip("%s missing" % source)
    model_dir = tmp_path / "icbhi"
    code = model_cmd.main(["icbhi2017", str(source), "--epochs", "1", "--size", "32", "--model-dir", str(model_dir),
                           "--prepared", str(tmp_path / "data"), "--workers", "1", "--threads", "2"])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    assert "audio for 10 recordings only" in out and "no lung-sound classifier" in out
    assert "model: WARNING: no val recordings: the decision rule stays argmax" in out
    assert "910 input(s) skipped" in out           # the annotation files whose audio the sample leaves out
    card = json.loads((model_dir / "model.json").read_text())
    assert card["decision"]["rule"] == "argmax" and card["contract"]["name"] == "lung"
    assert (model_dir / "metrics.json").is_file() and (model_dir / "report.md").is_file()

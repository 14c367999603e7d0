"""bench/accuracy.py --quick on a handful of real Yaseen clips: the fold loop around prepare/train/evaluate,
the JSON it writes, and resuming (a second run skips the finished folds)."""
import json
import os
import subprocess
import sys

import torch

from train_host.train import cpu_runs_bfloat16


def run(repo, tmp_path, yaseen, *extra):
    cmd = [sys.executable, str(repo / "bench" / "accuracy.py"), "--quick", "--protocol", "yaseen-cv5",
           "--data", str(yaseen.parent), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "acc.json"),
           "--limit", "4", "--only", "0", "--threads", "2", "--workers", "1"] + list(extra)
    done = subprocess.run(cmd, cwd=str(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)   # ~30 s on an idle 2-core box
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def test_quick_yaseen_writes_per_fold_and_mean_figures(repo, tmp_path, yaseen):
    out = run(repo, tmp_path, yaseen)
    results = json.loads((tmp_path / "acc.json").read_text())
    entry = results["protocols"]["yaseen-cv5"]
    # --only 0: one fold of the two ran; the entry says so instead of posing as a full protocol
    assert not entry["complete"] and entry["folds_total"] == 2 and entry["settings"]["size"] == 32
    assert [f["fold"] for f in entry["folds"]] == ["fold-0"] and entry["summary"]["folds_done"] == 1
    for fold in entry["folds"]:
        assert "train_host/prepare.py" in fold["commands"][0] and "kfold:2:" in fold["commands"][0]
        assert "train_host/train.py" in fold["commands"][1] and "--no-pretrained" in fold["commands"][1]
        assert "train_host/evaluate.py" in fold["commands"][2]
        assert fold["recordings"] == 20 and fold["windows_per_recording"]["max"] == 1   # clips <= 4 s: one 3 s window
        rec = fold["test"]["recording"]
        assert rec["classes"] == ["AS", "MR", "MS", "MVP", "N"]
        assert sum(map(sum, rec["confusion_matrix"])) == fold["test"]["n_recordings"] > 0
        assert 0.0 <= rec["accuracy"] <= 1.0
        # clips 1-4 of each class: AS 1-4 and MR 1-4 are one recording each, MS, MVP and N pairs and single clips;
        # whole groups go to test (by class, round-robin), so the test half is 14 clips in fold 0, not 10
        assert fold["test"]["n_recordings"] == 14 and sum(fold["counts"]["test"].values()) == 14
        assert sum(fold["groups"].values()) == 9
        assert fold["test"]["window"]["accuracy"] == rec["accuracy"]            # one window per recording
        # train.py --amp auto: float16 autocast on CUDA, bfloat16 where the CPU runs it in hardware, float32
        # elsewhere; per fold, with the device it trained on
        on_cuda = torch.cuda.is_available()
        assert fold["training"]["device"] == ("cuda" if on_cuda else "cpu")
        assert fold["training"]["precision"] == ("float16" if on_cuda else
                                                 "bfloat16" if cpu_runs_bfloat16() else "float32")
        assert fold["training"]["best_epoch"] == 0 and fold["training"]["seconds"] > 0   # --quick: 1 epoch
    summary = entry["summary"]
    assert summary["recording_accuracy"]["mean"] == entry["folds"][0]["test"]["recording"]["accuracy"]
    assert summary["recording_pooled"]["total"] == 14
    assert "no patient ids" in summary["note"]
    assert entry["machine"]["cpus"] == os.cpu_count() and entry["machine"]["processor"]
    assert "no patient ids" in out and "yaseen-cv5: 1/2 folds" in out and "[PARTIAL]" in out
    # resumable: the second run skips the finished fold and reports the same figures
    again = run(repo, tmp_path, yaseen)
    assert again.count("done before, skipped") == 1 and "train ..." not in again
    assert json.loads((tmp_path / "acc.json").read_text())["protocols"]["yaseen-cv5"]["folds"] == entry["folds"]


def test_jobs_run_folds_side_by_side_and_the_summary_counts_both(repo, tmp_path, yaseen):
    out = run(repo, tmp_path, yaseen, "--folds", "3", "--only", "0,1,2", "--jobs", "2", "--threads", "1")
    # three folds on two job slots: the odd one first, alone on both slots' threads, then two side by side (fold
    # 2 starts while fold 1 is still preparing, not after fold 1 has been evaluated)
    assert out.index("fold-0: evaluate done") < out.index("fold-1: prepare ...")
    assert out.index("fold-2: prepare ...") < out.index("fold-1: train ...")
    entry = json.loads((tmp_path / "acc.json").read_text())["protocols"]["yaseen-cv5"]
    assert entry["complete"] and [f["fold"] for f in entry["folds"]] == ["fold-0", "fold-1", "fold-2"]
    assert entry["summary"]["recording_pooled"]["total"] == 20  # every clip tested once across the three folds
    assert ["--threads 2" in f["commands"][1] for f in entry["folds"]] == [True, False, False]
    assert all("--threads 1" in f["commands"][1] for f in entry["folds"][1:])


def load_accuracy(repo):
    """bench/accuracy.py as a module (bench/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_accuracy", str(repo / "bench" / "accuracy.py"))
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    return accuracy


def test_fold_rounds_give_the_odd_folds_the_idle_threads(repo):
    accuracy = load_accuracy(repo)
    assert accuracy.fold_rounds(range(5), 2, 1) == [([0], 2), ([1, 2, 3, 4], 1)]
    assert accuracy.fold_rounds(range(4), 2, 1) == [([0, 1, 2, 3], 1)]
    assert accuracy.fold_rounds(range(3), 2, 2) == [([0], 4), ([1, 2], 2)]
    assert accuracy.fold_rounds(range(5), 3, 1) == [([0, 1], 1), ([2, 3, 4], 1)]  # 3 threads do not split in 2
    assert accuracy.fold_rounds(range(5), 1, 2) == [([0, 1, 2, 3, 4], 2)]
    assert accuracy.fold_rounds([4], 2, 1) == [([4], 2)]


def test_a_resumed_run_plans_its_rounds_over_the_folds_left(repo, tmp_path, monkeypatch):
    """Folds 0 and 1 finished by an earlier run: of the three left, the odd one gets both threads (it used to
    train on one, beside an idle core, because the rounds were planned over all five)."""
    accuracy = load_accuracy(repo)
    args = accuracy.parse_args(["--protocol", "physionet-cv5", "--jobs", "2", "--threads", "1",
                                "--work", str(tmp_path)])
    signature = {"epochs": 10}
    for fold in (0, 1):
        (tmp_path / "physionet-cv5" / ("fold-%d" % fold)).mkdir(parents=True)
        (tmp_path / "physionet-cv5" / ("fold-%d" % fold) / "result.json").write_text(json.dumps({"settings": signature}))
    (tmp_path / "physionet-cv5" / "fold-4").mkdir(parents=True)        # other settings: to be redone
    (tmp_path / "physionet-cv5" / "fold-4" / "result.json").write_text(json.dumps({"settings": {"epochs": 2}}))
    calls = []
    monkeypatch.setattr(accuracy, "run_fold", lambda proto, cfg, source, fold, args, signature, threads:
                        calls.append((fold, threads)))
    assert accuracy.run_folds("physionet-cv5", {}, "RAW", list(range(5)), args, signature) == []
    assert calls[:3] == [(0, 1), (1, 1), (2, 2)] and sorted(calls[3:]) == [(3, 1), (4, 1)]


def test_fold_training_starts_from_scratch_unless_a_weights_file_is_named(repo):
    accuracy = load_accuracy(repo)
    args = accuracy.parse_args(["--protocol", "physionet-cv5"])
    cfg = accuracy.protocol_settings("physionet-cv5", args)
    train = dict(accuracy.fold_commands("physionet-cv5", cfg, "RAW", "DATA", "MODEL", 0, args))["train"]
    assert "--no-pretrained" in train and "--weights" not in train
    # train.py refuses --no-pretrained with --weights: a named file replaces it, and the file is passed on
    args = accuracy.parse_args(["--protocol", "physionet-cv5", "--train-args", "--weights /tmp/yaseen.pth.tar"])
    cfg = accuracy.protocol_settings("physionet-cv5", args)
    train = dict(accuracy.fold_commands("physionet-cv5", cfg, "RAW", "DATA", "MODEL", 0, args))["train"]
    assert "--no-pretrained" not in train and train[-2:] == ["--weights", "/tmp/yaseen.pth.tar"]


def test_quick_physionet_trains_on_cycles_and_keeps_the_last_epoch(repo, tmp_path, shared_data):
    """The PhysioNet protocol: peak-to-peak cycles (prepare.py --segment peaks), no time roll, the last epoch
    kept (train.py --select last), on a few real recordings per site."""
    cmd = [sys.executable, str(repo / "bench" / "accuracy.py"), "--quick", "--protocol", "physionet-cv5",
           "--data", str(shared_data), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "acc.json"),
           "--limit", "4", "--only", "0", "--epochs", "2", "--threads", "2", "--workers", "1"]
    done = subprocess.run(cmd, cwd=str(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    fold = json.loads((tmp_path / "acc.json").read_text())["protocols"]["physionet-cv5"]["folds"][0]
    prepare, train = fold["commands"][0], fold["commands"][1]
    assert "--segment peaks" in prepare and "--window 1.5" in prepare
    assert "--aug-shift 0" in train and "--select last" in train and "--balance site-sampler" in train
    assert fold["training"]["best_epoch"] == 1            # the last of two epochs, whatever val said
    card = json.loads((tmp_path / "work" / "physionet-cv5" / "fold-0" / "model" / "model.json").read_text())
    assert card["contract"]["segmentation"]["mode"] == "peaks" and card["training"]["select"] == "last"
    assert card["contract"]["segmentation"]["window_s"] == 1.5   # cycles up to 1.5 s (40 bpm) drawn whole, ~1.8 times
    assert fold["windows_per_recording"]["max"] > 3        # a cycle a beat: many images per recording
    assert set(fold["test"]["recording"]["classes"]) == {"abnormal", "normal"}


def test_the_machine_record_names_the_gpus_nvidia_smi_lists(repo, tmp_path, monkeypatch):
    """A figure measured on a GPU says which: the names nvidia-smi prints, one per line; none without it."""
    accuracy = load_accuracy(repo)
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\n[ "$1 $2" = "--query-gpu=name --format=csv,noheader" ] || exit 2\n'
                   'printf "NVIDIA H100 80GB HBM3\\nNVIDIA H100 80GB HBM3\\n"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(smi.parent))
    assert accuracy.gpu_names() == ["NVIDIA H100 80GB HBM3"] * 2
    assert accuracy.machine_record()["gpus"] == ["NVIDIA H100 80GB HBM3"] * 2
    smi.write_text("#!/bin/sh\nexit 9\n")              # a driver that does not answer: no GPU named, no crash
    assert accuracy.gpu_names() == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert accuracy.gpu_names() == []


# What each protocol ran before its settings moved to train_host/recipes.py (issue 30.5): the figures in
# bench/results were measured with exactly these command lines, and a resumed run keeps a fold only when its saved
# settings equal these (result.json), so moving the definition must change neither.
TRAIN = "PY train_host/train.py DATA --model-dir MODEL --no-pretrained "
TAIL = " --patience 0 --seed 0 --threads 2 --no-progress --force"
PHYSIONET_ARGS = " --aug-time-masks 0 --aug-freq-masks 0 --wd 0.01"
PROTOCOL_COMMANDS = {
    "yaseen-cv5": [
        "PY train_host/prepare.py RAW DATA --adapter folder --preset heart --size 64 --seed 0 --workers 2 --window 3.0 "
        "--hop 1.5 --split kfold:5:1 --class-map AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N",
        TRAIN + "--epochs 30 -b 32 --balance none --select-level recording" + TAIL + " --select last"],
    "physionet-cv5": [
        "PY train_host/prepare.py RAW DATA --adapter physionet2016 --preset heart --size 64 --seed 0 --workers 2 "
        "--window 1.5 --hop 3.0 --split kfold:5:1 --segment peaks",
        TRAIN + "--epochs 10 -b 32 --balance site-sampler --select-level recording" + TAIL + PHYSIONET_ARGS +
        " --aug-shift 0 --select last"],
    "physionet-loso": [
        "PY train_host/prepare.py RAW DATA --adapter csv --preset heart --size 64 --seed 0 --workers 2 --window 3.0 "
        "--hop 3.0 --split official",
        TRAIN + "--epochs 15 -b 32 --balance site-sampler --select-level recording" + TAIL + PHYSIONET_ARGS +
        " --aug-noise-db 40"],
    "physionet-to-yaseen": [
        "PY train_host/prepare.py RAW DATA --adapter physionet2016 --preset heart --size 64 --seed 0 --workers 2 "
        "--window 1.5 --hop 3.0 --split 0.85,0.15,0 --segment peaks",
        "PY train_host/prepare.py TESTRAW TESTDATA --adapter folder --contract-from DATA --split test --class-map "
        "AS_New=abnormal,MR_New=abnormal,MS_New=abnormal,MVP_New=abnormal,N_New=normal --seed 0 --workers 2",
        TRAIN + "--epochs 10 -b 32 --balance site-sampler --select-level recording" + TAIL + PHYSIONET_ARGS +
        " --aug-shift 0 --select last"],
    "icbhi-official": [
        "PY train_host/prepare.py RAW DATA --adapter icbhi2017 --preset lung --size 64 --seed 0 --workers 2 "
        "--split official",
        TRAIN + "--epochs 2 -b 16 --balance none --select-level window" + TAIL],
}
COMMON = {"limit": None, "lr": None, "patience": 0, "preset": "heart", "quick": False, "seed": 0, "size": 64,
          "select_level": "recording"}
PROTOCOL_SIGNATURES = {
    "yaseen-cv5": dict(COMMON, adapter="folder", balance="none", batch_size=32, epochs=30, folds=5, window=3.0,
                       hop=1.5, extra_prepare=["--class-map", "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"],
                       train_args=["--select", "last"]),
    "physionet-cv5": dict(COMMON, adapter="physionet2016", balance="site-sampler", batch_size=32, epochs=10, folds=5,
                          window=1.5, hop=3.0, extra_prepare=["--segment", "peaks"],
                          train_args=["--aug-time-masks", "0", "--aug-freq-masks", "0", "--wd", "0.01",
                                      "--aug-shift", "0", "--select", "last"]),
    "icbhi-official": dict(COMMON, adapter="icbhi2017", balance="none", batch_size=16, epochs=2, folds=1,
                           window=None, hop=None, extra_prepare=[], train_args=[], preset="lung",
                           select_level="window"),
}


def test_every_protocol_runs_the_command_lines_and_settings_it_always_did(repo):
    accuracy = load_accuracy(repo)
    assert sorted(accuracy.PROTOCOLS) == sorted(PROTOCOL_COMMANDS)
    for proto, expected in PROTOCOL_COMMANDS.items():
        args = accuracy.parse_args(["--protocol", proto])
        cfg = accuracy.protocol_settings(proto, args)
        steps = accuracy.fold_commands(proto, cfg, "RAW", "DATA", "MODEL", 1, args, None, "TESTRAW", "TESTDATA")
        lines = [" ".join("PY" if word == sys.executable else word for word in cmd) for step, cmd in steps
                 if step != "evaluate"]
        assert lines == expected, proto
        if proto in PROTOCOL_SIGNATURES:
            signature = dict((k, v) for k, v in cfg.items() if k != "dataset")
            signature.update(seed=args.seed, quick=args.quick)
            assert signature == PROTOCOL_SIGNATURES[proto], proto

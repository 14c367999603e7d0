"""ICBHI sample end to end: per-cycle labels (several per recording) through prepare → train → evaluate."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_cycle_labelled_recordings_train_and_evaluate(shared_data, repo, tmp_path):
    source = shared_data / "icbhi2017_sample"
    data, model = tmp_path / "icbhi", tmp_path / "model"
    run = dict(cwd=str(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    prepared = subprocess.run([sys.executable, "train_host/prepare.py", str(source), str(data), "--adapter", "icbhi2017",
                               "--preset", "lung", "--split", "official", "--size", "32"], **run)
    assert prepared.returncode == 0, prepared.stdout
    trained = subprocess.run([sys.executable, "train_host/train.py", str(data), "--model-dir", str(model),
                              "--epochs", "1", "--no-pretrained", "--no-progress", "-b", "16"], **run)
    assert trained.returncode == 0, trained.stdout
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["window"]["n"] == 91                      # the official test split's cycles
    # recordings whose cycles carry several labels count once per label: 9 test recordings → 11 units
    assert metrics["n_recordings"] == 11 and metrics["recording"]["n"] == 11

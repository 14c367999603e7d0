"""Shared helpers for the service, classify, backend and ALSA tests (no tests here).

``make_model`` builds a tiny model folder the way train_host/export.py lays it
out (resnet18.onnx with softmax, opset 11, static [1,3,R,R] input_0 →
output_0; labels.txt; model.json with the contract and the ONNX sha256), from
a randomly initialised torchvision ResNet18: the tests check plumbing and
parity, not accuracy.
"""
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def make_model(folder, classes=("extra", "murmur", "normal"), size=32, preset="heart", seed=0, segmentation=None,
               decision=None):
    """Write a random-init ResNet18 model folder (onnx + labels.txt + model.json); returns the folder.

    ``segmentation``: fields of the preset's segmentation to change (e.g. {"mode": "peaks"}); ``decision``: the
    card's decision block (stetho.decision; None: argmax)."""
    import torch
    import torchvision
    from stetho import ModelCard, preset as get_preset
    from stetho.labels import write_labels
    from stetho.modelcard import sha256_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    net = torchvision.models.resnet18(num_classes=len(classes))
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    onnx_path = folder / "resnet18.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is the contract's (opset 11)
        torch.onnx.export(model, torch.zeros(1, 3, size, size), str(onnx_path), input_names=["input_0"],
                          output_names=["output_0"], opset_version=11, dynamo=False)
    write_labels(str(folder / "labels.txt"), list(classes))
    contract = get_preset(preset, size=size)
    if segmentation:
        contract = contract.replace(segmentation=contract.segmentation.replace(**segmentation))
    ModelCard(list(classes), contract, onnx_sha256=sha256_file(str(onnx_path)),
              training={"note": "random init, test fixture"}, decision=decision).save(str(folder))
    return folder


def service_cmd(*args):
    return [PYTHON, str(REPO / "deploy_jetson" / "service.py")] + [str(a) for a in args]


def run_service(*args, timeout=120, env=None, **kwargs):
    """Run the service to completion; returns the CompletedProcess (stdout/stderr as text)."""
    return subprocess.run(service_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, env=env, cwd=str(REPO), **kwargs)


def read_jsonl(path):
    import json
    with open(str(path)) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def env_with(**extra):
    env = dict(os.environ)
    env.update(extra)
    return env

#!/usr/bin/env python3
"""Export a trained checkpoint to the ONNX file jetson-inference's imageNet (and TensorRT) loads.

    python train_host/export.py --model-dir models/heart [--checkpoint model_best.pth.tar] [--data DATA] [--force]

Writes, beside the checkpoint, ``<arch>.onnx`` (opset 11, legacy TorchScript
exporter ``dynamo=False``, one file, static float32 ``input_0`` [1,3,R,R],
``output_0`` = softmax probabilities [1,N], no dynamic axes), ``labels.txt``
and ``model.json`` (stetho.modelcard.ModelCard: the dataset's contract, the
classes, the ONNX sha256).  Before anything is published it is verified:
onnx.checker; onnxruntime against PyTorch on real images of the dataset
(max abs difference < 1e-4) with the tensor built as imageNet builds it
(stetho.tensor.imagenet_tensor, PNG read by stetho.png); and the same top-1 from
that tensor as from the training-side transform.  A model folder made from a
different dataset is not overwritten without ``--force``.

Use it on the device's terms, e.g.
    imagenet.py --model=models/heart/resnet18.onnx --labels=models/heart/labels.txt \\
                --input_blob=input_0 --output_blob=output_0 spectrogram.png
"""
import argparse
import os
import sys
import time
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # spin briefly at OpenMP barriers (see train.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from stetho import Contract, ModelCard  # noqa: E402
from stetho.errors import ConfigError  # noqa: E402
from stetho.labels import check_class_names, write_labels  # noqa: E402
from stetho.modelcard import CARD_NAME, sha256_file  # noqa: E402
from stetho.png import read_png  # noqa: E402
from stetho.tensor import imagenet_tensor  # noqa: E402
from train_host.data import load_prepared, read_image, to_tensor  # noqa: E402
from train_host.models import build_model, with_softmax  # noqa: E402

OPSET = 11
INPUT_BLOB = "input_0"
OUTPUT_BLOB = "output_0"
TOLERANCE = 1e-4
CHECKPOINT_KEYS = ("epoch", "arch", "resolution", "classes", "num_classes", "state_dict", "accuracy")


class ExportError(Exception):
    """The export cannot go on, or its result failed verification (the message says which)."""


def load_checkpoint(path):
    """A checkpoint written by train.py; ExportError naming the file if it is not one."""
    if not os.path.isfile(path):
        raise ExportError("%s: checkpoint not found" % path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError("%s: cannot read checkpoint (%s)" % (path, error))
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ExportError("%s: not a training checkpoint (missing %s)" % (path, ", ".join(missing)))
    return checkpoint


def model_from_checkpoint(checkpoint):
    """The network (logits, eval mode, CPU) with the checkpoint's weights."""
    model = build_model(checkpoint["arch"], checkpoint["num_classes"], cbam=bool(checkpoint.get("cbam", False)))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def check_overwrite(model_dir, fingerprint, force):
    """Refuse to replace a model made from another dataset (by prepare.json fingerprint) unless forced."""
    card_path = os.path.join(model_dir, CARD_NAME)
    if not os.path.isfile(card_path):
        return
    try:
        old = ModelCard.load(card_path).dataset.get("fingerprint")
    except ConfigError as error:
        old = "unreadable (%s)" % error
    if old != fingerprint and not force:
        raise ExportError("%s: this folder holds a model of another dataset (fingerprint %s, now %s); "
                          "use --force to overwrite it, or export into a new --model-dir"
                          % (card_path, str(old)[:12], fingerprint[:12]))


def onnx_export(model, resolution, path):
    """torch.onnx.export with the legacy exporter: opset 11, static [1,3,R,R] input_0 → output_0."""
    dummy = torch.zeros(1, 3, resolution, resolution, dtype=torch.float32)
    with warnings.catch_warnings():
        # torch ≥ 2.9 marks the TorchScript exporter deprecated; it is still the one that writes opset 11.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(with_softmax(model).eval(), (dummy,), path, input_names=[INPUT_BLOB],
                          output_names=[OUTPUT_BLOB], opset_version=OPSET, dynamo=False, export_params=True,
                          do_constant_folding=True)


def check_graph(path, resolution, num_classes):
    """onnx.checker plus the contract of the file: opset, names, static shapes, float32, one file."""
    import onnx
    from onnx import TensorProto
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    problems = []
    if opsets != [OPSET]:
        problems.append("opset %s, expected %d" % (opsets, OPSET))

    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim])
                for v in values]
    inputs = describe(model.graph.input)
    outputs = describe(model.graph.output)
    if inputs != [(INPUT_BLOB, TensorProto.FLOAT, [1, 3, resolution, resolution])]:
        problems.append("inputs %s, expected %s float32 [1,3,%d,%d]" % (inputs, INPUT_BLOB, resolution, resolution))
    if outputs != [(OUTPUT_BLOB, TensorProto.FLOAT, [1, num_classes])]:
        problems.append("outputs %s, expected %s float32 [1,%d]" % (outputs, OUTPUT_BLOB, num_classes))
    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        problems.append("weights stored outside the file: %s" % external[:3])
    if model.graph.node[-1].op_type != "Softmax":
        problems.append("last node is %s, not Softmax" % model.graph.node[-1].op_type)
    if problems:
        raise ExportError("%s: %s" % (path, "; ".join(problems)))
    return {"opset": OPSET, "nodes": len(model.graph.node), "ops": sorted(set(n.op_type for n in model.graph.node))}


def pick_images(dataset, count):
    """Up to ``count`` images spread over the test split (else val, else train): (split, entries)."""
    for split in ("test", "val", "train"):
        entries = dataset.split(split)
        if entries:
            picks = np.unique(np.linspace(0, len(entries) - 1, min(count, len(entries))).round().astype(int))
            return split, [entries[i] for i in picks]
    raise ExportError("%s: the dataset lists no images to verify the export with" % dataset.root)


def verify(onnx_path, model, dataset, count):
    """onnxruntime (imageNet tensor) vs PyTorch on real images; raises ExportError on any mismatch."""
    import onnxruntime
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    probabilities = with_softmax(model).eval()
    split, entries = pick_images(dataset, count)
    worst_diff, worst_tensor, failures = 0.0, 0.0, []
    for entry in entries:
        path = os.path.join(dataset.root, entry["path"])
        device_tensor = imagenet_tensor(read_png(path), dataset.size)  # what imageNet feeds the engine
        train_tensor = to_tensor(read_image(path, dataset.size))[None]  # what training fed the network
        onnx_out = session.run([OUTPUT_BLOB], {INPUT_BLOB: device_tensor})[0]
        with torch.no_grad():
            torch_out = probabilities(torch.from_numpy(device_tensor)).numpy()
            train_out = probabilities(train_tensor).numpy()
        diff = float(np.abs(onnx_out - torch_out).max())
        worst_diff = max(worst_diff, diff)
        worst_tensor = max(worst_tensor, float(np.abs(device_tensor - train_tensor.numpy()).max()))
        if diff >= TOLERANCE:
            failures.append("%s: onnxruntime and PyTorch differ by %.2e" % (entry["path"], diff))
        if int(onnx_out.argmax()) != int(train_out.argmax()):
            failures.append("%s: top-1 %d from the imageNet tensor, %d from the training transform"
                            % (entry["path"], int(onnx_out.argmax()), int(train_out.argmax())))
        if abs(float(onnx_out.sum()) - 1.0) > 1e-4:
            failures.append("%s: output sums to %.6f, not 1 (softmax missing?)" % (entry["path"], onnx_out.sum()))
    if failures:
        raise ExportError("verification failed:\n  " + "\n  ".join(failures))
    return {"images": len(entries), "split": split, "max_abs_diff_onnxruntime_vs_torch": worst_diff,
            "max_abs_diff_imagenet_vs_training_tensor": worst_tensor, "tolerance": TOLERANCE,
            "top1_agreement": True}


def export(model_dir, checkpoint_name="model_best.pth.tar", data=None, force=False, verify_images=16, log=print):
    """Export, verify and publish ``model_dir/<arch>.onnx`` + labels.txt + model.json. Returns the summary dict."""
    model_dir = os.path.abspath(model_dir)
    checkpoint_path = os.path.join(model_dir, checkpoint_name)
    log("=> loading checkpoint:  %s" % checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    arch, resolution, classes = checkpoint["arch"], checkpoint["resolution"], list(checkpoint["classes"])
    check_class_names(classes, checkpoint_path)
    data = data or (checkpoint.get("dataset") or {}).get("path")
    if not data:
        raise ExportError("%s: the checkpoint does not say which dataset it was trained on; pass --data DATA"
                          % checkpoint_path)
    dataset = load_prepared(data)
    if checkpoint.get("contract") is not None and Contract.from_dict(checkpoint["contract"]) != dataset.contract:
        raise ExportError("%s: the dataset's contract differs from the one the checkpoint was trained with"
                          % os.path.join(dataset.root, "prepare.json"))
    if dataset.classes != classes or dataset.size != resolution:
        raise ExportError("%s: dataset classes %s / size %d do not match the checkpoint's %s / %d"
                          % (dataset.root, dataset.classes, dataset.size, classes, resolution))
    check_overwrite(model_dir, dataset.fingerprint, force)

    log("=> using model:  %s%s, %d classes, input %dx%d" % (arch, " + CBAM" if checkpoint.get("cbam") else "",
                                                          len(classes), resolution, resolution))
    model = model_from_checkpoint(checkpoint)
    onnx_path = os.path.join(model_dir, "%s.onnx" % arch)
    tmp = onnx_path + ".part"
    start = time.time()
    log("=> exporting model to ONNX (opset %d, legacy exporter dynamo=False, torch %s)..."
        % (OPSET, torch.__version__))
    try:
        onnx_export(model, resolution, tmp)
        graph = check_graph(tmp, resolution, len(classes))
        checks = verify(tmp, model, dataset, verify_images)
    except Exception:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, onnx_path)
    log("=> verified on %d %s images: onnxruntime vs PyTorch max |diff| %.2e (< %.0e), top-1 identical, "
        "imageNet vs training tensor max |diff| %.1e" % (checks["images"], checks["split"],
                                                        checks["max_abs_diff_onnxruntime_vs_torch"], TOLERANCE,
                                                        checks["max_abs_diff_imagenet_vs_training_tensor"]))
    write_labels(os.path.join(model_dir, "labels.txt"), classes)
    card = ModelCard(classes=classes, contract=dataset.contract, onnx_file=os.path.basename(onnx_path),
                     onnx_sha256=sha256_file(onnx_path), arch=arch, input_blob=INPUT_BLOB, output_blob=OUTPUT_BLOB,
                     pretrained=checkpoint.get("pretrained"), training=checkpoint.get("training"),
                     dataset=dataset.describe(),
                     extra={"cbam": bool(checkpoint.get("cbam", False)), "checkpoint": checkpoint_name,
                            "epoch": checkpoint["epoch"], "exporter": "torch.onnx.export(dynamo=False) torch %s"
                            % torch.__version__, "graph": graph, "verification": checks})
    card.save(model_dir)
    log("=> model exported to:  %s  (%.1f s, sha256 %s)" % (onnx_path, time.time() - start, card.onnx_sha256[:12]))
    log("=> wrote %s and %s" % (os.path.join(model_dir, "labels.txt"), os.path.join(model_dir, CARD_NAME)))
    return {"onnx": onnx_path, "sha256": card.onnx_sha256, "graph": graph, "verification": checks}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="folder holding the checkpoint; the ONNX goes here")
    parser.add_argument("--checkpoint", default="model_best.pth.tar", help="checkpoint file in --model-dir "
                        "(default: model_best.pth.tar)")
    parser.add_argument("--data", help="prepared dataset (default: the one recorded in the checkpoint)")
    parser.add_argument("--verify-images", type=int, default=16, help="real images to verify with (default 16)")
    parser.add_argument("--force", action="store_true", help="overwrite a model folder made from another dataset")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        export(args.model_dir, args.checkpoint, args.data, args.force, args.verify_images)
    except (ExportError, ConfigError, ValueError) as error:
        print("export: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

jetson-inference's own tools (python/training/classification of dusty-nv/jetson-inference) work on the same
folders: their train.py trains on a prepared dataset and resumes this project's checkpoints, their
onnx_export.py exports either project's checkpoints.  For a model they made:

    python train_host/export.py --model-dir DIR --data DATA
        exports DIR/model_best.pth.tar (theirs or ours) as above: opset 11, what JetPack 4.6 reads;
    python train_host/export.py --model-dir DIR --data DATA --jetson-onnx resnet18.onnx
        adopts DIR/resnet18.onnx, written by their onnx_export.py from that checkpoint: the same checks
        (any opset; weights stored beside it in resnet18.onnx.data are folded into the file, as the
        device's backends build from the one file's bytes), then labels.txt and model.json for it.

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
from stetho.labels import check_class_names, read_labels, write_labels  # noqa: E402
from stetho.modelcard import CARD_NAME, plain_file_name, sha256_file  # noqa: E402
from stetho.png import read_png  # noqa: E402
from stetho.tensor import imagenet_tensor  # noqa: E402
from train_host.data import load_prepared, read_image, to_tensor  # noqa: E402
from train_host.models import build_model, with_softmax  # noqa: E402

OPSET = 11
INPUT_BLOB = "input_0"
OUTPUT_BLOB = "output_0"
TOLERANCE = 1e-4
CHECKPOINT_KEYS = ("epoch", "arch", "resolution", "classes", "num_classes", "state_dict", "accuracy")
# jetson-inference's train.py builds SGD(model.parameters(), lr, momentum, weight_decay) with these defaults and
# loads a checkpoint's 'optimizer' into it on --resume; this project keeps its own optimiser's state apart.
JETSON_SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
OWN_OPTIMIZER = "own_optimizer"
# The newest ONNX the Jetson Nano's JetPack 4.6 stack reads: its onnxruntime 1.10 refuses IR version 10 and
# opset 20 by name (measured with .venv-device); its TensorRT 8.2 (Nov. 2021) predates opset 16 (ONNX 1.11).
DEVICE_ONNX = {"opset": 15, "ir_version": 8}


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


def optimizer_entries(model, name, optimizer):
    """The checkpoint's optimiser keys: ``optimizer``, a state that jetson-inference's train.py --resume loads into
    its ``SGD(model.parameters(), lr, momentum, weight_decay)``, and ``own_optimizer``: ``{"name": name,
    "state_dict": ...}``, what train_host/train.py --resume continues from.

    An SGD run gives its own state to both (one copy on disk: torch.save stores a shared object once), so their
    train.py carries on with its momentum.  An AdamW state cannot be loaded into SGD (their step looks up
    'momentum'): theirs gets a fresh SGD state with their train.py's defaults (``JETSON_SGD``; loading it sets
    momentum and weight decay, and their schedule sets the lr every epoch).
    """
    own = optimizer.state_dict()
    if isinstance(optimizer, torch.optim.SGD):
        theirs = own
    else:
        theirs = torch.optim.SGD(model.parameters(), JETSON_SGD["lr"], momentum=JETSON_SGD["momentum"],
                                 weight_decay=JETSON_SGD["weight_decay"]).state_dict()
    return {"optimizer": theirs, OWN_OPTIMIZER: {"name": name, "state_dict": own}}


def own_optimizer_state(checkpoint, name, path):
    """The state train.py --resume loads into its ``name`` optimiser (adamw / sgd); ExportError naming ``path``
    when the checkpoint was made with another optimiser.  Checkpoints written before ``own_optimizer`` existed
    hold this project's state under ``optimizer``."""
    entry = checkpoint.get(OWN_OPTIMIZER)
    if entry is None:
        return checkpoint["optimizer"]
    if entry.get("name") != name:
        raise ExportError("%s was trained with --optimizer %s; resume it with --optimizer %s (not %s)"
                          % (path, entry.get("name"), entry.get("name"), name))
    return entry["state_dict"]


def is_jetson_checkpoint(checkpoint):
    """True for a checkpoint of jetson-inference's train.py (theirs lacks this project's dataset and contract)."""
    return "dataset" not in checkpoint and "contract" not in checkpoint


def finite(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN; their val loss can be one)."""
    if isinstance(value, dict):
        return dict((k, finite(v)) for k, v in value.items())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def provenance(checkpoint):
    """(pretrained, training) blocks of the model card for ``checkpoint``, without the training machine's paths."""
    if is_jetson_checkpoint(checkpoint):
        pretrained = {"requested": "imagenet", "used": None,
                      "note": "jetson-inference's train.py always asks torchvision for ImageNet weights; its "
                              "checkpoint does not record whether it got them"}
        training = {"tool": "jetson-inference train.py", "epoch": checkpoint["epoch"],
                    "accuracy": finite(checkpoint.get("accuracy")), "loss": finite(checkpoint.get("loss"))}
        return pretrained, training
    pretrained = dict(checkpoint.get("pretrained") or {"used": False})
    if pretrained.get("file"):
        pretrained["file"] = os.path.basename(str(pretrained["file"]))
    return pretrained, checkpoint.get("training")


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


def check_unclaimed_onnx(model_dir, onnx_name, force):
    """Refuse to replace an ONNX that no model.json in ``model_dir`` describes (e.g. jetson-inference's
    onnx_export.py output) unless forced."""
    path = os.path.join(model_dir, onnx_name)
    card_path = os.path.join(model_dir, CARD_NAME)
    if force or not os.path.isfile(path):
        return
    try:
        claimed = os.path.isfile(card_path) and ModelCard.load(card_path).onnx_file == onnx_name
    except ConfigError:
        claimed = False
    if not claimed:
        raise ExportError("%s exists and no model.json describes it (jetson-inference's onnx_export.py output?); "
                          "adopt it with --jetson-onnx %s, or use --force to replace it" % (path, onnx_name))


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


def check_graph(path, resolution, num_classes, opset=OPSET):
    """onnx.checker plus the contract of the file: opset (``opset``; None: any one), names, static shapes,
    float32, one file."""
    import onnx
    from onnx import TensorProto
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    problems = []
    if (opsets != [opset]) if opset is not None else (len(opsets) != 1):
        problems.append("opset %s, expected %s" % (opsets, opset if opset is not None else "one"))

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
    return {"opset": opsets[0], "ir_version": model.ir_version, "nodes": len(model.graph.node),
            "ops": sorted(set(n.op_type for n in model.graph.node))}


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


def checkpoint_and_dataset(model_dir, checkpoint_name, data, log):
    """(checkpoint path, checkpoint, PreparedDataset), checked against each other: the dataset recorded in the
    checkpoint (or ``data``; needed for jetson-inference's checkpoints, which do not record it), the same
    contract, classes and image size; ExportError naming the file otherwise."""
    checkpoint_path = os.path.join(model_dir, checkpoint_name)
    log("=> loading checkpoint:  %s" % checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    classes, resolution = list(checkpoint["classes"]), checkpoint["resolution"]
    check_class_names(classes, checkpoint_path)
    if checkpoint.get("multi_label") or checkpoint["num_classes"] != len(classes):
        raise ExportError("%s: a multi-label model or num_classes %r for %d classes; this project exports "
                          "single-label classifiers" % (checkpoint_path, checkpoint["num_classes"], len(classes)))
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
    return checkpoint_path, checkpoint, dataset


def export(model_dir, checkpoint_name="model_best.pth.tar", data=None, force=False, verify_images=16, log=print):
    """Export, verify and publish ``model_dir/<arch>.onnx`` + labels.txt + model.json. Returns the summary dict."""
    model_dir = os.path.abspath(model_dir)
    checkpoint_path, checkpoint, dataset = checkpoint_and_dataset(model_dir, checkpoint_name, data, log)
    arch, resolution, classes = checkpoint["arch"], checkpoint["resolution"], list(checkpoint["classes"])
    check_overwrite(model_dir, dataset.fingerprint, force)
    check_unclaimed_onnx(model_dir, "%s.onnx" % arch, force)

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
    pretrained, training = provenance(checkpoint)
    card = ModelCard(classes=classes, contract=dataset.contract, onnx_file=os.path.basename(onnx_path),
                     onnx_sha256=sha256_file(onnx_path), arch=arch, input_blob=INPUT_BLOB, output_blob=OUTPUT_BLOB,
                     pretrained=pretrained, training=training, dataset=dataset.describe(),
                     extra={"cbam": bool(checkpoint.get("cbam", False)),
                            "checkpoint": os.path.basename(checkpoint_name),
                            "epoch": checkpoint["epoch"], "exporter": "torch.onnx.export(dynamo=False) torch %s"
                            % torch.__version__, "graph": graph, "verification": checks},
                     input_stats=training_input_stats(dataset, log))
    card.save(model_dir)
    log("=> model exported to:  %s  (%.1f s, sha256 %s)" % (onnx_path, time.time() - start, card.onnx_sha256[:12]))
    log("=> wrote %s and %s" % (os.path.join(model_dir, "labels.txt"), os.path.join(model_dir, CARD_NAME)))
    return {"onnx": onnx_path, "sha256": card.onnx_sha256, "graph": graph, "verification": checks}


def training_input_stats(dataset, log=print):
    """The training input's statistics for the device's drift warning (train_host/input_stats.py), or None (with
    the reason logged) where the train split is too small for them."""
    from train_host.input_stats import input_stats
    try:
        block = input_stats(dataset)
    except ValueError as error:
        log("=> no drift statistics: %s" % error)
        return None
    check = block.get("check") or {}
    log("=> drift statistics from %d train recordings: threshold %.2f (flags %s of val recordings)"
        % (block["reference"]["recordings"], block["threshold"],
           "%.0f %%" % (100 * check["flagged"]) if check else "–"))
    return block


def fold_external_data(path, tmp):
    """Write ``path``'s model to ``tmp`` as one file, weights kept outside it (``path``.data, as torch >= 2.9's
    exporter writes by default) read back in.  Returns the names of those weights' files ([]: nothing to fold,
    ``tmp`` not written)."""
    import onnx
    from onnx import TensorProto
    bare = onnx.load(path, load_external_data=False)
    files = sorted(set(dict((e.key, e.value) for e in t.external_data).get("location", "?")
                       for t in bare.graph.initializer if t.data_location == TensorProto.EXTERNAL))
    if files:
        onnx.save(onnx.load(path), tmp)
    return files


def adopt(model_dir, onnx_name, checkpoint_name="model_best.pth.tar", data=None, force=False, verify_images=16,
          log=print):
    """Verify ``model_dir/onnx_name``, an ONNX that jetson-inference's onnx_export.py made from ``checkpoint_name``
    (theirs or ours), and publish it with labels.txt and model.json.  Returns the summary dict.

    Checked before anything is written: the checkpoint against the dataset (classes = labels.txt, size, contract);
    labels.txt beside the checkpoint (their train.py's) against the dataset; the graph (onnx.checker, input_0
    float32 [1,3,R,R] → output_0 [1,N], a final Softmax, one opset, any version); and onnxruntime's output against
    the checkpoint's network + softmax on real dataset images through stetho.tensor.imagenet_tensor (max |diff| <
    TOLERANCE, probabilities summing to 1, the same top-1 as from the training-side tensor).  Weights stored
    outside the file are folded into it (same graph, same values; the backends build from the one file whose
    sha256 model.json records); the .data file is left where it is.  An opset or IR version newer than the
    Jetson Nano's JetPack 4.6 reads (``DEVICE_ONNX``) is reported and recorded in model.json ('device').
    """
    model_dir = os.path.abspath(model_dir)
    plain_file_name(onnx_name, "--jetson-onnx", model_dir)
    if not onnx_name.lower().endswith(".onnx"):
        raise ExportError("--jetson-onnx %s: not an .onnx file" % onnx_name)
    onnx_path = os.path.join(model_dir, onnx_name)
    if not os.path.isfile(onnx_path):
        raise ExportError("%s: not found (run jetson-inference's onnx_export.py --input %s --output %s first)"
                          % (onnx_path, os.path.join(model_dir, checkpoint_name), onnx_path))
    checkpoint_path, checkpoint, dataset = checkpoint_and_dataset(model_dir, checkpoint_name, data, log)
    arch, resolution, classes = checkpoint["arch"], checkpoint["resolution"], list(checkpoint["classes"])
    labels_path = os.path.join(model_dir, "labels.txt")
    if os.path.isfile(labels_path) and read_labels(labels_path) != classes:
        raise ExportError("%s: classes %s differ from the checkpoint's and the dataset's %s"
                          % (labels_path, read_labels(labels_path), classes))
    check_overwrite(model_dir, dataset.fingerprint, force)
    model = model_from_checkpoint(checkpoint)

    import onnx
    tmp = onnx_path + ".part"
    start = time.time()
    try:
        try:
            folded = fold_external_data(onnx_path, tmp)
            checked = tmp if folded else onnx_path
            graph = check_graph(checked, resolution, len(classes), opset=None)
        except ExportError:
            raise
        except Exception as error:  # protobuf DecodeError, onnx.checker's ValidationError, a missing .data file...
            raise ExportError("%s: not a valid ONNX model (%s: %s)" % (onnx_path, type(error).__name__,
                                                                      str(error).strip().splitlines()[0]))
        checks = verify(checked, model, dataset, verify_images)
    except Exception:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    producer = onnx.load(checked, load_external_data=False)
    exporter = "%s %s" % (producer.producer_name, producer.producer_version)
    if folded:
        os.replace(tmp, onnx_path)
        log("=> folded the weights of %s into %s (one file, as the device's backends load it); %s is no longer "
            "needed" % (", ".join(folded), onnx_name, ", ".join(folded)))
    log("=> verified %s (opset %d, IR %d, %s) on %d %s images: onnxruntime vs the checkpoint max |diff| %.2e "
        "(< %.0e), top-1 identical" % (onnx_name, graph["opset"], graph["ir_version"], exporter, checks["images"],
                                       checks["split"], checks["max_abs_diff_onnxruntime_vs_torch"], TOLERANCE))
    device = None
    if graph["opset"] > DEVICE_ONNX["opset"] or graph["ir_version"] > DEVICE_ONNX["ir_version"]:
        device = ("opset %d / IR %d: newer than the Jetson Nano's JetPack 4.6 reads (onnxruntime 1.10: opset <= %d, "
                  "IR <= %d; TensorRT 8.2 predates opset 16); for that device export the checkpoint with "
                  "train_host/export.py --model-dir DIR --data DATA (opset %d), or run onnx_export.py under torch "
                  "< 2.9" % (graph["opset"], graph["ir_version"], DEVICE_ONNX["opset"], DEVICE_ONNX["ir_version"],
                             OPSET))
        log("=> WARNING %s" % device)
    write_labels(labels_path, classes)
    pretrained, training = provenance(checkpoint)
    card = ModelCard(classes=classes, contract=dataset.contract, onnx_file=onnx_name,
                     onnx_sha256=sha256_file(onnx_path), arch=arch, input_blob=INPUT_BLOB, output_blob=OUTPUT_BLOB,
                     pretrained=pretrained, training=training, dataset=dataset.describe(),
                     extra={"cbam": bool(checkpoint.get("cbam", False)),
                            "checkpoint": os.path.basename(checkpoint_name),
                            "epoch": checkpoint["epoch"],
                            "exporter": "adopted: jetson-inference onnx_export.py (%s)%s"
                            % (exporter, ", external weights folded in" if folded else ""),
                            "graph": graph, "verification": checks, "device": device},
                     input_stats=training_input_stats(dataset, log))
    card.save(model_dir)
    log("=> model adopted:  %s  (%.1f s, sha256 %s); wrote %s and %s"
        % (onnx_path, time.time() - start, card.onnx_sha256[:12], labels_path, os.path.join(model_dir, CARD_NAME)))
    return {"onnx": onnx_path, "sha256": card.onnx_sha256, "graph": graph, "verification": checks,
            "folded": folded, "device": device}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="folder holding the checkpoint; the ONNX goes here")
    parser.add_argument("--checkpoint", default="model_best.pth.tar", help="checkpoint file in --model-dir, or "
                        "a path (default: model_best.pth.tar)")
    parser.add_argument("--data", help="prepared dataset (default: the one recorded in the checkpoint)")
    parser.add_argument("--verify-images", type=int, default=16, help="real images to verify with (default 16)")
    parser.add_argument("--jetson-onnx", metavar="NAME", help="instead of exporting, adopt --model-dir/NAME, the "
                        "ONNX jetson-inference's onnx_export.py wrote from --checkpoint: verify it, then write "
                        "labels.txt and model.json for it")
    parser.add_argument("--force", action="store_true", help="overwrite a model folder made from another dataset, "
                        "or an ONNX no model.json describes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.jetson_onnx:
            adopt(args.model_dir, args.jetson_onnx, args.checkpoint, args.data, args.force, args.verify_images)
        else:
            export(args.model_dir, args.checkpoint, args.data, args.force, args.verify_images)
    except (ExportError, ConfigError, ValueError) as error:
        print("export: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model folders for the backend tests: copies of a made model, and cards that disagree with their ONNX."""
import os
import shutil

from stetho import ModelCard, preset
from stetho.labels import write_labels


def copy_model(source, target):
    """Copy the model folder ``source`` (its plain files) to ``target``; returns ``target``."""
    os.makedirs(str(target))
    for name in os.listdir(str(source)):
        if os.path.isfile(os.path.join(str(source), name)):
            shutil.copyfile(os.path.join(str(source), name), os.path.join(str(target), name))
    return target


def recard(folder, classes=None, size=None):
    """Rewrite model.json (and labels.txt) in ``folder`` with other ``classes`` or another resolution ``size``
    while keeping the ONNX and its sha256: a card whose integrity checks out but which disagrees with the network."""
    card = ModelCard.load(str(folder))
    classes = list(classes or card.classes)
    contract = preset("heart", size=size) if size else card.contract
    ModelCard(classes, contract, onnx_sha256=card.onnx_sha256, training=card.training).save(str(folder))
    write_labels(os.path.join(str(folder), "labels.txt"), classes)
    return folder

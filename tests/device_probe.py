"""Print, as JSON, what the device path computes for some WAV files: run by tests/test_device_stack.py
under the workstation's Python and under the Nano's (Python 3.6 + numpy 1.19), which must agree.

    python tests/device_probe.py JOB.json      (JOB: {"wavs": [...], "sizes": [...], "classes": [...]})

For every window of every WAV (at the heart preset's rate: no resampling, whose numpy fallback is
documented to differ from soxr) and every size R: sha256 of the spectrogram levels, of the RGB image,
of the float32 tensor the onnxruntime/TensorRT backends feed the network, of the overlay, and of the
PNG's pixels, plus the quality gate's verdict and metrics.  Python 3.6 + numpy only, like the device.
"""
import hashlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from stetho import ModelCard, load_audio, preset  # noqa: E402
from stetho.contract import render_segment_levels  # noqa: E402
from stetho.png import read_png, write_png  # noqa: E402
from stetho.segmentation import fixed_windows  # noqa: E402
from stetho.spectrogram import colour  # noqa: E402
from deploy_jetson import quality  # noqa: E402
from deploy_jetson.backends import Backend, Model  # noqa: E402
from deploy_jetson.overlay import draw_overlay, imagenet_text  # noqa: E402


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def png_round_trip(levels, palette):
    """The RGB pixels of the indexed PNG the service saves for ``levels`` (written, then read back)."""
    handle, path = tempfile.mkstemp(suffix=".png")
    os.close(handle)
    try:
        write_png(path, levels, palette=palette)
        return read_png(path)
    finally:
        os.remove(path)


def probe(path, size, classes):
    contract = preset("heart", size=size)
    samples, rate = load_audio(path)
    if rate != contract.sample_rate:
        raise SystemExit("%s: %d Hz, the probe wants %d Hz (no resampling)" % (path, rate, contract.sample_rate))
    backend = Backend(Model("probe.onnx", "labels.txt", classes, card=ModelCard(list(classes), contract)))
    backend.input_size = size
    band = quality.contract_band(contract)
    seg = contract.segmentation
    windows = []
    for piece in fixed_windows(samples, rate, seg.window_s, seg.hop_s, seg.pad):
        levels = render_segment_levels(piece.samples, contract)
        image = colour(levels, contract.spectrogram)
        verdict = quality.assess(piece.samples, rate, quality.QualityConfig(), band)
        p = np.abs(np.sin(np.arange(len(classes)) + float(levels.mean())))  # any probabilities, from the image
        p /= p.sum()
        top = int(p.argmax())
        overlay = draw_overlay(image, [imagenet_text(p[top], classes[top])], p, classes, top)
        windows.append({"offset": int(piece.offset), "levels": digest(levels), "rgb": digest(image),
                        "tensor": digest(backend.prepare(image)), "overlay": digest(overlay),
                        "tensor_from_levels": digest(backend.prepare(image, levels)),  # the service's way
                        "png_pixels": digest(png_round_trip(levels, contract.palette)),
                        "quality": verdict.quality, "metrics": verdict.metrics})
    return windows


def main(argv):
    with open(argv[1]) as handle:
        job = json.load(handle)
    out = {"python": sys.version.split()[0], "numpy": np.__version__, "results": {}}
    for path in job["wavs"]:
        for size in job["sizes"]:
            out["results"]["%s@%d" % (os.path.basename(path), size)] = probe(path, size, job["classes"])
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

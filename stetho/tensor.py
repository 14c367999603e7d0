"""The network input, built exactly as jetson-inference's imageNet builds it for ONNX models.

imageNet::PreProcess calls ``cudaTensorNormMeanRGB(range=(0,1), mean, std)``,
whose kernel (``gpuTensorNormMean``) does, per output pixel (x, y), in float32::

    dx = int(float(x) * (in_w / out_w));  dy = int(float(y) * (in_h / out_h))   # nearest
    out[c, y, x] = ((px[dy, dx, c] * (1/255) + 0) - mean[c]) / std[c]           # RGB, NCHW

This module reproduces that arithmetic in numpy so that onnxruntime, TensorRT
and evaluation see the very tensor imageNet would feed the engine.
"""
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def nearest_indices(n_in, n_out):
    """Source indices of imageNet's nearest-neighbour stretch from n_in to n_out pixels."""
    scale = np.float32(n_in) / np.float32(n_out)
    return (np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)


def imagenet_tensor(image, size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 H×W×3 RGB image → float32 [1, 3, size, size] tensor, as imageNet preprocesses it.

    When the image is already size×size (the contract renders at R×R) the
    stretch is the identity.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError("expected a uint8 H×W×3 (or ×4) image, got %s %s" % (image.dtype, image.shape))
    rows = nearest_indices(image.shape[0], size)
    cols = nearest_indices(image.shape[1], size)
    pixels = image[rows][:, cols, :3].astype(np.float32)
    multiplier = np.float32(1.0) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    normalised = (pixels * multiplier + np.float32(0.0) - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)


def softmax(logits, axis=-1):
    """Numerically stable softmax (float64 in, float64 out)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)

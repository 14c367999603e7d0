"""Network construction: torchvision ResNet18/34/50, optional CBAM blocks, ImageNet weights, softmax for export.

The plain networks are torchvision's, with ``fc`` resized to the number of
classes as jetson-inference's ``reshape_model`` does, so their state_dict keys
are exactly what jetson-inference's ``onnx_export.py`` loads.  With CBAM
(Woo et al., ECCV 2018: channel then spatial attention on each residual
branch, before the addition; the ResNet + CBAM arrangement used for ICBHI
lung-sound classification) the state_dict gains ``*.cbam.*`` keys, which
only this project's export.py knows how to rebuild.
"""
import os
import socket
import warnings

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = {
    # arch: (block, layers per stage, torchvision weights enum name)
    "resnet18": (BasicBlock, (2, 2, 2, 2), "ResNet18_Weights"),
    "resnet34": (BasicBlock, (3, 4, 6, 3), "ResNet34_Weights"),
    "resnet50": (Bottleneck, (3, 4, 6, 3), "ResNet50_Weights"),
}


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), MLP = 1×1 convs, reduction r."""

    def __init__(self, channels, reduction=16):
        super(ChannelAttention, self).__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x):
        avg = self.mlp(nn.functional.adaptive_avg_pool2d(x, 1))
        peak = self.mlp(nn.functional.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7×7([mean over channels, max over channels]))."""

    def __init__(self, kernel_size=7):
        super(SpatialAttention, self).__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Sequential):
    def __init__(self, channels, reduction=16, kernel_size=7):
        super(CBAM, self).__init__(ChannelAttention(channels, reduction), SpatialAttention(kernel_size))


class CBAMBasicBlock(BasicBlock):
    """torchvision's BasicBlock with CBAM on the residual branch."""

    def __init__(self, *args, **kwargs):
        super(CBAMBasicBlock, self).__init__(*args, **kwargs)
        self.cbam = CBAM(self.bn2.num_features)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class CBAMBottleneck(Bottleneck):
    """torchvision's Bottleneck with CBAM on the residual branch."""

    def __init__(self, *args, **kwargs):
        super(CBAMBottleneck, self).__init__(*args, **kwargs)
        self.cbam = CBAM(self.bn3.num_features)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


def build_model(arch, num_classes, cbam=False):
    """A randomly initialised ResNet ``arch`` with ``num_classes`` outputs (logits), CBAM blocks if asked."""
    if arch not in ARCHS:
        raise ValueError("unknown arch %r; choose one of %s" % (arch, ", ".join(sorted(ARCHS))))
    block, layers, _ = ARCHS[arch]
    if cbam:
        block = CBAMBottleneck if block is Bottleneck else CBAMBasicBlock
    model = ResNet(block, list(layers))
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # as jetson-inference's reshape_model
    return model


def with_softmax(model):
    """The exported network: logits → softmax probabilities (as jetson-inference's onnx_export adds)."""
    return nn.Sequential(model, nn.Softmax(1))


def imagenet_weights(arch, download=True, timeout_s=20.0):
    """torchvision's ImageNet state_dict for ``arch``, from the torch hub cache or downloaded.

    Returns (state_dict or None, info dict for model.json).  Never raises for a
    missing network: offline, it warns and returns None so training goes on from scratch.
    """
    enum = getattr(torchvision.models, ARCHS[arch][2]).IMAGENET1K_V1
    url = enum.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    info = {"requested": "imagenet", "source": "torchvision %s.IMAGENET1K_V1" % ARCHS[arch][2], "url": url}
    if not os.path.isfile(cached) and not download:
        info.update(used=False, reason="not cached at %s and downloads disabled" % cached)
        return None, info
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, map_location="cpu")
    except Exception as error:  # offline, proxy, corrupt cache...: say why and train from scratch
        reason = "%s: %s" % (type(error).__name__, error)
        warnings.warn("ImageNet weights for %s unavailable (%s); training from scratch" % (arch, reason))
        info.update(used=False, reason=reason)
        return None, info
    finally:
        socket.setdefaulttimeout(previous)
    info.update(used=True, file=os.path.basename(cached))
    return state, info


def read_weights_file(path):
    """A state_dict from a local file: a bare state_dict or a checkpoint holding one under 'state_dict'."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError("%s: cannot read weights (%s)" % (path, error))
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise ValueError("%s: not a state_dict" % path)
    return {key[7:] if key.startswith("module.") else key: value for key, value in data.items()}


def load_matching(model, state):
    """Load the tensors of ``state`` whose names and shapes match ``model``; skip the rest (e.g. fc).

    Returns (loaded names, skipped names).  Raises ValueError when nothing matches,
    which means the file is for another network.
    """
    own = model.state_dict()
    loaded = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    skipped = sorted(set(state) - set(loaded))
    if not loaded:
        raise ValueError("no tensor of the weights matches this network (%d skipped)" % len(skipped))
    model.load_state_dict(loaded, strict=False)
    return sorted(loaded), skipped


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())

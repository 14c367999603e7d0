"""stetho: the shared contract between the workstation and the Jetson.

Audio I/O, conditioning, segmentation, the spectrogram renderer, the network
input tensor and the model card.  Runs on Python 3.6 with numpy 1.19 and
nothing else, so the Jetson Nano (JetPack 4.6) renders exactly as training did.
"""
from .audio_io import load_audio, read_wav, resample, write_wav
from .contract import Contract, preset, PRESETS, render_segment, segments
from .errors import AudioError, ConfigError, StethoError
from .modelcard import ModelCard
from .spectrogram import SpectrogramConfig, render
from .tensor import imagenet_tensor

__version__ = "0.1.0"

__all__ = ["AudioError", "ConfigError", "Contract", "ModelCard", "PRESETS", "SpectrogramConfig", "StethoError",
           "imagenet_tensor", "load_audio", "preset", "read_wav", "render", "render_segment", "resample",
           "segments", "write_wav", "__version__"]

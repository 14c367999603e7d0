"""The contract between workstation and device: one config, one way from audio to image.

A :class:`Contract` bundles how audio is segmented, conditioned and drawn.  It
is saved in every dataset (``prepare.json``) and every model (``model.json``);
the live service reads it back, so the device renders exactly as training did.

Data flow::

    audio at contract.sample_rate
      → segments(audio)                fixed-length pieces (windows / cycles)
      → render_segment(piece)          condition, then spectrogram.render → uint8 R×R×3
                                       (render_segment_levels: the R×R colour-table levels it colours)
"""
import numbers

import numpy as np

from .conditioning import ConditioningConfig, condition
from .errors import ConfigError
from .records import Record
from .segmentation import SegmentationConfig, segment
from .colormaps import lookup_table
from .spectrogram import SpectrogramConfig, colour, render_levels


# (field, lowest, highest, unit) of the quality gate's thresholds; the fractions' lowest is excluded (0 would
# flag every window).  1.0 for handling_share or flatness turns that test off in practice: only a window
# whose energy is all in one frame, or a perfectly flat spectrum, reaches it.
QUALITY_LIMITS = (("silence_dbfs", -200.0, 0.0, "dBFS"), ("clip_level", 0.5, 1.0, "of full scale"),
                  ("clip_fraction", 0.0, 1.0, "of the samples"), ("handling_share", 0.0, 1.0, "of the energy"),
                  ("flatness", 0.0, 1.0, ""), ("frame_s", 0.005, 1.0, "s"))
_EXCLUSIVE_LOW = ("clip_fraction", "handling_share", "flatness")


def quality_limit_problem(name, value):
    """Why ``value`` cannot be the gate's ``name`` threshold (a sentence without the name), or None."""
    for field, low, high, unit in QUALITY_LIMITS:
        if field == name:
            number = not isinstance(value, bool) and isinstance(value, numbers.Real)
            above = number and (value > low if name in _EXCLUSIVE_LOW else value >= low)
            if not (above and value <= high):
                span = ("above %g and at most %g" if name in _EXCLUSIVE_LOW else "%g..%g") % (low, high)
                return "%r: must be %s%s" % (value, span, " " + unit if unit else "")
            return None
    raise KeyError(name)


class QualityGateConfig(Record):
    """The signal-quality gate's thresholds for this kind of sound (deploy_jetson/quality.py applies them).

    ``silence_dbfs``: RMS (dB re full scale) below which a window is 'no signal'; ``clip_level`` (fraction of
    full scale) and ``clip_fraction`` (fraction of samples at or above it): 'clipping'; ``handling_share``:
    share of the window's energy in one ``frame_s``-second frame at or above which it is 'handling' (a
    thump); ``flatness``: in-band spectral flatness at or above which it is 'rubbing'.  The defaults are the
    heart's; each preset stores its own (why: the preset functions and deploy_jetson/quality.py).
    """
    FIELDS = (
        ("silence_dbfs", -60.0),
        ("clip_level", 0.99),
        ("clip_fraction", 0.02),
        ("handling_share", 0.75),
        ("flatness", 0.45),
        ("frame_s", 0.1),
    )

    def validate(self):
        for name, _ in self.FIELDS:
            problem = quality_limit_problem(name, getattr(self, name))
            if problem:
                raise ConfigError("quality.%s %s" % (name, problem))


class Contract(Record):
    """Everything that decides the image a piece of audio becomes, and which windows are worth one.

    ``name``: the preset it came from (informative); ``conditioning``,
    ``segmentation``, ``spectrogram``: the three stages.  The sample rate is
    the spectrogram's (``contract.sample_rate``).  ``quality``: the gate's
    thresholds (:class:`QualityGateConfig`); added later, so left out of the
    dict at its default (the heart's) and every contract stored before keeps
    its dict and hash, and the gate it had.
    """
    FIELDS = (
        ("name", "custom"),
        ("conditioning", ConditioningConfig()),
        ("segmentation", SegmentationConfig()),
        ("spectrogram", SpectrogramConfig()),
        ("quality", QualityGateConfig()),
    )
    NESTED = {"conditioning": ConditioningConfig, "segmentation": SegmentationConfig,
              "spectrogram": SpectrogramConfig, "quality": QualityGateConfig}
    OMITTED_AT_DEFAULT = ("quality",)

    def validate(self):
        for name, kind in self.NESTED.items():
            if not isinstance(getattr(self, name), kind):
                raise ConfigError("contract.%s must be a %s" % (name, kind.__name__))
        rate = self.sample_rate
        highpass = self.conditioning.highpass_hz
        if highpass is not None and highpass >= rate / 2.0:
            raise ConfigError("conditioning.highpass_hz %.1f Hz is above Nyquist at %d Hz" % (highpass, rate))
        if int(round(self.segmentation.window_s * rate)) < self.spectrogram.n_fft // 2:
            raise ConfigError("segmentation.window_s %.3f s is shorter than half an FFT frame"
                              % self.segmentation.window_s)

    @property
    def sample_rate(self):
        """Sample rate (Hz) the audio must have before segmentation."""
        return self.spectrogram.sample_rate

    @property
    def size(self):
        """R: images are R×R and the network input is [1, 3, R, R]."""
        return self.spectrogram.size

    @property
    def palette(self):
        """uint8 256×3: the colour of each spectrogram level (the spectrogram's colormap, read-only)."""
        return lookup_table(self.spectrogram.colormap)

    @property
    def segment_samples(self):
        """Length of every segment in samples."""
        return int(round(self.segmentation.window_s * self.sample_rate))

    def with_size(self, size):
        """The same contract for R×R images, every other number kept (the STFT hop too: a preset at
        another R is ``preset(name, size=R)``, whose hop follows R)."""
        return self.replace(spectrogram=self.spectrogram.replace(size=int(size)))


def contract_differences(old, new, prefix=""):
    """What differs between two contracts (or their dicts): ['spectrogram.hop_length 20 → 93', ...], for
    error messages that say why a dataset and a model, or two datasets, do not match."""
    if isinstance(old, Contract):
        old = old.to_dict()
    if isinstance(new, Contract):
        new = new.to_dict()
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else ["%s %r → %r" % (prefix.rstrip(".") or "contract", old, new)]
    changes = []
    for key in sorted(set(old) | set(new)):
        changes.extend(contract_differences(old.get(key), new.get(key), "%s%s." % (prefix, key)))
    return changes


def segments(samples, contract, spans=None):
    """Cut audio (at ``contract.sample_rate``) into the contract's fixed-length segments."""
    return segment(samples, contract.sample_rate, contract.segmentation, spans)


def render_segment_levels(samples, contract):
    """One segment (``contract.segment_samples`` long) → its uint8 R×R colour-table levels.

    The single function that training preparation, the render CLI and the live
    service all call; :func:`render_segment` colours its result with ``contract.palette``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size != contract.segment_samples:
        raise ConfigError("segment has %d samples, the contract wants %d (%.3f s at %d Hz)"
                          % (samples.size, contract.segment_samples, contract.segmentation.window_s,
                             contract.sample_rate))
    conditioned = condition(samples, contract.sample_rate, contract.conditioning)
    return render_levels(conditioned, contract.spectrogram)


def render_segment(samples, contract):
    """One segment (``contract.segment_samples`` long) → its uint8 R×R×3 image (levels through the palette)."""
    return colour(render_segment_levels(samples, contract), contract.spectrogram)


# ---------------------------------------------------------------------------------------------
# Presets. Each documents where its numbers come from.

def frame_hop(finest_hop, segment_samples, size, n_fft):
    """The STFT hop (samples) of a preset: ``finest_hop``, or one frame per image column where that is coarser.

    ``max(finest_hop, min(segment_samples // size, n_fft // 2))``: a segment of ``segment_samples`` drawn
    ``size`` columns wide gets about one frame per column (never fewer frames than columns: 1 + n // hop ≥
    size + 1), and frames keep at least half their length in common, so every sample is seen by two.
    Finer frames would be averaged together by the resize anyway (3 s at the heart preset's 10 ms hop are
    301 frames: 2.35 per column at R=128, 4.7 at R=64), and they are the bulk of rendering's cost: the
    FFTs, the dB and the resize all scale with the frame count.
    """
    return max(int(finest_hop), min(int(round(segment_samples)) // int(size), int(n_fft) // 2))


def heart(size=224, window_s=3.0):
    """Heart sounds (PCG).

    - 2000 Hz: the PhysioNet/CinC 2016 recordings are 2 kHz, and S1/S2 and
      most murmur energy lie below 600 Hz (Liu et al. 2016; Springer et al.
      2016 use 25–400 Hz for segmentation).  Yaseen's 8 kHz clips are resampled.
    - Band-pass 25–800 Hz: removes DC drift and sub-audible thumps, keeps the
      murmur band (systolic murmurs reach 500–700 Hz); peak normalisation.
    - 3 s windows every 1.5 s (about three cardiac cycles at 60–80 bpm; short
      clips are wrapped, since heart sounds are periodic).
    - n_fft 256 (128 ms): 7.8 Hz bins; hop 10 ms, or one frame per image
      column where that is coarser (:func:`frame_hop`: 26 samples at R=224,
      46 at R=128, 93 at R=64), resolving S1/S2 in time.
      Linear axis 0–800 Hz, 80 dB range relative to the loudest cell.
    - Quality gate: the defaults of :class:`QualityGateConfig` (measured on PhysioNet and Yaseen: see
      deploy_jetson/quality.py).
    """
    rate = 2000
    hop = frame_hop(20, window_s * rate, size, 256)
    return Contract(
        name="heart",
        conditioning=ConditioningConfig(remove_dc=True, highpass_hz=25.0, lowpass_hz=800.0,
                                        transition_hz=20.0, normalize="peak", target=0.9),
        segmentation=SegmentationConfig(mode="window", window_s=window_s, hop_s=1.5, pad="wrap",
                                        min_duration_s=1.0, peak_lowpass_hz=1000.0, peak_smooth_s=0.05),
        spectrogram=SpectrogramConfig(sample_rate=rate, n_fft=256, hop_length=hop,
                                      window="hann", scale="linear", fmin=0.0, fmax=800.0, top_db=80.0,
                                      normalization="max", colormap="viridis", size=size),
    )


def lung(size=224, window_s=8.0):
    """Lung sounds, as in the ICBHI 2017 literature.

    - 4000 Hz and n_fft 256 (64 ms): the ICBHI respiratory-sound papers
      (e.g. the ResNet+CBAM work on ICBHI) resample to 4 kHz and use a
      256-point STFT; adventitious sounds lie in 100–2000 Hz (Rocha et al. 2019).
    - Band-pass 50–1900 Hz removes heart-sound and handling energy below 50 Hz.
    - 8 s segments: cycles padded/cropped to 8 s (Gairola et al. 2021 use 8 s,
      the 95th percentile of cycle length); live windows 8 s every 2 s.
    - hop 64 (16 ms), or one frame per image column where that is coarser
      (:func:`frame_hop`: 128 samples, half a frame, from R=250 down); mel, 128 bands 50–2000 Hz; 80 dB range.
    - Quality gate: the heart's thresholds; every 8 s window of the ICBHI sample passes (at most 60 % of the
      energy in one 100 ms frame, in-band flatness at most 0.01).
    """
    rate = 4000
    hop = frame_hop(64, window_s * rate, size, 256)
    return Contract(
        name="lung",
        conditioning=ConditioningConfig(remove_dc=True, highpass_hz=50.0, lowpass_hz=1900.0,
                                        transition_hz=40.0, normalize="peak", target=0.9),
        segmentation=SegmentationConfig(mode="window", window_s=window_s, hop_s=2.0, pad="wrap",
                                        min_duration_s=0.5, peak_lowpass_hz=1000.0, peak_smooth_s=0.05),
        spectrogram=SpectrogramConfig(sample_rate=rate, n_fft=256, hop_length=hop,
                                      window="hann", scale="mel", n_mels=128, fmin=50.0, fmax=2000.0, top_db=80.0,
                                      normalization="max", colormap="viridis", size=size),
    )


def vascular(size=224, window_s=1.0):
    """Vascular sounds (e.g. arteriovenous-fistula bruits), the peak-cut method.

    - 22050 Hz capture, 1 kHz low-pass: bruit energy lies below 1 kHz; the
      published AVF-bruit pipelines low-pass at 1 kHz, take a moving-average
      envelope, find the pulse peaks and cut one cycle between consecutive peaks.
    - Cycles fitted to 1.0 s (a pulse at 60 bpm); live windows 1 s every 0.5 s.
    - n_fft 2048 (93 ms, 10.8 Hz bins), hop 220 (10 ms; :func:`frame_hop` keeps it
      up to R=100); linear 0–1000 Hz.
    - Quality gate: the heart's thresholds.  A bruit is turbulent noise, but coloured: pulsatile band noise
      (tests/test_quality_gate.py) has in-band flatness 0.32-0.41, below 0.45, while white (rubbing) noise
      in the 0-1000 Hz band of a 1 s cycle has 0.52-0.6.
    """
    rate = 22050
    hop = frame_hop(220, window_s * rate, size, 2048)
    return Contract(
        name="vascular",
        conditioning=ConditioningConfig(remove_dc=True, highpass_hz=None, lowpass_hz=1000.0,
                                        transition_hz=100.0, normalize="peak", target=0.9),
        segmentation=SegmentationConfig(mode="peaks", window_s=window_s, hop_s=0.5, pad="wrap",
                                        min_duration_s=2.0, peak_lowpass_hz=1000.0, peak_smooth_s=0.05),
        spectrogram=SpectrogramConfig(sample_rate=rate, n_fft=2048, hop_length=hop,
                                      window="hann", scale="linear", fmin=0.0, fmax=1000.0, top_db=80.0,
                                      normalization="max", colormap="viridis", size=size),
    )


def cough(size=224, window_s=1.0):
    """Cough sounds.

    - 16 kHz, 64 mel bands 50–8000 Hz, n_fft 512 (32 ms), hop 160 (10 ms):
      the usual speech-style front end of the COVID-19 cough corpora
      (Coswara, COUGHVID baselines).
    - High-pass 50 Hz; 1 s windows every 0.5 s (a cough lasts 0.3–1 s).
    - :func:`frame_hop` keeps the 10 ms hop up to R=100.
    - Quality gate: a cough puts most of a window's energy into one burst by nature (the explosive phase,
      30-50 ms, then a decay over 0.2-0.3 s: 81-90 % of a 1 s window in one 100 ms frame for the synthetic
      coughs of tests/test_quality_gate.py), so the heart's 'handling' test (75 % in one 100 ms frame)
      rejected real coughs.  Here it looks at 10 ms frames: a cough puts at most 29 % in one, a tap or click
      (2-20 ms) at least 49 % (half of it when it straddles two frames), so 45 % flags handling.  Silence,
      clipping and the flatness test keep the heart's values (a cough's flatness is far below 0.45).
    """
    rate = 16000
    hop = frame_hop(160, window_s * rate, size, 512)
    return Contract(
        name="cough",
        conditioning=ConditioningConfig(remove_dc=True, highpass_hz=50.0, lowpass_hz=None,
                                        transition_hz=40.0, normalize="peak", target=0.9),
        segmentation=SegmentationConfig(mode="window", window_s=window_s, hop_s=0.5, pad="zero",
                                        min_duration_s=0.3, peak_lowpass_hz=1000.0, peak_smooth_s=0.05),
        spectrogram=SpectrogramConfig(sample_rate=rate, n_fft=512, hop_length=hop,
                                      window="hann", scale="mel", n_mels=64, fmin=50.0, fmax=8000.0, top_db=80.0,
                                      normalization="max", colormap="viridis", size=size),
        quality=QualityGateConfig(handling_share=0.45, frame_s=0.01),
    )


PRESETS = {"heart": heart, "lung": lung, "vascular": vascular, "cough": cough}


def preset(name, size=None, window_s=None):
    """The contract of preset ``name`` (heart, lung, vascular, cough) for R×R images (``size``, default 224)
    of ``window_s``-second segments (default: the preset's); the STFT hop follows both (:func:`frame_hop`).

    ``contract.with_size(R)`` changes R alone and keeps the hop; this chooses the hop for R.
    """
    if name not in PRESETS:
        raise ConfigError("unknown preset %r; choose one of %s" % (name, ", ".join(sorted(PRESETS))))
    options = {}
    if size is not None:
        options["size"] = int(size)
    if window_s is not None:
        options["window_s"] = float(window_s)
    return PRESETS[name](**options)


def segment_filename(recording, index):
    """File name of segment ``index`` of ``recording``: '<recording>__<index:04d>.png' (recording id first)."""
    return "%s__%04d.png" % (recording, index)

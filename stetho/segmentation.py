"""Cut a recording into fixed-length pieces: sliding windows, annotated cycles, peak-cut cycles.

Every function takes float audio and its rate (Hz) and returns a list of
:class:`Segment` (offset in samples into the input, the samples, and whether
they were padded).  Each segment's samples are exactly ``length`` samples long,
padded or cropped by the policy ``pad``:

- ``'wrap'``: repeat the piece cyclically (natural for periodic body sounds),
- ``'zero'``: append zeros,
- ``'edge'``: centre the piece and pad both sides with zeros.

Cropping keeps the start of the piece.
"""
import collections
import numbers

import numpy as np

from .conditioning import design_lowpass, envelope, fir_filter, remove_dc
from .errors import ConfigError
from .records import Record

PAD_POLICIES = ("wrap", "zero", "edge")
MODES = ("window", "cycles", "peaks", "whole")
# (field, lowest, highest) in seconds, checked by SegmentationConfig.validate (NaN fails every comparison).  A
# piece is 0.1 s (a cough's burst) to 60 s (longer ones are no longer one image's worth: 60 s at the cough
# preset's 16 kHz is ~1 M samples a window); the hop is at least 10 ms (finer would render the same audio 100 times
# a second) and may exceed the window ('peaks' seeks cycles every hop_s; bench/accuracy.py cuts 1.5 s cycles
# sought every 3 s).
SECONDS_LIMITS = (("window_s", 0.1, 60.0), ("hop_s", 0.01, 60.0), ("min_duration_s", 0.0, 3600.0))

Segment = collections.namedtuple("Segment", "offset samples padded")
Segment.__doc__ = "A fixed-length piece of a recording: offset (samples into the source), samples, padded (bool)."


def fit_length(x, length, pad="wrap"):
    """Pad or crop ``x`` to exactly ``length`` samples by the policy ``pad``. Returns (array, padded)."""
    x = np.asarray(x, dtype=np.float32)
    if pad not in PAD_POLICIES:
        raise ConfigError("pad policy must be one of %s, not %r" % (PAD_POLICIES, pad))
    if length <= 0:
        raise ConfigError("segment length must be positive, not %d samples" % length)
    if x.size >= length:
        return x[:length].copy(), False
    if x.size == 0:
        return np.zeros(length, dtype=np.float32), True
    if pad == "wrap":
        reps = int(np.ceil(length / float(x.size)))
        return np.tile(x, reps)[:length].copy(), True
    out = np.zeros(length, dtype=np.float32)
    start = 0 if pad == "zero" else (length - x.size) // 2
    out[start:start + x.size] = x
    return out, True


def fixed_windows(x, rate, window_s, hop_s, pad="wrap"):
    """Windows of ``window_s`` seconds every ``hop_s`` seconds from the start.

    Only whole windows are returned, except that a recording shorter than one
    window gives one window padded by ``pad`` (the live service does the
    same when a stream ends before its first window is full).
    """
    length = int(round(window_s * rate))
    hop = int(round(hop_s * rate))
    if length <= 0 or hop <= 0:
        raise ConfigError("window_s and hop_s must give at least one sample (%.4f s, %.4f s at %d Hz)"
                          % (window_s, hop_s, rate))
    x = np.asarray(x, dtype=np.float32)
    if x.size < length:
        samples, padded = fit_length(x, length, pad)
        return [Segment(0, samples, padded)]
    return [Segment(start, x[start:start + length].copy(), False)
            for start in range(0, x.size - length + 1, hop)]


def whole(x, rate, window_s, pad="wrap"):
    """The whole recording as one segment of ``window_s`` seconds (cropped or padded)."""
    samples, padded = fit_length(x, int(round(window_s * rate)), pad)
    return [Segment(0, samples, padded)]


def annotated_cycles(x, rate, spans, length_s, pad="wrap"):
    """Cut the annotated ``spans`` ([(start_s, end_s), ...]) and fit each to ``length_s`` seconds.

    Spans that fall outside the recording are clipped to it; spans left empty
    are skipped.
    """
    x = np.asarray(x, dtype=np.float32)
    length = int(round(length_s * rate))
    out = []
    for start_s, end_s in spans:
        start = max(0, int(round(start_s * rate)))
        end = min(x.size, int(round(end_s * rate)))
        if end <= start:
            continue
        samples, padded = fit_length(x[start:end], length, pad)
        out.append(Segment(start, samples, padded))
    return out


def estimate_period(env, rate, min_period_s=0.4, max_period_s=2.0):
    """Dominant repetition period (s) of an envelope, from its autocorrelation.

    The search starts at ``min_period_s`` so that, in heart sounds, the S1–S2
    interval (systole, ~0.3 s) is not mistaken for the cardiac cycle.
    Returns None when the envelope is too short or flat.
    """
    env = np.asarray(env, dtype=np.float64)
    env = env - env.mean()
    lo, hi = int(min_period_s * rate), int(max_period_s * rate)
    if env.size < 2 * lo or not np.any(env):
        return None
    nfft = 1 << int(np.ceil(np.log2(2 * env.size)))
    spectrum = np.fft.rfft(env, nfft)
    corr = np.fft.irfft(spectrum * np.conj(spectrum), nfft)[:env.size]
    corr /= corr[0]
    hi = min(hi, env.size - 1)
    if hi <= lo:
        return None
    return (lo + int(np.argmax(corr[lo:hi + 1]))) / float(rate)


def find_peaks(env, min_distance, threshold):
    """Indices of local maxima of ``env`` above ``threshold``, at least ``min_distance`` apart.

    Greedy by height (the tallest survives), like scipy's ``find_peaks`` with
    ``distance=``.  Returns sorted indices.
    """
    env = np.asarray(env, dtype=np.float64)
    if env.size < 3:
        return np.zeros(0, dtype=np.int64)
    interior = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > threshold)
    candidates = np.flatnonzero(interior) + 1
    order = candidates[np.argsort(-env[candidates], kind="mergesort")]
    kept = []
    taken = np.zeros(env.size, dtype=bool)
    for index in order:
        if taken[index]:
            continue
        kept.append(index)
        taken[max(0, index - min_distance + 1):index + min_distance] = True
    return np.array(sorted(kept), dtype=np.int64)


def cycle_peaks(x, rate, lowpass_hz=1000.0, smooth_s=0.05, min_period_s=0.4, max_period_s=2.0, threshold=0.25,
                relative_height=0.4):
    """Sample indices (sorted, int64) of the envelope peaks that start cardiac or pulse cycles.

    1. low-pass at ``lowpass_hz`` (skipped when at or above 95% of Nyquist),
    2. moving-average envelope of |x| over ``smooth_s`` seconds, scaled to its 99th percentile,
    3. cycle period from the envelope's autocorrelation; peaks at least 0.8 period apart
       and above ``threshold`` (so S2 is not taken for the next S1); peaks lower than
       ``relative_height`` × the median peak are dropped (a lone S3 or click at an edge).

    Every step but the scaling, the period and the median is local (a few tens of ms around a peak), so a
    stretch of a recording gives its interior peaks where the whole recording does while its rhythm and level
    are steady (what the live service's :class:`deploy_jetson.sources.PeakCycler` relies on).
    """
    y = remove_dc(x)
    if lowpass_hz is not None and lowpass_hz < 0.95 * rate / 2.0:
        y = fir_filter(y, design_lowpass(lowpass_hz, rate, max(10.0, lowpass_hz / 10.0)))
    env = envelope(y, rate, smooth_s)
    scale = np.percentile(env, 99) if env.size else 0.0
    if scale <= 0:
        return np.zeros(0, dtype=np.int64)
    env = env / scale
    period = estimate_period(env, rate, min_period_s, max_period_s)
    min_distance = int(0.8 * (period if period else min_period_s) * rate)
    peaks = find_peaks(env, max(1, min_distance), threshold)
    if peaks.size:
        peaks = peaks[env[peaks] >= relative_height * np.median(env[peaks])]
    return peaks


def peak_cut_cycles(x, rate, length_s, pad="wrap", lowpass_hz=1000.0, smooth_s=0.05,
                    min_period_s=0.4, max_period_s=2.0, threshold=0.25, relative_height=0.4):
    """Cycles cut between consecutive envelope peaks (the vascular-sound method; works for hearts).

    The peaks are :func:`cycle_peaks`'; one cycle runs from each peak to the next, fitted to ``length_s``
    seconds by ``pad``.  Returns [] when fewer than two peaks are found.
    """
    peaks = cycle_peaks(x, rate, lowpass_hz, smooth_s, min_period_s, max_period_s, threshold, relative_height)
    length = int(round(length_s * rate))
    x = np.asarray(x, dtype=np.float32)
    out = []
    for start, end in zip(peaks[:-1], peaks[1:]):
        samples, padded = fit_length(x[start:end], length, pad)
        out.append(Segment(int(start), samples, padded))
    return out


class SegmentationConfig(Record):
    """How a recording is cut into the fixed-length pieces that become images.

    ``mode``: 'window' (sliding windows), 'cycles' (annotated start/end spans),
    'peaks' (peak-cut cycles) or 'whole'.  The live service cuts 'window' and
    'peaks' as training did; it has no annotations, so it cuts 'cycles' and
    'whole' into sliding windows of the same length.
    ``window_s``: the length (s) of every piece whatever the mode; ``hop_s``:
    the window step (s); ``pad``: pad policy for short pieces; ``peak_*``:
    parameters of :func:`peak_cut_cycles`; ``min_duration_s``: recordings
    shorter than this are rejected as too short.
    """
    FIELDS = (
        ("mode", "window"),
        ("window_s", 3.0),
        ("hop_s", 1.5),
        ("pad", "wrap"),
        ("min_duration_s", 0.5),
        ("peak_lowpass_hz", 1000.0),
        ("peak_smooth_s", 0.05),
    )

    def validate(self):
        if self.mode not in MODES:
            raise ConfigError("segmentation.mode must be one of %s, not %r" % (MODES, self.mode))
        if self.pad not in PAD_POLICIES:
            raise ConfigError("segmentation.pad must be one of %s, not %r" % (PAD_POLICIES, self.pad))
        for name, low, high in SECONDS_LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
                raise ConfigError("segmentation.%s %r is outside %g..%g s" % (name, value, low, high))


def segment(x, rate, config, spans=None):
    """Cut ``x`` by ``config`` (a SegmentationConfig). ``spans`` are needed for mode 'cycles'."""
    if config.mode == "window":
        return fixed_windows(x, rate, config.window_s, config.hop_s, config.pad)
    if config.mode == "whole":
        return whole(x, rate, config.window_s, config.pad)
    if config.mode == "cycles":
        if spans is None:
            raise ConfigError("segmentation mode 'cycles' needs annotated spans")
        return annotated_cycles(x, rate, spans, config.window_s, config.pad)
    return peak_cut_cycles(x, rate, config.window_s, config.pad, config.peak_lowpass_hz, config.peak_smooth_s)


def segment_unannotated(x, rate, config):
    """Cut audio that has no annotations (a file on the device, the microphone): ``(segments, note)``.

    :func:`segment` for the modes that need none ('window', 'peaks', 'whole'); 'cycles' (annotated spans)
    falls back to sliding windows of the same length and hop, and ``note`` says so (None otherwise).
    """
    if config.mode != "cycles":
        return segment(x, rate, config), None
    return fixed_windows(x, rate, config.window_s, config.hop_s, config.pad), windows_instead(config)


def windows_instead(config):
    """The note for audio cut into sliding windows although ``config`` (mode 'cycles' or 'whole') was trained
    on other pieces: what the model saw, and the windows it gets instead."""
    trained_on = "annotated cycles" if config.mode == "cycles" else "whole recordings"
    return ("the model was trained on %s (segmentation.mode %r), which this audio does not have: it is cut into "
            "%.2f s windows every %.2f s instead" % (trained_on, config.mode, config.window_s, config.hop_s))

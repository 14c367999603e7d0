"""Signal conditioning with numpy alone: DC removal, FIR filters, normalisation, envelopes.

All functions are pure: they take a 1-D array (and the sample rate in Hz where
frequencies are involved) and return a new float64 array of the same length.
Filters are linear-phase windowed-sinc FIRs applied with zero delay, so an
event keeps its time position after filtering.
"""
import numpy as np

from .records import Record
from .errors import ConfigError

NORMALIZATIONS = ("peak", "rms", "none")
_EPS = 1e-12


def remove_dc(x):
    """Subtract the mean. Returns float64."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean() if x.size else x.copy()


def _taps_for(rate, transition_hz):
    """Odd number of Hamming-window taps for a transition band of ``transition_hz``."""
    n = int(np.ceil(3.3 * rate / float(transition_hz)))
    return n + 1 - n % 2


def design_lowpass(cutoff_hz, rate, transition_hz):
    """Windowed-sinc (Hamming) low-pass FIR taps.

    ``cutoff_hz`` is the -6 dB point, ``transition_hz`` the width of the
    transition band; the tap count is ``~3.3 * rate / transition_hz`` (odd).
    Unity gain at DC.  Returns float64 taps.
    """
    nyquist = rate / 2.0
    if not 0 < cutoff_hz < nyquist:
        raise ConfigError("low-pass cut-off %.1f Hz must lie in (0, %.1f) Hz at %d Hz"
                          % (cutoff_hz, nyquist, rate))
    n = _taps_for(rate, transition_hz)
    t = np.arange(n) - (n - 1) / 2.0
    taps = np.sinc(2.0 * cutoff_hz / rate * t) * np.hamming(n)
    return taps / taps.sum()


def design_highpass(cutoff_hz, rate, transition_hz):
    """High-pass FIR by spectral inversion of :func:`design_lowpass`. Zero gain at DC."""
    taps = -design_lowpass(cutoff_hz, rate, transition_hz)
    taps[len(taps) // 2] += 1.0
    return taps


def design_bandpass(low_hz, high_hz, rate, transition_hz):
    """Band-pass FIR: high-pass at ``low_hz`` convolved with low-pass at ``high_hz``."""
    if not low_hz < high_hz:
        raise ConfigError("band-pass needs low < high (got %.1f–%.1f Hz)" % (low_hz, high_hz))
    return np.convolve(design_highpass(low_hz, rate, transition_hz),
                       design_lowpass(high_hz, rate, transition_hz))


def fir_filter(x, taps):
    """Apply odd-length linear-phase FIR ``taps`` with zero delay.

    The signal is extended by reflection at both ends (so edges do not ring
    against an implied zero) and the output has the length of ``x``.  Short
    products use direct convolution, long ones FFT convolution; the choice
    depends only on the lengths, so equal inputs always give equal outputs.
    """
    x = np.asarray(x, dtype=np.float64)
    taps = np.asarray(taps, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    half = len(taps) // 2
    padded_size = x.size + 2 * half
    if padded_size * taps.size <= 4000000:
        return np.convolve(_reflect_pad(x, half), taps, mode="valid")
    n = padded_size + taps.size - 1
    nfft = 1 << (n - 1).bit_length()  # the power of two ≥ n, in integers
    # the padded signal written straight into the transform buffer, zeros after it: rfft(padded, nfft) pads
    # with zeros to nfft itself, so the numbers are the same, with one signal-sized copy fewer
    buffer = np.empty(nfft)
    _reflect_pad(x, half, out=buffer[:padded_size])
    buffer[padded_size:] = 0.0
    spectrum = np.fft.rfft(buffer)
    spectrum *= _taps_spectrum(taps, nfft)
    return np.fft.irfft(spectrum, nfft)[taps.size - 1:taps.size - 1 + x.size]


_SPECTRA = {}
_SPECTRA_OF_ARRAY = {}


def _taps_spectrum(taps, nfft):
    """``rfft(taps, nfft)``, cached by value: the live service filters every window with the same taps.

    The taps of :func:`filter_taps` are one cached read-only array, found by identity first (no 5 kB key to
    copy and hash per window); other arrays by their bytes.
    """
    known = _SPECTRA_OF_ARRAY.get((nfft, id(taps)))
    if known is not None and known[0] is taps:
        return known[1]
    key = (nfft, taps.tobytes())
    if key not in _SPECTRA:
        if len(_SPECTRA) >= 16:
            _SPECTRA.clear()
        spectrum = np.fft.rfft(taps, nfft)
        spectrum.setflags(write=False)
        _SPECTRA[key] = spectrum
    if not taps.flags.writeable:  # a writeable array could change under the same identity
        if len(_SPECTRA_OF_ARRAY) >= 16:
            _SPECTRA_OF_ARRAY.clear()
        _SPECTRA_OF_ARRAY[(nfft, id(taps))] = (taps, _SPECTRA[key])  # holds taps: its id stays its own
    return _SPECTRA[key]


def _reflect_pad(x, width, out=None):
    """Pad by odd reflection about each end; repeats the reflection for very short x.

    ``out``: a float64 array of ``x.size + 2 * width`` to write the result into (returned).
    """
    n = x.size
    if out is None:
        out = np.empty(n + 2 * width)
    if width == 0:
        out[...] = x
    elif n == 1:
        out.fill(x[0])
    elif width < n:  # one reflection each side, written straight into the result
        out[width:width + n] = x
        np.subtract(2 * x[0], x[width:0:-1], out=out[:width])
        np.subtract(2 * x[-1], x[-2:-width - 2:-1], out=out[width + n:])
    else:
        grown = x
        while (grown.size - n) // 2 < width:
            grow = min(width - (grown.size - n) // 2, grown.size - 1)
            left = 2 * grown[0] - grown[1:grow + 1][::-1]
            right = 2 * grown[-1] - grown[-grow - 1:-1][::-1]
            grown = np.concatenate([left, grown, right])
        out[...] = grown
    return out


def _level(x, normalize):
    """What normalisation scales to its target: max |x| ('peak') or the root-mean-square ('rms'); 0 if empty."""
    if not x.size:
        return 0.0
    if normalize == "peak":  # max |x|, by the ufuncs' reductions (what .max() and .min() call, in fewer steps)
        return max(np.maximum.reduce(x, axis=None), -np.minimum.reduce(x, axis=None))
    return np.sqrt(np.mean(x * x))


def normalize_peak(x, target=0.9):
    """Scale so that max |x| equals ``target``. Silence (all zeros) stays silence."""
    x = np.asarray(x, dtype=np.float64)
    peak = _level(x, "peak")
    return x * (target / peak) if peak > _EPS else x.copy()


def normalize_rms(x, target=0.1):
    """Scale so that the root-mean-square equals ``target``. Silence stays silence."""
    x = np.asarray(x, dtype=np.float64)
    rms = _level(x, "rms")
    return x * (target / rms) if rms > _EPS else x.copy()


def moving_average(x, width):
    """Centred moving average over ``width`` samples (edges average what exists). Same length."""
    x = np.asarray(x, dtype=np.float64)
    width = max(1, int(width))
    if x.size == 0:
        return x.copy()
    cumulative = np.concatenate([[0.0], np.cumsum(x)])
    left = np.arange(x.size) - width // 2
    right = left + width
    left = np.clip(left, 0, x.size)
    right = np.clip(right, 0, x.size)
    return (cumulative[right] - cumulative[left]) / (right - left)


def envelope(x, rate, smooth_s=0.02):
    """Amplitude envelope: moving average of |x| over ``smooth_s`` seconds."""
    return moving_average(np.abs(np.asarray(x, dtype=np.float64)), int(round(smooth_s * rate)))


class ConditioningConfig(Record):
    """How a window of audio is conditioned before its spectrogram is drawn.

    Fields: ``remove_dc`` (bool); ``highpass_hz`` / ``lowpass_hz`` (Hz or
    None: a band-pass when both are set); ``transition_hz`` (filter transition
    width, Hz); ``normalize`` ('peak', 'rms' or 'none') and ``target`` (peak
    or RMS amplitude after normalisation).
    """
    FIELDS = (
        ("remove_dc", True),
        ("highpass_hz", None),
        ("lowpass_hz", None),
        ("transition_hz", 20.0),
        ("normalize", "peak"),
        ("target", 0.9),
    )

    def validate(self):
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError("conditioning.normalize must be one of %s, not %r" % (NORMALIZATIONS, self.normalize))
        for name in ("highpass_hz", "lowpass_hz"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError("conditioning.%s must be positive or null, not %r" % (name, value))
        if not self.transition_hz > 0:
            raise ConfigError("conditioning.transition_hz must be positive")
        if not self.target > 0:
            raise ConfigError("conditioning.target must be positive")


_TAPS_CACHE = {}


def filter_taps(config, rate):
    """The FIR taps ``config`` asks for at ``rate`` Hz, or None when it asks for no filter.

    A cut-off at or above 95% of Nyquist is dropped (the signal holds nothing
    there to remove).  Designs are cached (read-only arrays): the live service
    conditions every window with the same filter.
    """
    key = (config.highpass_hz, config.lowpass_hz, config.transition_hz, int(rate))
    if key not in _TAPS_CACHE:
        taps = _design_taps(config, rate)
        if taps is not None:
            taps.setflags(write=False)
        _TAPS_CACHE[key] = taps
    return _TAPS_CACHE[key]


def _design_taps(config, rate):
    high = config.lowpass_hz if config.lowpass_hz is not None and config.lowpass_hz < 0.95 * rate / 2.0 else None
    low = config.highpass_hz
    if low is not None and high is not None:
        return design_bandpass(low, high, rate, config.transition_hz)
    if low is not None:
        return design_highpass(low, rate, config.transition_hz)
    if high is not None:
        return design_lowpass(high, rate, config.transition_hz)
    return None


def condition(x, rate, config):
    """Condition one window: DC removal → FIR filter → normalisation. Returns a new float64 array.

    The same numbers as ``normalize_peak(fir_filter(remove_dc(x), taps), target)`` (or rms), computed
    in place on the window's own copy.
    """
    y = np.array(x, dtype=np.float64)
    if config.remove_dc and y.size:
        y -= np.add.reduce(y) / y.size  # y.mean()'s numbers: its sum over its count, in one call fewer
    taps = filter_taps(config, rate)
    if taps is not None:
        y = fir_filter(y, taps)
    if config.normalize in ("peak", "rms"):
        level = _level(y, config.normalize)
        if level > _EPS:
            y *= config.target / level
    return y

"""The one spectrogram function of the contract: audio → uint8 R×R×3 image.

``render(samples, config)`` is used by training-set preparation on the
workstation and by the live service on the Jetson; the same samples give the
same bytes on both.  Steps (all numpy, float64):

1. STFT power: frames of ``win_length`` samples every ``hop_length``, periodic
   window, zero-padded by ``n_fft // 2`` at both ends (centred frames),
   ``|rfft(frame, n_fft)|²``.
2. Frequency axis: linear bins between ``fmin`` and ``fmax``, or ``n_mels``
   triangular HTK-mel bands between them (unit peak).
3. Decibels: ``10·log10(max(P, 1e-10))``, plus ``band_gain_db[k]`` on frequency row
   ``k`` when the contract has band gains (a fixed equaliser: ``train_host/adapt.py``
   sets it so a new stethoscope's average spectrum matches the training data's);
   with ``equalize='median'`` each
   frequency row minus its median over the window's frames (a stethoscope's or
   a room's fixed colouring is the same in every frame, so it drops out; events
   that last less than half the window stay); then either relative to the
   image's maximum (``normalization='max'``: the loudest cell is 0 dB, robust
   to gain) or absolute (``'fixed'``: 0 dB = full-scale sine power ``ref_db``
   at the top), clipped to ``top_db`` below the top.
4. Resize to R×R in the dB domain, separably (time axis first): area averaging
   on an axis that shrinks, linear interpolation (half-pixel centres) on one
   that grows.  Only
   elementwise operations and cumulative sums: no BLAS, whose rounding may
   differ between machines.
5. Quantise to 0..255 (round half to even), put low frequencies at the bottom
   row, colour by a fixed lookup table.

Silence (no cell above 1e-10) gives an image of colour index 0.
"""
import numpy as np

from .colormaps import NAMES as COLORMAPS
from .colormaps import lookup_table
from .errors import AudioError, ConfigError
from .records import Record

AMIN = 1e-10
DB_PER_NEPER = 10.0 / np.log(10.0)  # decibels of power per natural-log unit: 10·log10(P) = DB_PER_NEPER·ln(P)
SCALES = ("linear", "mel")
WINDOWS = ("hann", "hamming")
NORMALIZATIONS = ("max", "fixed")
EQUALIZATIONS = ("none", "median")


class SpectrogramConfig(Record):
    """Every number that decides a spectrogram image.

    sample_rate (Hz) the audio must have; n_fft (samples); hop_length
    (samples); win_length (samples, None = n_fft); window ('hann' or
    'hamming', periodic); scale ('linear' or 'mel'); n_mels (bands, mel only);
    fmin / fmax (Hz, fmax None = Nyquist); top_db (dynamic range shown, dB);
    normalization ('max' or 'fixed'); ref_db (top of the range for 'fixed',
    dB re full scale); colormap (viridis, magma, inferno, gray); size (R: the
    image is R×R and the network input is R×R); equalize ('none' or 'median':
    subtract each frequency's median dB over the window, with 'max' only);
    band_gain_db (None, or one gain in dB per frequency row before the resize: the
    kept linear bins from fmin to fmax, or the n_mels bands; |gain| ≤ 40 dB).
    """
    FIELDS = (
        ("sample_rate", 2000),
        ("n_fft", 256),
        ("hop_length", 20),
        ("win_length", None),
        ("window", "hann"),
        ("scale", "linear"),
        ("n_mels", 64),
        ("fmin", 0.0),
        ("fmax", None),
        ("top_db", 80.0),
        ("normalization", "max"),
        ("ref_db", 0.0),
        ("colormap", "viridis"),
        ("size", 224),
        ("equalize", "none"),
        ("band_gain_db", None),
    )
    # added later: contracts without them keep their dicts and hashes
    OMITTED_AT_DEFAULT = ("equalize", "band_gain_db")

    def validate(self):
        def need(condition, message):
            if not condition:
                raise ConfigError("spectrogram: " + message)
        need(isinstance(self.sample_rate, int) and self.sample_rate > 0, "sample_rate must be a positive integer")
        need(isinstance(self.n_fft, int) and self.n_fft >= 8, "n_fft must be an integer ≥ 8")
        need(isinstance(self.hop_length, int) and self.hop_length >= 1, "hop_length must be a positive integer")
        need(self.win_length is None or 1 <= self.win_length <= self.n_fft, "win_length must be in [1, n_fft]")
        need(self.window in WINDOWS, "window must be one of %s" % (WINDOWS,))
        need(self.scale in SCALES, "scale must be one of %s" % (SCALES,))
        need(self.normalization in NORMALIZATIONS, "normalization must be one of %s" % (NORMALIZATIONS,))
        need(self.colormap in COLORMAPS, "colormap must be one of %s" % (COLORMAPS,))
        need(isinstance(self.size, int) and 8 <= self.size <= 1024, "size must be an integer in [8, 1024]")
        need(self.top_db > 0, "top_db must be positive")
        need(0 <= self.fmin < self.max_frequency, "need 0 ≤ fmin < fmax ≤ Nyquist")
        need(self.max_frequency <= self.sample_rate / 2.0, "fmax must not exceed Nyquist")
        need(self.scale == "linear" or (isinstance(self.n_mels, int) and self.n_mels >= 2), "n_mels must be ≥ 2")
        need(self.equalize in EQUALIZATIONS, "equalize must be one of %s" % (EQUALIZATIONS,))
        need(self.equalize == "none" or self.normalization == "max",
             "equalize='median' needs normalization='max' (equalised levels have no absolute reference)")
        if self.band_gain_db is not None:
            gains = self.band_gain_db
            need(isinstance(gains, (list, tuple)) and all(
                isinstance(g, (int, float)) and not isinstance(g, bool) and -40.0 <= g <= 40.0 for g in gains),
                "band_gain_db must be a list of numbers within ±40 dB (NaN refused)")
            need(len(gains) == self.n_rows, "band_gain_db has %d gains for the %d frequency rows of this "
                 "spectrogram" % (len(gains), self.n_rows))

    @property
    def n_rows(self):
        """Frequency rows before the resize: the kept linear rfft bins (fmin ≤ f ≤ fmax), or n_mels."""
        if self.scale == "mel":
            return int(self.n_mels)
        bins = np.arange(self.n_fft // 2 + 1) * float(self.sample_rate) / self.n_fft
        return int(np.count_nonzero((bins >= self.fmin) & (bins <= self.max_frequency)))

    def row_frequencies(self):
        """Centre frequency (Hz) of each frequency row before the resize (low → high)."""
        if self.scale == "mel":
            edges = mel_to_hz(np.linspace(hz_to_mel(self.fmin), hz_to_mel(self.max_frequency), self.n_mels + 2))
            return edges[1:-1]
        bins = np.arange(self.n_fft // 2 + 1) * float(self.sample_rate) / self.n_fft
        return bins[(bins >= self.fmin) & (bins <= self.max_frequency)]

    @property
    def max_frequency(self):
        return self.sample_rate / 2.0 if self.fmax is None else float(self.fmax)


def window_function(name, length):
    """Periodic window (the DFT-even form used for spectral analysis)."""
    n = np.arange(length, dtype=np.float64)
    if name == "hann":
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(2.0 * np.pi * n / length)
    raise ConfigError("unknown window %r" % name)


_WINDOWS = {}
STFT_BLOCK_BYTES = 1 << 18  # frames transformed at a time: 256 KiB of complex spectrum (L2-sized)


def _padded_window(n_fft, win_length, window):
    """The ``win_length`` window centred in ``n_fft`` zeros (cached, read-only)."""
    key = (n_fft, win_length, window)
    if key not in _WINDOWS:
        win = np.zeros(n_fft)
        start = (n_fft - win_length) // 2
        win[start:start + win_length] = window_function(window, win_length)
        win.setflags(write=False)
        _WINDOWS[key] = win
    return _WINDOWS[key]


def stft_frames_power(samples, n_fft, hop_length, win_length=None, window="hann", n_bins=None):
    """``|STFT|²`` frame-major: shape (1 + len(samples) // hop_length, n_bins), bins 0..n_bins-1.

    The same numbers as :func:`stft_power` (which is its transpose), for the
    first ``n_bins`` frequency bins only (default: all ``n_fft // 2 + 1``).
    """
    x = np.asarray(samples, dtype=np.float64)
    win_length = n_fft if win_length is None else win_length
    win = _padded_window(n_fft, win_length, window)
    half = n_fft // 2
    n_frames = 1 + x.size // hop_length
    needed = (n_frames - 1) * hop_length + n_fft
    padded = np.zeros(max(needed, x.size + 2 * half))
    padded[half:half + x.size] = x
    # a view of the overlapping frames (what as_strided builds, in one call instead of several)
    frames = np.ndarray((n_frames, n_fft), dtype=np.float64, buffer=padded,
                        strides=(padded.itemsize * hop_length, padded.itemsize))
    n_bins = n_fft // 2 + 1 if n_bins is None else min(n_bins, n_fft // 2 + 1)
    power = np.empty((n_frames, n_bins))
    # In blocks of frames, so the windowed frames and their spectrum stay in the CPU's cache
    # (each frame's transform is independent: the numbers do not depend on the block size).
    block = max(1, STFT_BLOCK_BYTES // (16 * n_fft))
    for first in range(0, n_frames, block):
        spectrum = np.fft.rfft(frames[first:first + block] * win, n=n_fft, axis=1)[:, :n_bins]
        part = power[first:first + block]
        np.multiply(spectrum.real, spectrum.real, out=part)   # re² + im², as re ** 2 + im ** 2 computes it
        part += spectrum.imag * spectrum.imag
    return power


def stft_power(samples, n_fft, hop_length, win_length=None, window="hann"):
    """Power spectrogram ``|STFT|²``, shape (n_fft // 2 + 1, 1 + len(samples) // hop_length).

    Frames are centred: the signal is zero-padded by ``n_fft // 2`` on both
    sides, and the ``win_length`` window is centred inside each n_fft frame.
    """
    return stft_frames_power(samples, n_fft, hop_length, win_length, window).T


def hz_to_mel(hz):
    """HTK mel scale: 2595·log10(1 + f/700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax):
    """Triangular HTK-mel filters with unit peak, shape (n_mels, n_fft // 2 + 1)."""
    bins = np.arange(n_fft // 2 + 1) * float(sample_rate) / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def frequency_axis(power, config):
    """Select or pool frequency rows of a power spectrogram as ``config`` asks."""
    if config.scale == "mel":
        bank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.max_frequency)
        # one row at a time in a fixed order, so the sums do not go through BLAS
        return np.stack([(power * row[:, None]).sum(axis=0) for row in bank])
    bins = np.arange(power.shape[0]) * float(config.sample_rate) / config.n_fft
    keep = (bins >= config.fmin) & (bins <= config.max_frequency)
    return power[keep]


def to_db(power, config, time_axis=-1, overwrite=False):
    """Decibels in [-top_db, 0] relative to the top of the shown range (see module doc).

    ``time_axis``: the frames' axis of ``power`` (-1 for :func:`stft_power`'s (frequency, time), 0 for
    :func:`frames_power`'s (time, frequency)); only ``equalize='median'`` needs it.
    ``overwrite=True`` computes in ``power``'s own memory (a float64 array the caller no longer needs) and
    returns it: the same numbers, without a second spectrogram-sized array to allocate and fill.
    """
    db = np.maximum(power, AMIN, out=power if overwrite else None)
    # 10·log10(P) as (10 / ln 10)·ln(P), in place: equal to within a unit in the last place, and numpy 1.19
    # (the Nano's) has no vectorised log10: ln is 2.5× quicker there (numpy 2 vectorises both)
    np.log(db, out=db)
    db *= DB_PER_NEPER
    if config.band_gain_db is not None:
        gains = _band_gains(config)
        db += gains[None, :] if time_axis == 0 else gains[:, None]
    if config.equalize == "median":
        db -= np.median(db, axis=time_axis, keepdims=True)
    if config.normalization == "max":
        db -= np.maximum.reduce(db, axis=None)  # every value minus the largest is ≤ 0 (exactly, in floating point)
        return np.maximum(db, -config.top_db, out=db)  # so only the floor needs clipping
    db -= float(config.ref_db)
    np.maximum(db, -config.top_db, out=db)  # clipped to [-top_db, 0] by the two ufuncs np.clip amounts to
    return np.minimum(db, 0.0, out=db)     # (without its Python-level wrapper)


_GAINS = {}


def _band_gains(config):
    """config.band_gain_db as a read-only float64 array (cached: the same few numbers every window)."""
    key = tuple(config.band_gain_db)
    gains = _GAINS.get(key)
    if gains is None:
        if len(_GAINS) > 16:
            _GAINS.clear()
        gains = _GAINS[key] = np.array(key, dtype=np.float64)
        gains.setflags(write=False)
    return gains


_RESIZE_PLANS = {}


def _resize_plan(n_in, n_out):
    """Index and weight arrays of :func:`_resize_axis` for one (n_in, n_out), cached (they only depend on sizes)."""
    key = (n_in, n_out)
    if key not in _RESIZE_PLANS:
        if n_out < n_in:
            scale = n_in / float(n_out)
            edges = np.arange(n_out + 1) * scale
            whole = np.minimum(np.floor(edges).astype(np.int64), n_in)
            frac = edges - whole
            coefficient = np.where(whole < n_in, 1.0, 0.0) * frac
            plan = ("shrink", scale, whole, np.minimum(whole, n_in - 1), coefficient[:, None])
        else:
            position = (np.arange(n_out) + 0.5) * (n_in / float(n_out)) - 0.5
            position = np.clip(position, 0.0, n_in - 1.0)
            left = np.floor(position).astype(np.int64)
            right = np.minimum(left + 1, n_in - 1)
            weight = position - left
            plan = ("grow", left, right, (1.0 - weight)[:, None], weight[:, None])
        if len(_RESIZE_PLANS) > 64:
            _RESIZE_PLANS.clear()
        _RESIZE_PLANS[key] = plan
    return _RESIZE_PLANS[key]


def _resize_axis(values, n_out, axis):
    """Resize ``values`` along ``axis`` to ``n_out``: area average to shrink, linear to grow."""
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    return np.moveaxis(_resize_rows(values, n_out), 0, axis)


def _resize_rows(values, n_out):
    """:func:`_resize_axis` along axis 0 of a 2-D array (a new array; fastest when ``values`` is C-contiguous)."""
    n_in = values.shape[0]
    if n_in == n_out:
        return values.copy()
    plan = _resize_plan(n_in, n_out)  # per-position weights are (n_out, 1) columns: broadcast along a row
    if plan[0] == "shrink":
        _, scale, whole, nxt_index, coefficient = plan
        cumulative = np.empty((n_in + 1,) + values.shape[1:])
        cumulative[0] = 0.0
        np.add.accumulate(values, axis=0, out=cumulative[1:])  # what np.cumsum calls
        integral = cumulative[whole]
        partial = values[nxt_index]   # the products formed in place: the same numbers with fewer fresh arrays,
        partial *= coefficient        # whose memory is what costs right after inference (cold caches)
        integral += partial
        out = np.subtract(integral[1:], integral[:-1])
        out /= scale
    else:
        _, left, right, keep, weight = plan
        out = values[left]
        out *= keep
        partial = values[right]
        partial *= weight
        out += partial
    return out


def resize(matrix, height, width):
    """Deterministic resize of a 2-D float matrix to (height, width); see module doc.

    The time axis (columns) is resized first: spectrograms have fewer
    frequency rows than frames, so the second pass works on the smaller matrix.
    """
    return _resize_axis(_resize_axis(matrix, width, 1), height, 0)


_LINEAR_BINS = {}


def _linear_bins(config):
    """(first, stop) rfft bins of a linear axis: the contiguous run of bins with fmin ≤ f ≤ fmax (cached)."""
    key = (config.n_fft, config.sample_rate, config.fmin, config.max_frequency)
    if key not in _LINEAR_BINS:
        bins = np.arange(config.n_fft // 2 + 1) * float(config.sample_rate) / config.n_fft
        inside = np.flatnonzero((bins >= config.fmin) & (bins <= config.max_frequency))
        _LINEAR_BINS[key] = int(inside[0]), int(inside[-1]) + 1
    return _LINEAR_BINS[key]


def frames_power(samples, config):
    """Power on the config's frequency axis, frame-major: (frames, frequency rows low→high).

    Equal, number for number, to ``frequency_axis(stft_power(samples, ...), config).T``;
    the linear axis computes only the rfft bins it keeps.
    """
    if config.scale == "mel":
        power = stft_power(samples, config.n_fft, config.hop_length, config.win_length, config.window)
        return frequency_axis(power, config).T
    first, stop = _linear_bins(config)
    power = stft_frames_power(samples, config.n_fft, config.hop_length, config.win_length, config.window, stop)
    return power[:, first:stop]


def render_levels(samples, config):
    """The spectrogram as colour-table indices: uint8 (R, R), 0 = ``top_db`` below the top, 255 = the top.

    :func:`render` is ``lookup_table(config.colormap)[render_levels(samples, config)]``; the levels
    are what an indexed-colour PNG stores (see :func:`stetho.png.encode_png`).  Row 0 is the highest
    frequency.  Same parameters and errors as :func:`render`.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise AudioError("render needs a non-empty 1-D signal, got shape %s" % (samples.shape,))
    if not np.isfinite(np.add.reduce(samples)) and not np.all(np.isfinite(samples)):  # a NaN or Inf makes the sum one
        raise AudioError("render: the signal contains NaN or Inf")
    # Each resize runs along the rows of a C-contiguous array: frame-major (time, frequency) for the time
    # axis, then the small R × frequency result transposed for the frequency axis, which leaves the image
    # frequency-major as it is stored.  Every step is elementwise or a cumulative sum along one axis, so the
    # numbers are those of resize(to_db(frequency_axis(stft_power(...)))) exactly, whatever the layout.
    power = frames_power(samples, config)
    size = config.size
    if np.maximum.reduce(power, axis=None) <= AMIN:
        return np.zeros((size, size), dtype=np.uint8)
    by_time = _resize_rows(to_db(power, config, time_axis=0, overwrite=True), size)  # (R time, frequency)
    level = _resize_rows(by_time.T.copy(), size)                   # (R frequency low→high, R time)
    level += config.top_db                                          # (dB + top_db) / top_db · 255, in place
    level /= config.top_db
    level *= 255.0
    np.rint(level, out=level)           # np.round's numbers at 0 decimals (round half to even), by its ufunc
    np.maximum(level, 0, out=level)     # clipped to 0..255 as np.clip does
    np.minimum(level, 255, out=level)
    return level[::-1].astype(np.uint8)  # a new C-ordered array: low frequencies at the bottom


def render(samples, config):
    """Render mono audio at ``config.sample_rate`` into the R×R×3 uint8 image of the contract.

    Parameters
    ----------
    samples : array-like of float, shape (n,), n ≥ 1
        Audio in the config's sample rate (already conditioned and cut to the
        segment length by the caller; see :func:`stetho.contract.render_segment`).
    config : SpectrogramConfig

    Returns
    -------
    np.ndarray, uint8, shape (R, R, 3): row 0 is the highest frequency.
    """
    return colour(render_levels(samples, config), config)


def colour(levels, config):
    """uint8 levels (H, W) → the uint8 (H, W, 3) RGB image: each level through ``config.colormap``."""
    levels = np.asarray(levels)
    # uint8 levels cannot leave the 256-entry table: mode='clip' skips a bounds check that cannot fail
    return lookup_table(config.colormap).take(levels, axis=0, mode="clip" if levels.dtype == np.uint8 else "raise")

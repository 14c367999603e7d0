"""Training augmentation that respects what a spectrogram image is.

An image of the contract is uint8 R×R×3: columns are time (left → right), rows
are frequency (row 0 the highest), the colour is a fixed lookup table of a
level 0..255 that spans ``top_db`` dB.  So the only transformations that give
images the device could also see are:

- time shift: a circular roll along the time axis (body sounds are periodic and
  windows start at an arbitrary phase);
- time stretch: the columns resampled by a factor (nearest column, so every
  colour stays one of the colormap's), wrapping around the window as the roll
  does: another heart or breathing rate, the largest difference between two
  patients' recordings of the same sound;
- time masking and frequency masking (SpecAugment, Park et al. 2019): bands set
  to the colour of silence (level 0, the bottom of the shown range);
- gain jitter, in decibels: a random spectral tilt (a different microphone /
  chest-piece response) and, for contracts with fixed dB normalisation, a
  random overall gain.  With ``normalization='max'`` a pure overall gain cannot
  change an image, so the image's peak level is kept;
- additive noise (half of the images): a noise floor ``noise_db`` dB or less
  above the bottom of the shown range, with a random spectral slope and the
  cell-to-cell spread of a periodogram, added in power (``10·log10(P + N)``),
  as a noisier room, preamplifier or stethoscope would add it to the signal;
- another stethoscope's response (``eq_db``, ``lowpass``, ``highpass``): a sound
  reaches the image through a chest piece, a tube or a microphone and a
  preamplifier, each a filter, and a filter is one added dB curve per frequency
  row.  A random smooth curve of up to ±``eq_db`` dB (a cubic through control
  points every octave-ish, in log frequency), and with probability ``lowpass``
  a second-order low-pass at 150–800 Hz (a bell, or a diaphragm pressed
  lightly), with probability ``highpass`` a second-order high-pass at 20–150 Hz
  (a diaphragm, or an electronic stethoscope's filter modes).  Cells pushed below
  the shown range are clipped there, as rendering clips them.

Flips, rotations and random-resized crops are deliberately absent: they move
energy to frequencies or times where the device would never see it.
"""
import numpy as np

from stetho.colormaps import lookup_table
from stetho.errors import ConfigError
from stetho.records import Record


class AugmentConfig(Record):
    """Augmentation knobs. shift: max roll as a fraction of the width (1.0 = any phase);
    time_masks / freq_masks: how many bands; time_mask / freq_mask: max band size as a fraction of
    the width / height; gain_db: max spectral tilt (dB from band centre to edge) and, with fixed
    normalisation, max overall gain (dB); noise_db: max height of an added noise floor above the
    bottom of the shown range (dB; 0 = off); stretch: max time stretch as a fraction (0.2: the image
    slowed or sped up by up to 1.2×, the factor drawn uniformly in log; 0 = off)."""
    FIELDS = (
        ("shift", 1.0),
        ("stretch", 0.0),
        ("time_masks", 2),
        ("time_mask", 0.1),
        ("freq_masks", 2),
        ("freq_mask", 0.1),
        ("gain_db", 6.0),
        ("noise_db", 0.0),
        ("eq_db", 0.0),
        ("lowpass", 0.0),
        ("highpass", 0.0),
    )
    OMITTED_AT_DEFAULT = ("eq_db", "lowpass", "highpass")  # added later: older training records keep their dicts

    def validate(self):
        for name in ("shift", "stretch", "time_mask", "freq_mask"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError("augment.%s must be in [0, 1]" % name)
        if self.time_masks < 0 or self.freq_masks < 0 or self.gain_db < 0 or self.noise_db < 0 or self.eq_db < 0:
            raise ConfigError("augment: mask counts, gain_db, noise_db and eq_db must be ≥ 0")
        for name in ("lowpass", "highpass"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError("augment.%s is a probability: it must be in [0, 1]" % name)

    @property
    def active(self):
        return bool(self.shift or self.stretch or (self.time_masks and self.time_mask)
                    or (self.freq_masks and self.freq_mask) or self.gain_db or self.noise_db or self.eq_db
                    or self.lowpass or self.highpass)

    @property
    def response(self):
        """True when a device response (EQ curve, low- or high-pass) is drawn."""
        return bool(self.eq_db or self.lowpass or self.highpass)


NO_AUGMENT = AugmentConfig(shift=0.0, time_masks=0, freq_masks=0, gain_db=0.0)


def roll_time(image, shift):
    """Roll the image ``shift`` columns to the right (circularly)."""
    return np.roll(image, int(shift), axis=1)


def stretch_time(image, factor):
    """Stretch the image ``factor`` times along time (> 1: slower, the content wider), circularly.

    Output column ``j`` is input column ``floor(j / factor) mod width``: the nearest column, so the colours
    stay the colormap's, and a compressed image repeats its start where the window ran out, as a rolled one
    does.  factor 1 returns the image unchanged.
    """
    width = image.shape[1]
    columns = np.floor(np.arange(width) / float(factor) + 1e-9).astype(np.int64) % width
    return image[:, columns]


def mask_time(image, start, width, colour):
    """Set columns [start, start + width) to ``colour`` (copy)."""
    out = image.copy()
    out[:, start:start + width] = colour
    return out


def mask_frequency(image, start, height, colour):
    """Set rows [start, start + height) to ``colour`` (copy)."""
    out = image.copy()
    out[start:start + height, :] = colour
    return out


class Palette(object):
    """A colormap's table and its inverse (RGB → level)."""

    def __init__(self, name):
        self.table = lookup_table(name)
        keys = self._pack(self.table)
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.order]

    @staticmethod
    def _pack(rgb):
        rgb = rgb.astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    @property
    def floor(self):
        """The colour of level 0 (silence / the bottom of the shown range)."""
        return self.table[0]

    def levels(self, image):
        """uint8 R×R×3 → levels R×R uint8; raises ValueError if a colour is not in the table."""
        keys = self._pack(image)
        pos = np.clip(np.searchsorted(self.sorted_keys, keys), 0, len(self.sorted_keys) - 1)
        if not np.array_equal(self.sorted_keys[pos], keys):
            raise ValueError("image has colours outside the contract's colormap; was it rendered by this contract?")
        return self.order[pos].astype(np.uint8)

    def colours(self, levels):
        return self.table[levels]


def apply_gain(levels, gains_db, top_db, keep_peak):
    """Add ``gains_db`` (dB per row, or a scalar) to a level image spanning ``top_db`` dB.

    keep_peak: shift the result so its highest level equals the input's (max-normalised contracts).
    Levels are clipped to the shown range, as rendering clips them.
    """
    levels = np.asarray(levels, dtype=np.float64)
    db = levels * (top_db / 255.0) + np.reshape(gains_db, (-1, 1))
    out = db * (255.0 / top_db)
    if keep_peak:
        out = out - (out.max() - levels.max())
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def add_noise(levels, floor_db, slope_db, spread, top_db, keep_peak):
    """Add a noise floor, in power, to a level image spanning ``top_db`` dB.

    floor_db: the noise level in dB above the bottom of the shown range; slope_db: its change from the
    band centre to the top row (the bottom row gets the opposite); spread: per-cell power factors
    (same shape as ``levels``, mean 1).  keep_peak as in :func:`apply_gain`.  Returns uint8 levels.
    """
    levels = np.asarray(levels, dtype=np.float64)
    db = levels * (top_db / 255.0) - top_db  # ≤ 0: dB below the top of the shown range
    rows = slope_db * np.linspace(1.0, -1.0, levels.shape[0])[:, None]  # row 0 is the top frequency
    noise_db = (floor_db - top_db) + rows + 10.0 * np.log10(spread)
    out = 10.0 * np.log10(10.0 ** (db / 10.0) + 10.0 ** (noise_db / 10.0))
    if keep_peak:
        out = out - (out.max() - db.max())
    return np.clip(np.round((out + top_db) * (255.0 / top_db)), 0, 255).astype(np.uint8)


def row_frequencies(spectrogram):
    """Centre frequency (Hz) of each of the R image rows, row 0 the highest (as the renderer lays them out).

    Linear axis: the kept STFT bins from fmin to fmax, resized to R rows by area averaging; mel axis: the
    n_mels band centres, resized the same way (an approximation good to a fraction of a row).
    """
    from stetho.spectrogram import hz_to_mel, mel_to_hz
    size = spectrogram.size
    top = spectrogram.max_frequency
    if spectrogram.scale == "mel":
        edges = mel_to_hz(np.linspace(hz_to_mel(spectrogram.fmin), hz_to_mel(top), spectrogram.n_mels + 2))
        centres = edges[1:-1]
    else:
        step = float(spectrogram.sample_rate) / spectrogram.n_fft
        bins = np.arange(spectrogram.n_fft // 2 + 1) * step
        centres = bins[(bins >= spectrogram.fmin) & (bins <= top)]
    position = (np.arange(size) + 0.5) * len(centres) / float(size) - 0.5
    rows = np.interp(position, np.arange(len(centres)), centres)
    return np.maximum(rows[::-1], 1.0)  # row 0 is the top frequency; 1 Hz keeps log frequency defined


def device_response_db(freqs, rng, eq_db, lowpass, highpass):
    """A random stethoscope response in dB at ``freqs`` (Hz): smooth EQ ± ``eq_db``, and with probabilities
    ``lowpass`` / ``highpass`` a second-order low-pass (150–800 Hz) / high-pass (20–150 Hz)."""
    freqs = np.asarray(freqs, dtype=np.float64)
    gains = np.zeros_like(freqs)
    if eq_db:
        low, high = np.log2(max(freqs.min(), 10.0)), np.log2(freqs.max())
        knots = np.linspace(low, high, max(3, int(np.ceil(high - low)) + 2))  # about one control point an octave
        values = rng.uniform(-eq_db, eq_db, size=knots.size)
        position = np.log2(np.maximum(freqs, 10.0))
        gains += _smooth_curve(knots, values, position)
    if lowpass and rng.random() < lowpass:
        cutoff = np.exp(rng.uniform(np.log(150.0), np.log(800.0)))
        gains -= 10.0 * np.log10(1.0 + (freqs / cutoff) ** 4)
    if highpass and rng.random() < highpass:
        cutoff = np.exp(rng.uniform(np.log(20.0), np.log(150.0)))
        gains -= 10.0 * np.log10(1.0 + (cutoff / freqs) ** 4)
    return gains


def _smooth_curve(knots, values, x):
    """A smooth curve through (knots, values) at x: piecewise cubic Hermite with Catmull-Rom slopes (no overshoot
    beyond a fraction of the knot values' range)."""
    slopes = np.gradient(values, knots)
    index = np.clip(np.searchsorted(knots, x) - 1, 0, knots.size - 2)
    h = knots[index + 1] - knots[index]
    t = np.clip((x - knots[index]) / h, 0.0, 1.0)
    h00, h10 = 2 * t ** 3 - 3 * t ** 2 + 1, t ** 3 - 2 * t ** 2 + t
    h01, h11 = -2 * t ** 3 + 3 * t ** 2, t ** 3 - t ** 2
    return (h00 * values[index] + h10 * h * slopes[index] + h01 * values[index + 1]
            + h11 * h * slopes[index + 1])


class SpecAugment(object):
    """Random augmentation of contract images, deterministic for a given numpy Generator."""

    def __init__(self, config, spectrogram):
        self.config = config
        self.palette = Palette(spectrogram.colormap)
        self.top_db = float(spectrogram.top_db)
        self.keep_peak = spectrogram.normalization == "max"
        self.row_hz = row_frequencies(spectrogram)

    def __call__(self, image, rng):
        cfg = self.config
        height, width = image.shape[:2]
        out = image
        if cfg.stretch:
            out = stretch_time(out, np.exp(rng.uniform(-np.log1p(cfg.stretch), np.log1p(cfg.stretch))))
        if cfg.shift:
            limit = int(round(cfg.shift * width))
            out = roll_time(out, rng.integers(-limit, limit + 1))
        levels = None  # the image as levels, worked on in that form by the gain and noise steps
        if cfg.gain_db:
            tilt = rng.uniform(-cfg.gain_db, cfg.gain_db)
            gains = tilt * np.linspace(1.0, -1.0, height)  # row 0 is the top frequency
            if not self.keep_peak:
                gains = gains + rng.uniform(-cfg.gain_db, cfg.gain_db)
            levels = apply_gain(self.palette.levels(out), gains, self.top_db, self.keep_peak)
        if cfg.response:
            response = device_response_db(self.row_hz, rng, cfg.eq_db, cfg.lowpass, cfg.highpass)
            levels = apply_gain(self.palette.levels(out) if levels is None else levels, response, self.top_db,
                                self.keep_peak)
        if cfg.noise_db and rng.random() < 0.5:
            floor = rng.uniform(0.0, cfg.noise_db)
            slope = rng.uniform(-6.0, 6.0)  # from blue-ish to pink-ish noise, ±6 dB across the band
            spread = rng.gamma(2.0, 0.5, size=(height, width))  # mean 1: a periodogram averaged over ~2 cells
            levels = add_noise(self.palette.levels(out) if levels is None else levels, floor, slope, spread,
                               self.top_db, self.keep_peak)
        if levels is not None:
            out = self.palette.colours(levels)
        for _ in range(cfg.time_masks):
            size = int(rng.integers(0, int(cfg.time_mask * width) + 1))
            if size:
                out = mask_time(out, int(rng.integers(0, width - size + 1)), size, self.palette.floor)
        for _ in range(cfg.freq_masks):
            size = int(rng.integers(0, int(cfg.freq_mask * height) + 1))
            if size:
                out = mask_frequency(out, int(rng.integers(0, height - size + 1)), size, self.palette.floor)
        return np.ascontiguousarray(out)

"""Resampling mono float audio, whole arrays and streams (numpy; soxr when installed).

- :func:`resample` — a whole array: soxr 'HQ' when installed (the workstation), else the numpy
  :class:`SincResampler` (a Nano without soxr).
- :func:`make_resampler` — the same choice as a stream (``push(samples) → out``, ``finish() → out``):
  soxr's ``ResampleStream`` is bit-identical to its one-shot ``soxr.resample``, and the sinc stream
  to the sinc whole-array result, however the input is cut.  ``stetho.audio_io.ResampledFile`` uses it
  to read files at a model's rate block by block.
"""
import numpy as np

_EMPTY = np.zeros(0, dtype=np.float32)


def _optional(name):
    """The module ``name``, or None when it (or a library it loads) is not installed."""
    try:
        return __import__(name)
    except (ImportError, OSError):
        return None


def resample(samples, orig_rate, target_rate):
    """Change the sample rate of mono float audio.

    Uses soxr (the resampler librosa uses by default, 'HQ' quality) when it is
    installed, as on the workstation.  Without it (a bare Jetson) a numpy
    Kaiser-windowed sinc interpolator (:class:`SincResampler`) is used: good,
    but not bit-identical to soxr, so a device that resamples files will differ
    from training images by small amounts; capture at the model's rate to
    avoid resampling entirely.

    Returns float32 of length ``round(len(samples) * target_rate / orig_rate)``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    orig_rate, target_rate = int(orig_rate), int(target_rate)
    if orig_rate == target_rate:
        return samples
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError("sample rates must be positive (got %d → %d)" % (orig_rate, target_rate))
    soxr = _optional("soxr")
    if soxr is not None:
        return np.asarray(soxr.resample(samples, orig_rate, target_rate, quality="HQ"), dtype=np.float32)
    return _resample_sinc(samples, orig_rate, target_rate)


def _resample_sinc(samples, orig_rate, target_rate, half_width=32, beta=8.6):
    resampler = SincResampler(orig_rate, target_rate, half_width, beta)
    head = resampler.push(samples)
    return np.concatenate([head, resampler.finish()])


class SincResampler(object):
    """Streaming Kaiser-windowed sinc interpolation (numpy only): the resampler of a device without soxr.

    Output ``j`` is the input convolved with a low-pass sinc (cut-off 0.95 of
    the lower Nyquist, Kaiser taper ``beta``, ``half_width`` zero crossings
    each side) at input time ``j / ratio``.  ``push`` returns the outputs whose
    neighbourhood has fully arrived; ``finish`` the rest, up to
    ``round(n_in * target / orig)`` outputs, with zeros beyond the input's
    ends.  Each output depends only on its own neighbourhood, so the stream is
    bit-identical to resampling the whole array at once, however it is cut.
    Memory: the last ``2·width`` input samples and temporaries of at most
    ``MAX_CELLS`` kernel cells (1 MB each).
    """

    MAX_CELLS = 1 << 17

    def __init__(self, orig_rate, target_rate, half_width=32, beta=8.6):
        self.orig_rate, self.target_rate = int(orig_rate), int(target_rate)
        if self.orig_rate <= 0 or self.target_rate <= 0:
            raise ValueError("sample rates must be positive (got %d → %d)" % (self.orig_rate, self.target_rate))
        self.ratio = float(self.target_rate) / self.orig_rate
        self.cutoff = min(1.0, self.ratio) * 0.95  # of the input Nyquist
        self.width = int(np.ceil(half_width / min(1.0, self.ratio)))
        self.beta = beta
        self._offsets = np.arange(-self.width, self.width + 1)
        self._rows = int(max(16, min(4096, self.MAX_CELLS // self._offsets.size)))
        self._buffer = np.zeros(0, dtype=np.float64)
        self._buffer_start = 0  # input index of _buffer[0]
        self._received = 0
        self._next = 0  # next output index

    def push(self, samples):
        """Add float32 input samples; return the float32 outputs that are now complete."""
        x = np.asarray(samples, dtype=np.float32).astype(np.float64).ravel()
        if x.size:
            self._buffer = np.concatenate([self._buffer, x]) if self._buffer.size else x
            self._received += x.size
        # outputs whose last input (floor(j / ratio) + width) has arrived
        last = self._received - 1 - self.width
        if last < 0:
            return _EMPTY
        stop = int(np.floor((last + 1) * self.ratio)) + 2
        low = max(self._next, stop - int(np.ceil(2 * self.ratio)) - 4)  # every output below this is ready
        candidates = np.floor(np.arange(low, max(low, stop)) / self.ratio)  # the times _compute uses
        return self._compute(low + int(np.searchsorted(candidates, last, side="right")), self._received)

    def finish(self):
        """The outputs still owed once the input has ended (then the stream is done)."""
        n_out = int(round(self._received * float(self.target_rate) / self.orig_rate))
        return self._compute(n_out, self._received)

    def _compute(self, stop, total):
        """Outputs self._next..stop-1; input indices ≥ ``total`` (the input's length, once known) count as 0."""
        if stop <= self._next:
            return _EMPTY
        x, x_start = self._buffer, self._buffer_start
        out = np.empty(stop - self._next, dtype=np.float64)
        for start in range(self._next, stop, self._rows):
            t = np.arange(start, min(stop, start + self._rows)) / self.ratio  # output times in input samples
            base = np.floor(t).astype(np.int64)
            idx = base[:, None] + self._offsets[None, :]
            dist = t[:, None] - idx
            taper = (np.i0(self.beta * np.sqrt(np.clip(1.0 - (dist / (self.width + 1.0)) ** 2, 0.0, 1.0)))
                     / np.i0(self.beta))
            kernel = self.cutoff * np.sinc(self.cutoff * dist) * taper
            valid = (idx >= 0) & (idx < total)
            values = np.where(valid, x[np.clip(idx - x_start, 0, max(0, x.size - 1))], 0.0) if x.size else 0.0
            out[start - self._next:start - self._next + len(t)] = (values * kernel).sum(axis=1)
        self._next = stop
        keep_from = max(self._buffer_start, int(np.floor(stop / self.ratio)) - self.width)
        self._buffer = self._buffer[keep_from - self._buffer_start:]
        self._buffer_start = keep_from
        return out.astype(np.float32)


class _SoxrResampler(object):
    """soxr's streaming resampler ('HQ'): bit-identical to ``soxr.resample`` of the whole array."""

    def __init__(self, soxr, orig_rate, target_rate):
        self._stream = soxr.ResampleStream(orig_rate, target_rate, 1, dtype="float32", quality="HQ")

    def push(self, samples):
        block = np.ascontiguousarray(samples, dtype=np.float32)
        return np.asarray(self._stream.resample_chunk(block, last=False), dtype=np.float32)

    def finish(self):
        return np.asarray(self._stream.resample_chunk(_EMPTY, last=True), dtype=np.float32)


class _Unchanged(object):
    def push(self, samples):
        return np.asarray(samples, dtype=np.float32)

    def finish(self):
        return _EMPTY


def make_resampler(orig_rate, target_rate):
    """A streaming resampler (``push(samples) → out``, ``finish() → out``), as :func:`resample` would do it."""
    orig_rate, target_rate = int(orig_rate), int(target_rate)
    if orig_rate == target_rate:
        return _Unchanged()
    soxr = _optional("soxr")
    if soxr is not None:
        return _SoxrResampler(soxr, orig_rate, target_rate)
    return SincResampler(orig_rate, target_rate)

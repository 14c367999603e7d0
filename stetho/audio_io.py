"""Audio in and out: any WAV to float32 mono, with clear errors naming the file.

Device side (Python 3.6, numpy only): ``read_wav`` parses RIFF/WAVE itself, so
it reads PCM 8/16/24/32-bit and IEEE float 32/64-bit, plain or
WAVE_FORMAT_EXTENSIBLE (the stdlib ``wave`` module of 3.6 reads neither float
nor extensible files).  Workstation side, ``load_audio`` falls back to
soundfile (FLAC, OGG, ...) and librosa/audioread (MP3, M4A) when installed.

Every reader returns ``(samples, rate)``: ``samples`` is a 1-D float32 array in
[-1, 1] (channels averaged), ``rate`` the sample rate in Hz.
"""
import os
import struct

import numpy as np

from .errors import AudioError

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE
_STREAMED_SIZES = (0, 0xFFFFFFFF)  # writers that never went back to fill in the size

WAV_SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")


def _decode_pcm(raw, bits):
    """Little-endian PCM bytes → float64 in [-1, 1)."""
    if bits == 8:  # 8-bit WAV is unsigned with 128 as zero
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if bits == 16:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float64) / 8388608.0
    if bits == 32:
        return np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    raise ValueError(bits)


def _parse_fmt(body, path):
    if len(body) < 16:
        raise AudioError("%s: 'fmt ' chunk is %d bytes, too short to be WAV" % (path, len(body)))
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise AudioError("%s: WAVE_FORMAT_EXTENSIBLE header is truncated" % path)
        tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the SubFormat GUID
    if tag not in (_PCM, _FLOAT):
        raise AudioError("%s: unsupported WAV encoding (format tag %#06x); only PCM and IEEE float are read"
                         % (path, tag))
    if tag == _PCM and bits not in (8, 16, 24, 32):
        raise AudioError("%s: unsupported PCM bit depth %d (8, 16, 24 or 32 expected)" % (path, bits))
    if tag == _FLOAT and bits not in (32, 64):
        raise AudioError("%s: unsupported float bit depth %d (32 or 64 expected)" % (path, bits))
    if channels < 1 or rate < 1:
        raise AudioError("%s: header says %d channel(s) at %d Hz" % (path, channels, rate))
    if block_align != channels * bits // 8:
        raise AudioError("%s: inconsistent header (block align %d for %d channel(s) of %d bits)"
                         % (path, block_align, channels, bits))
    return tag, channels, rate, bits


def read_wav(path):
    """Read a WAV file into float32 mono.

    Parameters
    ----------
    path : str
        A RIFF/WAVE file: PCM 8/16/24/32-bit or IEEE float 32/64-bit, any
        channel count (channels are averaged).

    Returns
    -------
    samples : np.ndarray, float32, shape (n,)
        Amplitude in [-1, 1].
    rate : int
        Sample rate in Hz.

    Raises
    ------
    AudioError
        Naming ``path``: not a WAV, unsupported encoding, truncated, no samples,
        or NaN/Inf samples.
    """
    path = str(path)
    try:
        with open(path, "rb") as handle:
            blob = handle.read()
    except (IOError, OSError) as error:
        raise AudioError("%s: cannot read file (%s)" % (path, error))
    if len(blob) == 0:
        raise AudioError("%s: file is empty (0 bytes)" % path)
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise AudioError("%s: not a WAV file (no RIFF/WAVE header)" % path)
    fmt = None
    data = None
    pos = 12
    while pos + 8 <= len(blob):
        chunk_id, size = struct.unpack("<4sI", blob[pos:pos + 8])
        body_start = pos + 8
        if chunk_id == b"data":
            available = len(blob) - body_start
            if size in _STREAMED_SIZES and available > 0:
                size = available
            if size > available:
                raise AudioError("%s: truncated: header announces %d bytes of audio, file holds %d"
                                 % (path, size, available))
            data = blob[body_start:body_start + size]
        elif chunk_id == b"fmt ":
            fmt = _parse_fmt(blob[body_start:body_start + size], path)
        pos = body_start + size + (size & 1)  # chunks are word-aligned
    if fmt is None:
        raise AudioError("%s: no 'fmt ' chunk; not a usable WAV file" % path)
    if data is None:
        raise AudioError("%s: no 'data' chunk; the file holds no audio" % path)
    tag, channels, rate, bits = fmt
    frame_bytes = channels * bits // 8
    if len(data) % frame_bytes:
        raise AudioError("%s: truncated: %d bytes of audio is not a whole number of %d-byte frames"
                         % (path, len(data), frame_bytes))
    if len(data) == 0:
        raise AudioError("%s: contains no samples" % path)
    if tag == _FLOAT:
        samples = np.frombuffer(data, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
    else:
        samples = _decode_pcm(data, bits)
    samples = samples.reshape(-1, channels).mean(axis=1)
    return check_finite(samples.astype(np.float32), path), int(rate)


def check_finite(samples, name):
    """Return ``samples`` unchanged, or raise AudioError naming ``name`` if any is NaN or Inf."""
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError("%s: contains no samples" % name)
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(np.size(finite) - np.count_nonzero(finite))
        first = int(np.flatnonzero(~finite.ravel())[0])
        raise AudioError("%s: %d sample(s) are NaN or Inf (first at index %d)" % (name, bad, first))
    return samples


def load_audio(path):
    """Read any supported audio file into float32 mono (workstation formats included).

    WAV is read by :func:`read_wav` (identical on workstation and device).
    Other formats, and WAVs that ``read_wav`` cannot decode, go to soundfile
    (FLAC, OGG, AIFF...) and then librosa (MP3, M4A via audioread) when they
    are installed.  Returns ``(samples float32 (n,), rate Hz)``.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError("%s: no such file" % path)
    if os.path.getsize(path) == 0:
        raise AudioError("%s: file is empty (0 bytes)" % path)
    first_error = None
    if path.lower().endswith((".wav", ".wave")):
        try:
            return read_wav(path)
        except AudioError as error:
            if "unsupported" not in str(error):
                raise
            first_error = error
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        try:
            samples, rate = soundfile.read(path, dtype="float64", always_2d=True)
            return check_finite(samples.mean(axis=1).astype(np.float32), path), int(rate)
        except AudioError:
            raise
        except Exception as error:  # soundfile raises its own LibsndfileError / RuntimeError
            first_error = first_error or error
    try:
        import librosa
    except ImportError:
        librosa = None
    if librosa is not None:
        try:
            samples, rate = librosa.load(path, sr=None, mono=True)
            return check_finite(np.asarray(samples, dtype=np.float32), path), int(rate)
        except AudioError:
            raise
        except Exception as error:
            first_error = first_error or error
    if first_error is not None:
        raise AudioError("%s: cannot decode audio (%s)" % (path, first_error))
    raise AudioError("%s: unsupported format and neither soundfile nor librosa is installed" % path)


def write_wav(path, samples, rate, subtype="PCM_16"):
    """Write mono float samples in [-1, 1] as a WAV file.

    ``subtype`` is one of PCM_U8, PCM_16, PCM_24, PCM_32 (clipped and rounded
    to the nearest code) or FLOAT / DOUBLE (IEEE, written as-is).  The file is
    written to ``path + '.part'`` and renamed, so a reader never sees half a file.
    """
    samples = check_finite(np.asarray(samples, dtype=np.float64).ravel(), str(path))
    if subtype not in WAV_SUBTYPES:
        raise ValueError("subtype must be one of %s" % (WAV_SUBTYPES,))
    if subtype in ("FLOAT", "DOUBLE"):
        tag, bits = _FLOAT, 32 if subtype == "FLOAT" else 64
        data = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    else:
        tag = _PCM
        bits = {"PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}[subtype]
        scale = float(2 ** (bits - 1))
        codes = np.clip(np.round(samples * scale), -scale, scale - 1).astype(np.int64)
        if bits == 8:
            data = (codes + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            unsigned = (codes & 0xFFFFFF).astype(np.uint32)
            data = np.stack([unsigned & 0xFF, (unsigned >> 8) & 0xFF, (unsigned >> 16) & 0xFF],
                            axis=1).astype(np.uint8).tobytes()
        else:
            data = codes.astype("<i2" if bits == 16 else "<i4").tobytes()
    block_align = bits // 8
    fmt = struct.pack("<HHIIHH", tag, 1, int(rate), int(rate) * block_align, block_align, bits)
    header = b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data) + (len(data) & 1)) + b"WAVE"
    body = header + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    if len(data) & 1:
        body += b"\x00"
    tmp = str(path) + ".part"
    with open(tmp, "wb") as handle:
        handle.write(body)
    os.replace(tmp, str(path))


def resample(samples, orig_rate, target_rate):
    """Change the sample rate of mono float audio.

    Uses soxr (the resampler librosa uses by default, 'HQ' quality) when it is
    installed, as on the workstation.  Without it (a bare Jetson) a numpy
    Kaiser-windowed sinc interpolator is used: good, but not bit-identical to
    soxr, so a device that resamples files will differ from training images by
    small amounts; capture at the model's rate to avoid resampling entirely.

    Returns float32 of length ``round(len(samples) * target_rate / orig_rate)``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    orig_rate, target_rate = int(orig_rate), int(target_rate)
    if orig_rate == target_rate:
        return samples
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError("sample rates must be positive (got %d → %d)" % (orig_rate, target_rate))
    try:
        import soxr
    except ImportError:
        soxr = None
    if soxr is not None:
        return np.asarray(soxr.resample(samples, orig_rate, target_rate, quality="HQ"), dtype=np.float32)
    return _resample_sinc(samples, orig_rate, target_rate)


def _resample_sinc(samples, orig_rate, target_rate, half_width=32, beta=8.6):
    x = samples.astype(np.float64)
    n_out = int(round(len(x) * float(target_rate) / orig_rate))
    ratio = float(target_rate) / orig_rate
    cutoff = min(1.0, ratio) * 0.95  # of the input Nyquist
    width = int(np.ceil(half_width / min(1.0, ratio)))
    out = np.empty(n_out, dtype=np.float64)
    offsets = np.arange(-width, width + 1)
    block = 4096
    for start in range(0, n_out, block):
        t = np.arange(start, min(n_out, start + block)) / ratio  # output times in input samples
        base = np.floor(t).astype(np.int64)
        idx = base[:, None] + offsets[None, :]
        dist = t[:, None] - idx
        taper = np.i0(beta * np.sqrt(np.clip(1.0 - (dist / (width + 1.0)) ** 2, 0.0, 1.0))) / np.i0(beta)
        kernel = cutoff * np.sinc(cutoff * dist) * taper
        valid = (idx >= 0) & (idx < len(x))
        values = np.where(valid, x[np.clip(idx, 0, len(x) - 1)], 0.0)
        out[start:start + len(t)] = (values * kernel).sum(axis=1)
    return out.astype(np.float32)

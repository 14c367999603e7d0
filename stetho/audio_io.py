"""Audio in and out: any supported file to float32 mono, read in blocks, with clear errors naming the file.

Device side (Python 3.6, numpy only): the WAV reader parses RIFF/WAVE itself,
so it reads PCM 8/16/24/32-bit and IEEE float 32/64-bit, plain or
WAVE_FORMAT_EXTENSIBLE (the stdlib ``wave`` module of 3.6 reads neither float
nor extensible files).  Workstation side, other formats go to soundfile
(libsndfile: FLAC, OGG Vorbis, MP3, AIFF, ...) and then to PyAV (the ``av``
package, which bundles ffmpeg: M4A/AAC and anything else ffmpeg reads) when
they are installed.

Every file is read block by block (:func:`open_audio`), so memory stays flat
whatever its length.  :func:`resampled_blocks` streams a file at another rate
(``stetho.resampling``: soxr's streaming resampler when soxr is installed,
bit-identical to its one-shot ``soxr.resample``, else the numpy
``SincResampler``, whose streamed output is bit-identical to its whole-array
output; ``resample`` and ``SincResampler`` are re-exported here).
:func:`load_resampled` (prepare.py) and the service's file source both take
that one path, so they see the same samples.  A header announcing a rate
outside [MIN_RATE, MAX_RATE] Hz is refused before anything is decoded: a
damaged 200 kB file claiming 1 Hz would otherwise be upsampled 2000-fold.

Whole-file readers return ``(samples, rate)``: ``samples`` is a 1-D float32
array in [-1, 1] (channels averaged), ``rate`` the sample rate in Hz.
"""
import os
import struct

import numpy as np

from .errors import AudioError
from .resampling import SincResampler, _optional, _resample_sinc, make_resampler, resample  # noqa: F401

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE
_STREAMED_SIZES = (0, 0xFFFFFFFF)  # writers that never went back to fill in the size

WAV_SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
WAV_EXTENSIONS = (".wav", ".wave")
MIN_RATE = 1000         # Hz: below this a file cannot hold the contracts' bands (heart sounds reach 400-800 Hz)
MAX_RATE = 384000       # Hz: the highest rate audio interfaces record at
BLOCK_FRAMES = 1 << 16  # source frames decoded per read when streaming (1.5 s at 44.1 kHz; ~1 MB of temporaries)
_EMPTY = np.zeros(0, dtype=np.float32)


def check_rate(rate, name):
    """Return ``rate`` (Hz) as an int, or raise AudioError naming ``name`` and the rate when it is implausible."""
    rate = int(rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError("%s: sample rate %d Hz is implausible (accepted: %d-%d Hz); the header is damaged or "
                         "the file is not a recording" % (name, rate, MIN_RATE, MAX_RATE))
    return rate


def check_finite(samples, name, offset=0):
    """Return ``samples`` unchanged, or raise AudioError naming ``name`` if any is NaN or Inf.

    ``offset``: index of ``samples[0]`` in the file (for a block of a longer file), so the
    message gives the position in the file.
    """
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError("%s: contains no samples" % name)
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(np.size(finite) - np.count_nonzero(finite))
        first = int(np.flatnonzero(~finite.ravel())[0]) + int(offset)
        where = "" if offset == 0 else " among samples %d-%d" % (offset, offset + samples.size - 1)
        raise AudioError("%s: %d sample(s) are NaN or Inf%s (first at index %d)" % (name, bad, where, first))
    return samples


# ------------------------------------------------------------------------------------------------
# Readers: .rate (Hz), .channels, .frames (int, or None when the container does not say), .path;
# read(n) → float32 mono, up to n frames (empty at the end); blocks(n); close(); context manager.


class _Reader(object):
    path = ""
    rate = 0
    channels = 0
    frames = None

    def blocks(self, frames=BLOCK_FRAMES):
        """float32 mono blocks of ``frames`` frames (the last may be shorter) until the end of the file."""
        while True:
            block = self.read(frames)
            if block.size == 0:
                return
            yield block

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
    if channels < 1:
        raise AudioError("%s: header says %d channel(s) at %d Hz" % (path, channels, rate))
    check_rate(rate, path)
    if block_align != channels * bits // 8:
        raise AudioError("%s: inconsistent header (block align %d for %d channel(s) of %d bits)"
                         % (path, block_align, channels, bits))
    return tag, channels, rate, bits


class WavReader(_Reader):
    """Read a RIFF/WAVE file block by block (numpy only; what the device uses).

    PCM 8/16/24/32-bit or IEEE float 32/64-bit, any channel count (averaged).
    The header is checked when the reader is made (AudioError naming the file:
    not a WAV, unsupported encoding, implausible rate, truncated, no samples);
    NaN/Inf samples raise when the block holding them is read.
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            self._handle = open(self.path, "rb")
        except (IOError, OSError) as error:
            raise AudioError("%s: cannot read file (%s)" % (self.path, error))
        try:
            self._parse()
        except BaseException:
            self._handle.close()
            raise
        self._done = 0

    def _parse(self):
        path, handle = self.path, self._handle
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise AudioError("%s: file is empty (0 bytes)" % path)
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise AudioError("%s: not a WAV file (no RIFF/WAVE header)" % path)
        fmt = data = None
        pos = 12
        while pos + 8 <= size:
            handle.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            body_start = pos + 8
            available = size - body_start
            if chunk_id == b"data":
                if chunk_size in _STREAMED_SIZES and available > 0:
                    chunk_size = available
                if chunk_size > available:
                    raise AudioError("%s: truncated: header announces %d bytes of audio, file holds %d"
                                     % (path, chunk_size, available))
                data = (body_start, chunk_size)
            elif chunk_id == b"fmt ":
                fmt = _parse_fmt(handle.read(min(chunk_size, available)), path)
            pos = body_start + chunk_size + (chunk_size & 1)  # chunks are word-aligned
        if fmt is None:
            raise AudioError("%s: no 'fmt ' chunk; not a usable WAV file" % path)
        if data is None:
            raise AudioError("%s: no 'data' chunk; the file holds no audio" % path)
        self._tag, self.channels, self.rate, self._bits = fmt
        self._frame_bytes = self.channels * self._bits // 8
        start, length = data
        if length % self._frame_bytes:
            raise AudioError("%s: truncated: %d bytes of audio is not a whole number of %d-byte frames"
                             % (path, length, self._frame_bytes))
        if length == 0:
            raise AudioError("%s: contains no samples" % path)
        self.frames = length // self._frame_bytes
        handle.seek(start)

    def read(self, frames=BLOCK_FRAMES):
        want = min(int(frames), self.frames - self._done)
        if want <= 0:
            return _EMPTY
        try:
            raw = self._handle.read(want * self._frame_bytes)
        except (IOError, OSError) as error:
            raise AudioError("%s: cannot read file (%s)" % (self.path, error))
        if len(raw) < want * self._frame_bytes:
            raise AudioError("%s: truncated while reading: %d of %d bytes of audio are there"
                             % (self.path, self._done * self._frame_bytes + len(raw), self.frames * self._frame_bytes))
        if self._tag == _FLOAT:
            samples = np.frombuffer(raw, dtype="<f4" if self._bits == 32 else "<f8").astype(np.float64)
        else:
            samples = _decode_pcm(raw, self._bits)
        samples = samples.reshape(-1, self.channels).mean(axis=1).astype(np.float32)
        check_finite(samples, self.path, self._done)
        self._done += want
        return samples

    def close(self):
        self._handle.close()


class _SoundfileReader(_Reader):
    """libsndfile through soundfile: FLAC, OGG, AIFF, WAV encodings WavReader lacks, and MP3 when PyAV is absent.

    libsndfile 1.2's MP3 decoder gives wrong samples when a file is read in pieces (errors of 0.5 full scale
    after the first read): an MP3 is therefore read in one piece here (``whole``), and goes to PyAV first.
    """

    def __init__(self, path, soundfile):
        self.path = path
        self._file = soundfile.SoundFile(path)
        self.rate, self.channels = int(self._file.samplerate), int(self._file.channels)
        self.whole = path.lower().endswith(".mp3")
        self.frames = None if self.whole or not self._file.seekable() else int(self._file.frames)
        self._done = 0

    def read(self, frames=BLOCK_FRAMES):
        try:
            block = self._file.read(-1 if self.whole else int(frames), dtype="float64", always_2d=True)
        except Exception as error:  # soundfile's LibsndfileError / RuntimeError mid-file
            raise AudioError("%s: cannot decode audio after %d frames (%s)" % (self.path, self._done, error))
        if block.shape[0] == 0:
            return _EMPTY
        samples = block.mean(axis=1).astype(np.float32)
        check_finite(samples, self.path, self._done)
        self._done += samples.size
        return samples

    def close(self):
        self._file.close()


_AV_SCALE = {"u8": (128.0, 128.0), "s16": (0.0, 32768.0), "s32": (0.0, 2147483648.0), "flt": (0.0, 1.0),
             "dbl": (0.0, 1.0)}


class _AvReader(_Reader):
    """ffmpeg through PyAV (``av``, which bundles its own ffmpeg): M4A/AAC, and what libsndfile cannot read."""

    def __init__(self, path, av):
        self.path = path
        self._container = av.open(path)
        try:
            streams = self._container.streams.audio
            if not streams:
                raise AudioError("%s: the file holds no audio stream" % path)
            self._stream = streams[0]
            context = self._stream.codec_context
            self.rate = int(context.sample_rate or 0)
            self.channels = int(context.layout.nb_channels) if context.layout is not None else 0
            self.frames = None  # containers only estimate it
            self._frames = self._container.decode(self._stream)
        except BaseException:
            self._container.close()
            raise
        self._pending = []
        self._pending_size = 0
        self._done = 0
        self._ended = False

    def _convert(self, frame):
        name = frame.format.name
        offset, scale = _AV_SCALE.get(name.rstrip("p"), (None, None))
        if scale is None:
            raise AudioError("%s: unsupported decoded sample format %s" % (self.path, name))
        if int(frame.sample_rate) != self.rate:
            raise AudioError("%s: the sample rate changes from %d to %d Hz mid-file"
                             % (self.path, self.rate, frame.sample_rate))
        array = frame.to_ndarray()
        channels = frame.layout.nb_channels
        array = array.T if frame.format.is_planar else array.reshape(-1, channels)
        values = array.astype(np.float64)
        if offset:
            values -= offset
        if scale != 1.0:
            values /= scale
        return values.mean(axis=1).astype(np.float32)

    def read(self, frames=BLOCK_FRAMES):
        frames = int(frames)
        while self._pending_size < frames and not self._ended:
            try:
                frame = next(self._frames)
            except StopIteration:
                self._ended = True
                break
            except AudioError:
                raise
            except Exception as error:  # av.error.* mid-file
                raise AudioError("%s: cannot decode audio after %d frames (%s)" % (self.path, self._done, error))
            block = self._convert(frame)
            if block.size:
                self._pending.append(block)
                self._pending_size += block.size
        if not self._pending:
            return _EMPTY
        joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        out, rest = joined[:frames], joined[frames:]
        self._pending = [rest] if rest.size else []
        self._pending_size = rest.size
        check_finite(out, self.path, self._done)
        self._done += out.size
        return out

    def close(self):
        self._container.close()


def open_audio(path):
    """A block reader for any supported audio file (see the module docstring); use it as a context manager.

    WAV goes to :class:`WavReader` (identical on workstation and device);
    other formats, and WAV encodings it does not read, to soundfile and then
    PyAV when installed.  The header's rate is checked (:func:`check_rate`).
    Raises AudioError naming ``path`` when nothing can read it.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError("%s: no such file" % path)
    if os.path.getsize(path) == 0:
        raise AudioError("%s: file is empty (0 bytes)" % path)
    first_error = None
    if path.lower().endswith(WAV_EXTENSIONS):
        try:
            return WavReader(path)
        except AudioError as error:
            if "unsupported" not in str(error):
                raise
            first_error = error
    tried = 0
    openers = [("soundfile", _SoundfileReader), ("av", _AvReader)]
    if path.lower().endswith(".mp3"):  # libsndfile cannot stream MP3 (see _SoundfileReader)
        openers.reverse()
    for module_name, opener in openers:
        module = _optional(module_name)
        if module is None:
            continue
        tried += 1
        try:
            reader = opener(path, module)
        except AudioError:
            raise
        except Exception as error:  # LibsndfileError, av.error.InvalidDataError, ...
            first_error = first_error or error
            continue
        try:
            check_rate(reader.rate, path)
        except AudioError:
            reader.close()
            raise
        return reader
    if first_error is not None:
        raise AudioError("%s: cannot decode audio (%s)" % (path, first_error))
    raise AudioError("%s: unsupported format here: reading it needs soundfile or PyAV (pip install soundfile av)"
                     % path if not tried else "%s: cannot decode audio" % path)


def _read_all(reader):
    """Every frame of ``reader`` as one float32 array (filled in place when the frame count is known)."""
    if reader.frames:
        out = np.empty(reader.frames, dtype=np.float32)
        filled = 0
        extra = []
        for block in reader.blocks():
            room = min(block.size, out.size - filled)
            out[filled:filled + room] = block[:room]
            filled += room
            if room < block.size:
                extra.append(block[room:])
        samples = np.concatenate([out[:filled]] + extra) if extra else out[:filled]
    else:
        blocks = list(reader.blocks())
        samples = np.concatenate(blocks) if blocks else _EMPTY
    if samples.size == 0:
        raise AudioError("%s: contains no samples" % reader.path)
    return samples


def read_wav(path):
    """Read a WAV file into float32 mono.

    Parameters
    ----------
    path : str
        A RIFF/WAVE file: PCM 8/16/24/32-bit or IEEE float 32/64-bit, any
        channel count (channels are averaged), at MIN_RATE to MAX_RATE Hz.

    Returns
    -------
    samples : np.ndarray, float32, shape (n,)
        Amplitude in [-1, 1].
    rate : int
        Sample rate in Hz.

    Raises
    ------
    AudioError
        Naming ``path``: not a WAV, unsupported encoding, implausible rate,
        truncated, no samples, or NaN/Inf samples.
    """
    with WavReader(path) as reader:
        return _read_all(reader), int(reader.rate)


def load_audio(path):
    """Read any supported audio file into float32 mono: ``(samples float32 (n,), rate Hz)``.

    The same decoding as :func:`open_audio`'s blocks, joined; for long files
    prefer streaming (:func:`resampled_blocks`) or :func:`load_resampled`.
    """
    with open_audio(path) as reader:
        return _read_all(reader), int(reader.rate)


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


class ResampledFile(object):
    """A file read block by block at ``rate`` Hz: what the service replays and prepare.py renders.

    The file is opened (and its header checked) when this is made; ``blocks()``
    yields float32 arrays (never empty) at ``rate`` until the file ends; then
    ``source_frames`` is the number of frames decoded at ``source_rate``.
    Memory: one decoded block (``block_frames`` frames) and the resampler's state.
    """

    def __init__(self, path, rate, block_frames=BLOCK_FRAMES):
        self.path = str(path)
        self.rate = int(rate)
        self.block_frames = int(block_frames)
        self._reader = open_audio(self.path)
        self.source_rate = int(self._reader.rate)
        self.source_frames = 0

    def blocks(self):
        resampler = make_resampler(self.source_rate, self.rate)
        for block in self._reader.blocks(self.block_frames):
            self.source_frames += block.size
            out = resampler.push(block)
            if out.size:
                yield out
        if self.source_frames == 0:
            raise AudioError("%s: contains no samples" % self.path)
        out = resampler.finish()
        if out.size:
            yield out

    def close(self):
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resampled_blocks(path, rate, block_frames=BLOCK_FRAMES):
    """float32 blocks of ``path`` at ``rate`` Hz, decoded and resampled as they are needed (see ResampledFile)."""
    with ResampledFile(path, rate, block_frames) as audio:
        for block in audio.blocks():
            yield block


def load_resampled(path, rate, block_frames=BLOCK_FRAMES):
    """The whole of ``path`` at ``rate`` Hz, streamed: ``(samples float32, source rate Hz, source frames)``.

    Peak memory is the result plus one block, whatever the source rate: a
    2-hour 44.1 kHz file at 2 kHz is 58 MB, not the 2.5 GB of its float64 decode.
    """
    with ResampledFile(path, rate, block_frames) as audio:
        blocks = list(audio.blocks())
        samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks) if blocks else _EMPTY
        return samples, audio.source_rate, audio.source_frames

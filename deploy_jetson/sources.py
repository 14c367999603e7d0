"""Where the audio comes from, and how it is cut into the contract's windows.

Every source is an iterable of :class:`Block`: float32 mono samples at the
contract's rate, the name of the continuous stream they belong to (a
recording, or one microphone session), and whether that stream ended with
this block.  Sources yield an empty block at least every ``block_s`` seconds
even when no audio arrives, so the service loop can check for a stop request
and ping the watchdog: nothing here busy-waits or blocks for long.

- :class:`FileSource` — ``file:PATH``: an audio file (any format ``stetho.audio_io.open_audio``
  reads) or a folder of them, decoded and resampled to the contract's rate block by block
  (memory stays flat however long the file), replayed in real time or as fast as possible
  (``--fast``), optionally looping.
- :class:`StdinSource` — ``stdin``: raw PCM, signed 16-bit little-endian mono
  at the contract's rate (e.g. ``arecord -t raw -f S16_LE -c1 -r 2000 | ...``).
- :class:`MicSource` — ``mic[:NAME_OR_INDEX]``: a sounddevice input stream at
  the contract's rate, 16-bit (what USB microphones deliver; the same scale
  as stdin and WAV files); the PortAudio callback writes into a :class:`RingBuffer`
  (overflows counted); a missing or unplugged device is retried with capped
  exponential backoff while the status says 'waiting for device'.

:class:`Windower` turns a stream of blocks into windows exactly as
``stetho.segmentation.fixed_windows`` cuts a whole recording; :class:`PeakCycler`
cuts peak-to-peak cycles as ``stetho.segmentation.peak_cut_cycles`` does, from
the last few seconds; :func:`make_segmenter` picks the one a contract asks for.
"""
import collections
import logging
import os
import select
import threading
import time

import numpy as np

from stetho import AudioError
from stetho.audio_io import ResampledFile
from stetho.segmentation import cycle_peaks, fit_length, windows_instead

log = logging.getLogger("stetho.sources")

Block = collections.namedtuple("Block", "samples stream end")
Block.__doc__ = "float32 samples at the contract rate, stream name (str), end (True: the stream ended here)."

Window = collections.namedtuple("Window", "stream index start samples padded length")
Window.__new__.__defaults__ = (None,)  # (namedtuple's defaults= is Python 3.7+)
Window.__doc__ = ("One window: stream name, index within the stream, start (samples from the stream's start), "
                  "samples (float32, window length), padded (bool), length (samples of the stream it holds: the "
                  "window's length, less for a short stream's padded window, a cycle's own length for peak-cut "
                  "cycles; None: the window's length).")

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif")
_EMPTY = np.zeros(0, dtype=np.float32)


class SourceError(RuntimeError):
    """A source that cannot start (bad spec, missing file, no sounddevice): names the source."""


# ------------------------------------------------------------------------------------------------
# Windowing


class _LiveCutter(object):
    """What the live cutters share: the stream's name, its newest samples and where they start in it."""

    def reset(self, stream=None):
        self.stream = stream
        self._buffer = _EMPTY
        self._buffer_start = 0  # stream sample index of _buffer[0]
        self._received = 0
        self._index = 0

    def _append(self, samples):
        samples = np.asarray(samples, dtype=np.float32).ravel()
        if samples.size:
            self._buffer = np.concatenate([self._buffer, samples]) if self._buffer.size else samples.copy()
            self._received += samples.size

    def untouched(self):
        """True before the current stream's first sample."""
        return self._received == 0

    def whole(self, samples):
        """A whole stream in one piece (a file that came as one block): its windows, as push() then finish()
        give them; then reset."""
        return self.push(samples) + self.finish()

    def _drop(self, count):
        """Forget the oldest ``count`` samples of the buffer."""
        if count > 0:
            self._buffer = self._buffer[count:]
            self._buffer_start += count


class Windower(_LiveCutter):
    """Cut a stream into windows of ``length`` samples every ``hop`` samples, as fixed_windows does.

    Windows start at 0, hop, 2·hop, ... and only whole windows are emitted
    while the stream runs.  When a stream ends before its first window was
    full, :meth:`finish` emits one window padded by ``pad`` (wrap/zero/edge),
    provided at least ``min_samples`` arrived: the same answer
    ``fixed_windows`` gives for a short recording.
    """

    def __init__(self, length, hop, pad="wrap", min_samples=1):
        if length <= 0 or hop <= 0:
            raise ValueError("window length and hop must be positive samples (%d, %d)" % (length, hop))
        self.length, self.hop, self.pad = int(length), int(hop), pad
        self.min_samples = max(1, int(min_samples))
        self.reset()

    def reset(self, stream=None):
        _LiveCutter.reset(self, stream)
        self._next_start = 0

    def push(self, samples):
        """Add samples; return the list of windows that became complete."""
        self._append(samples)
        out = []
        while self._next_start + self.length <= self._received:
            offset = self._next_start - self._buffer_start
            out.append(Window(self.stream, self._index, self._next_start,
                              self._buffer[offset:offset + self.length].copy(), False, self.length))
            self._index += 1
            self._next_start += self.hop
        self._drop(min(self._next_start, self._received) - self._buffer_start)
        return out

    def finish(self):
        """The stream ended: the padded window of a stream shorter than one window, if any; then reset."""
        out = []
        if self._index == 0 and self._received >= self.min_samples:
            samples, padded = fit_length(self._buffer[:self._received], self.length, self.pad)
            out.append(Window(self.stream, 0, 0, samples, padded, min(self._received, self.length)))
        self.reset(self.stream)
        return out


class PeakCycler(_LiveCutter):
    """Cut a stream into peak-to-peak cycles, as ``stetho.segmentation.peak_cut_cycles`` cuts a recording.

    Every ``hop`` new samples (once ``min(context, 4 s)`` have arrived) the peaks are looked for in the last
    ``context`` samples (``stetho.segmentation.cycle_peaks``).  A cycle is emitted when both its peaks lie at
    least ``settle`` samples inside that stretch (the filter and envelope around them are then whole, so
    the peak sits where a search of the whole recording puts it), in order and once: a cycle must start no
    earlier than ``tolerance`` samples before the end of the last one emitted.  At the end of a stream the
    rest is searched without the settling margin at its end, as a whole recording is.  Each cycle is fitted
    to ``length`` samples by ``pad``; a stream with fewer than two peaks gives nothing, as prepare.py skips
    such a recording.

    The period estimate, the level scaling and the median-height rule use the last ``context`` samples
    instead of the whole recording: on a steady rhythm the cycles are the recording's, sample for sample;
    where the rhythm or the level changes, the live cut follows the recent one.
    """

    def __init__(self, length, hop, rate, lowpass_hz=1000.0, smooth_s=0.05, pad="wrap", context_s=8.0,
                 settle_s=0.25, tolerance_s=0.1):
        if length <= 0 or hop <= 0 or rate <= 0:
            raise ValueError("cycle length, hop and rate must be positive (%r, %r, %r)" % (length, hop, rate))
        self.length, self.hop, self.rate, self.pad = int(length), int(hop), int(rate), pad
        self.lowpass_hz, self.smooth_s = lowpass_hz, smooth_s
        self.context = int(round(context_s * rate))
        self.first_search = min(self.context, int(round(4.0 * rate)))
        self.settle, self.tolerance = int(round(settle_s * rate)), int(round(tolerance_s * rate))
        self.reset()

    def reset(self, stream=None):
        _LiveCutter.reset(self, stream)
        self._searched = 0  # _received at the last search
        self._next_start = 0  # end of the last cycle emitted (stream samples)

    def push(self, samples):
        """Add samples; return the list of cycles (:class:`Window`) that became certain."""
        self._append(samples)
        out = []
        if self._buffer.size >= self.first_search and self._received - self._searched >= self.hop:
            out = self._cut(final=False)
            self._searched = self._received
        self._drop(self._buffer.size - self.context)
        return out

    def finish(self):
        """The stream ended: the cycles not yet emitted, cut from what is left; then reset."""
        out = self._cut(final=True) if self._buffer.size else []
        self.reset(self.stream)
        return out

    def whole(self, samples):
        """A whole stream in one piece (a file replayed with --fast, which comes as one block up to 10 minutes):
        cut as ``peak_cut_cycles`` cuts a recording, the period, level and median height taken over all of it,
        so a replayed file gives prepare.py's cycles exactly, also where its rhythm or level changes; then reset.
        (finish() on the whole stream, never searched or trimmed to the live context before: its final search
        is over all of it, from the stream's own start to its end.)"""
        self._append(samples)
        return self.finish()

    def _cut(self, final):
        peaks = cycle_peaks(self._buffer, self.rate, self.lowpass_hz, self.smooth_s)
        low = 0 if self._buffer_start == 0 else self.settle  # the stream's own start is a real edge
        high = self._buffer.size if final else self._buffer.size - self.settle
        peaks = peaks[(peaks >= low) & (peaks <= high)]
        out = []
        for start, end in zip(peaks[:-1], peaks[1:]):
            if self._buffer_start + start < self._next_start - self.tolerance:
                continue  # emitted already (or overlapping what was)
            samples, padded = fit_length(self._buffer[start:end], self.length, self.pad)
            out.append(Window(self.stream, self._index, self._buffer_start + int(start), samples, padded,
                              min(int(end - start), self.length)))
            self._index += 1
            self._next_start = self._buffer_start + int(end)
        return out


def make_segmenter(contract):
    """The live cutter for ``contract``'s segmentation: (segmenter, note).

    'window' → :class:`Windower`; 'peaks' → :class:`PeakCycler`.  Live audio has no annotations and no end,
    so 'cycles' (annotated) and 'whole' are cut into sliding windows of the same length and hop; ``note`` says
    so (None when the live cut is the training's).
    """
    seg, rate = contract.segmentation, contract.sample_rate
    hop = int(round(seg.hop_s * rate))
    if seg.mode == "peaks":
        return PeakCycler(contract.segment_samples, hop, rate, seg.peak_lowpass_hz, seg.peak_smooth_s, seg.pad), None
    note = windows_instead(seg) if seg.mode != "window" else None
    return Windower(contract.segment_samples, hop, seg.pad, int(round(seg.min_duration_s * rate))), note


# ------------------------------------------------------------------------------------------------
# Sources


def parse_source(spec):
    """'mic', 'mic:NAME', 'mic:3', 'file:PATH', 'stdin' → (kind, argument)."""
    kind, _, argument = spec.partition(":")
    if kind == "mic":
        if argument.strip().lstrip("-").isdigit():
            return "mic", int(argument)
        return "mic", argument or None
    if kind == "file":
        if not argument:
            raise SourceError("source 'file:' needs a path (file:recording.wav or file:folder/)")
        return "file", argument
    if kind == "stdin" and not argument:
        return "stdin", None
    raise SourceError("unknown source %r: use mic[:NAME_OR_INDEX], file:PATH or stdin" % spec)


def list_audio_files(path):
    """A file → [file]; a folder → its audio files, recursively, in sorted order."""
    if os.path.isdir(path):
        found = []
        for root, _, names in sorted(os.walk(path)):
            found.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(AUDIO_EXTENSIONS))
        if not found:
            raise SourceError("%s: folder holds no audio files (%s)" % (path, ", ".join(AUDIO_EXTENSIONS)))
        return found
    if not os.path.isfile(path):
        raise SourceError("%s: no such file or folder" % path)
    return [path]


def _wait(stop, seconds, sleep):
    """Sleep up to ``seconds`` but return at once when ``stop`` is set. True when stopped."""
    if stop is not None:
        return stop.wait(max(0.0, seconds))
    sleep(max(0.0, seconds))
    return False


class FileSource(object):
    """Replay an audio file or a folder of them at the contract's rate, streamed: memory stays flat.

    Each file is decoded and resampled block by block (``stetho.audio_io.ResampledFile``: the very
    samples prepare.py renders).  ``realtime``: deliver blocks of ``block_s`` seconds paced by the wall
    clock (as a microphone would); otherwise (``--fast``) blocks of ``fast_block_s`` seconds as fast as
    they decode (a file no longer than that, 10 minutes by default, comes as one block: the peak-cycle cutter
    then sees the whole recording and cuts exactly the cycles prepare.py cuts, which it cannot from 0.1 s
    blocks; at the contract's rate 10 minutes is 1.2 M samples at 2 kHz, 9.6 M at the cough preset's 16 kHz).  ``loop``: start again after the last
    file.  A file that cannot be opened is reported (naming it) and skipped; one that fails part-way
    (truncated, NaN samples, out of memory) ends its stream there, keeping the windows already cut, and
    the replay goes on with the next file.  ``failed`` maps each such path to its error.  The stream
    name is the file's stem.
    """

    def __init__(self, path, rate, realtime=True, loop=False, block_s=0.1, state=None,
                 clock=time.monotonic, sleep=time.sleep, fast_block_s=600.0):
        self.path = path
        self.files = list_audio_files(path)
        self.rate = int(rate)
        self.realtime = realtime
        self.loop = loop
        self.block = max(1, int(round(block_s * self.rate)))
        self.fast_block = max(self.block, int(round(fast_block_s * self.rate)))
        self.state = state
        self.clock, self.sleep = clock, sleep
        self.failed = collections.OrderedDict()
        self.description = "file:%s (%d file%s, %s)" % (path, len(self.files), "" if len(self.files) == 1 else "s",
                                                      "real time" if realtime else "fast")

    def _fail(self, path, error, what):
        message = str(error) if isinstance(error, AudioError) else "%s: %s" % (path, _describe(error))
        log.error("%s %s", what, message)
        self.failed[path] = message

    def blocks(self, stop=None):
        if self.state is not None:
            self.state.set_device(self.description, "replaying")
        while True:
            played = 0
            for path in self.files:
                if stop is not None and stop.is_set():
                    return
                try:
                    audio = ResampledFile(path, self.rate)
                except (AudioError, MemoryError) as error:
                    self._fail(path, error, "skipped")
                    continue
                stream = os.path.splitext(os.path.basename(path))[0]
                delivered = 0
                try:
                    size = self.block if self.realtime else self.fast_block
                    started = self.clock()
                    for samples, end in _pieces(audio.blocks(), size):
                        if self.realtime:
                            due = started + delivered / float(self.rate)
                            if _wait(stop, due - self.clock(), self.sleep):
                                return
                        delivered += samples.size
                        yield Block(samples, stream, end)
                    played += 1
                except (AudioError, MemoryError) as error:
                    self._fail(path, error, "stopped reading" if delivered else "skipped")
                    if delivered:
                        played += 1
                        yield Block(_EMPTY, stream, True)  # the windows cut so far stand; the stream ends here
                finally:
                    audio.close()
            if not self.loop or played == 0:
                break
        if self.state is not None:
            self.state.set_device(self.description, "finished")


def _describe(error):
    if isinstance(error, MemoryError):
        return "out of memory while reading it"
    return str(error) or type(error).__name__


def _pieces(blocks, size):
    """Re-cut an iterable of float32 arrays into (piece of ``size`` samples, is_last) pairs; the last may be
    shorter (or empty, for an input with no samples)."""
    pending, count = [], 0
    for block in blocks:
        pending.append(block)
        count += block.size
        if count > size:  # more than a piece: this one is not the last
            joined = np.concatenate(pending)
            cut = (joined.size - 1) // size * size  # keep at least one sample back for the last piece
            for begin in range(0, cut, size):
                yield joined[begin:begin + size], False
            pending, count = [joined[cut:]], joined.size - cut
    joined = np.concatenate(pending) if pending else _EMPTY
    yield joined, True


class StdinSource(object):
    """Raw PCM from a binary stream (default: standard input): s16le mono at the contract's rate."""

    def __init__(self, rate, stream=None, block_s=0.1, state=None):
        import sys
        self.rate = int(rate)
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.block_bytes = 2 * max(1, int(round(block_s * self.rate)))
        self.timeout = block_s
        self.state = state
        self.description = "stdin (s16le mono %d Hz)" % self.rate

    def blocks(self, stop=None):
        if self.state is not None:
            self.state.set_device(self.description, "capturing")
        fd = self.stream.fileno()
        carry = b""
        while stop is None or not stop.is_set():
            ready, _, _ = select.select([fd], [], [], self.timeout)
            if not ready:
                yield Block(_EMPTY, "stdin", False)
                continue
            data = os.read(fd, self.block_bytes)
            if not data:
                break
            data = carry + data
            whole = len(data) - len(data) % 2
            carry = data[whole:]
            samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / np.float32(32768.0)
            yield Block(samples, "stdin", False)
        yield Block(_EMPTY, "stdin", True)
        if self.state is not None:
            self.state.set_device(self.description, "finished")


class RingBuffer(object):
    """A fixed-size float32 FIFO between the audio callback thread (writer) and the loop (reader).

    When the reader falls behind, the oldest samples are overwritten and
    counted in ``dropped`` (samples), never blocking the audio thread.
    """

    def __init__(self, capacity):
        self._data = np.zeros(int(capacity), dtype=np.float32)
        self._start = 0
        self._size = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @property
    def capacity(self):
        return self._data.size

    def write(self, samples):
        samples = np.asarray(samples, dtype=np.float32).ravel()
        with self._lock:
            if samples.size > self.capacity:
                self.dropped += samples.size - self.capacity
                samples = samples[-self.capacity:]
            overflow = self._size + samples.size - self.capacity
            if overflow > 0:
                self.dropped += overflow
                self._start = (self._start + overflow) % self.capacity
                self._size -= overflow
            end = (self._start + self._size) % self.capacity
            first = min(samples.size, self.capacity - end)
            self._data[end:end + first] = samples[:first]
            self._data[:samples.size - first] = samples[first:]
            self._size += samples.size
        self._ready.set()

    def read(self, timeout):
        """All buffered samples (possibly none after ``timeout`` seconds)."""
        self._ready.wait(timeout)
        with self._lock:
            self._ready.clear()
            if self._size == 0:
                return _EMPTY
            index = (self._start + np.arange(self._size)) % self.capacity
            out = self._data[index]
            self._start = (self._start + self._size) % self.capacity
            self._size = 0
            return out


class MicSource(object):
    """Live capture with sounddevice at the contract's rate, surviving a missing or unplugged device.

    ``device``: None (the default input), a name (substring, as sounddevice
    matches it) or an index.  When the device cannot be opened, or delivers no
    audio for ``stall_s`` seconds, the stream is closed, PortAudio is
    re-initialised (so a re-plugged USB device is seen again) and opening is
    retried after ``retry_initial`` s, doubling up to ``retry_max`` s; the
    state says 'waiting for device' meanwhile.  Each reconnection starts a new
    stream name (mic#1, mic#2, ...), so windows never straddle a gap.
    """

    def __init__(self, device, rate, block_s=0.1, state=None, retry_initial=0.5, retry_max=30.0, stall_s=2.0,
                 buffer_s=30.0, sounddevice=None):
        self.device = device
        self.rate = int(rate)
        self.block_s = block_s
        self.state = state
        self.retry_initial, self.retry_max = float(retry_initial), float(retry_max)
        self.stall_s = max(float(stall_s), 4 * block_s)
        self.ring = RingBuffer(int(buffer_s * self.rate))
        self.overflows = 0
        self.attempts = 0
        self.sessions = 0
        self._sd = sounddevice
        self._reported_drops = 0
        self._reported_overflows = 0
        self.stuck = False
        self.description = "mic:%s @ %d Hz" % ("default" if device is None else device, self.rate)

    def _module(self):
        if self._sd is None:
            try:
                import sounddevice
            except (ImportError, OSError) as error:
                raise SourceError("microphone capture needs the sounddevice package and libportaudio2 (%s)" % error)
            self._sd = sounddevice
        return self._sd

    def _callback(self, indata, frames, time_info, status):
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        samples = indata[:, 0] if indata.ndim == 2 else indata
        self.ring.write(samples.astype(np.float32) / np.float32(32768.0))

    def _reinitialise(self, sd):
        """Make PortAudio rescan devices (a USB device plugged in after start is otherwise invisible)."""
        terminate, initialize = getattr(sd, "_terminate", None), getattr(sd, "_initialize", None)
        if terminate is not None and initialize is not None:
            try:
                terminate()
                initialize()
            except Exception as error:  # PortAudio in a bad state: the next open attempt reports it
                log.debug("PortAudio re-initialisation failed: %s", error)

    def _open(self, sd):
        info = sd.query_devices(self.device, "input")
        stream = sd.InputStream(samplerate=self.rate, channels=1, dtype="int16", device=self.device,
                                blocksize=max(1, int(round(self.block_s * self.rate))), callback=self._callback)
        stream.start()
        return stream, info.get("name", str(self.device)) if hasattr(info, "get") else str(self.device)

    def _close(self, stream, timeout=1.0):
        """Abort and close the stream, giving up after ``timeout`` s.

        A driver stuck in a blocking read (a dead USB device, a FIFO-backed
        test device) would otherwise hold the service past its stop deadline;
        the stuck stream is left to the process exit and ``stuck`` is set.
        """
        def close():
            try:
                stream.abort()
                stream.close()
            except Exception as error:
                log.debug("closing the audio stream: %s", error)
        closer = threading.Thread(target=close, name="stetho-audio-close", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            self.stuck = True
            log.error("the audio stream did not close within %.1f s (driver blocked); abandoning it", timeout)

    def _set(self, status, detail=""):
        if self.state is not None:
            self.state.set_device(self.description + (" — " + detail if detail else ""), status)

    def _account_drops(self):
        if self.ring.dropped > self._reported_drops:
            log.warning("audio ring buffer overflow: %d samples dropped (processing fell behind)",
                        self.ring.dropped - self._reported_drops)
            if self.state is not None:
                self.state.add_dropped(self.ring.dropped - self._reported_drops)
            self._reported_drops = self.ring.dropped
        if self.overflows > self._reported_overflows:
            log.warning("audio input overflow reported by the device (%d so far)", self.overflows)
            self._reported_overflows = self.overflows

    def blocks(self, stop=None):
        sd = self._module()
        delay = self.retry_initial
        while stop is None or not stop.is_set():
            self.attempts += 1
            try:
                stream, name = self._open(sd)
            except Exception as error:  # PortAudioError, ValueError (no such device), OSError...
                message = " ".join(str(error).split()) or type(error).__name__
                log.warning("audio device %s unavailable (%s); retrying in %.1f s",
                            "default" if self.device is None else self.device, message, delay)
                self._set("waiting for device", "retry in %.1f s: %s" % (delay, message))
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    yield Block(_EMPTY, None, False)  # heartbeat: the loop stays responsive
                    if _wait(stop, min(self.block_s * 2, deadline - time.monotonic()), time.sleep):
                        return
                delay = min(self.retry_max, delay * 2.0)
                if not self.stuck:
                    self._reinitialise(sd)
                continue
            self.sessions += 1
            stream_name = "mic#%d" % self.sessions
            log.info("capturing from %s (%s) at %d Hz", name, self.description, self.rate)
            self._set("capturing", name)
            delay = self.retry_initial
            last_audio = time.monotonic()
            lost = None
            try:
                while stop is None or not stop.is_set():
                    samples = self.ring.read(self.block_s)
                    self._account_drops()
                    now = time.monotonic()
                    if samples.size:
                        last_audio = now
                        yield Block(samples, stream_name, False)
                    else:
                        yield Block(_EMPTY, stream_name, False)
                    if not stream.active:
                        lost = "stream stopped"
                    elif now - last_audio > self.stall_s:
                        lost = "no audio for %.1f s" % (now - last_audio)
                    if lost:
                        break
            finally:
                self._close(stream)
            yield Block(self.ring.read(0), stream_name, True)
            if lost:
                log.warning("audio device lost (%s); reconnecting", lost)
                self._set("waiting for device", lost)
                if not self.stuck:
                    self._reinitialise(sd)
        self._set("stopped")


def open_source(spec, contract, fast=False, loop=False, state=None, block_s=0.1, retry_initial=0.5,
                retry_max=30.0):
    """The source object for ``spec`` (see :func:`parse_source`) at ``contract.sample_rate``."""
    kind, argument = parse_source(spec)
    rate = contract.sample_rate
    if kind == "file":
        return FileSource(argument, rate, realtime=not fast, loop=loop, block_s=block_s, state=state)
    if kind == "stdin":
        return StdinSource(rate, block_s=block_s, state=state)
    return MicSource(argument, rate, block_s=block_s, state=state, retry_initial=retry_initial, retry_max=retry_max)

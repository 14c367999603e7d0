"""Where each window's result goes.

- :class:`ConsoleSink` — the imagenet.py line on stdout: ``imagenet:  97.31% class #2 (normal)``
  (or ``imagenet:  no signal`` / ``poor contact`` / ``uncertain (61.20% class #1 (murmur))``).
- :class:`JsonlSink` — ``results.jsonl``, one JSON object per window, flushed per line.
- :class:`OverlaySink` — ``latest.png``: the overlay of the latest window, replaced atomically
  (written to ``.part`` then renamed), so a reader never sees half an image.
- :class:`WavArchiveSink` — the raw audio of flagged windows as WAV files (``--archive DIR``).
- :class:`ImageSink` — every window's spectrogram as ``<stream>__<index>.png`` (``--save-images DIR``),
  the very file name and pixels train_host/prepare.py writes for the same recording.
- :class:`VideoSink` — jetson_utils ``videoOutput`` (display://0, rtp://HOST:PORT, file://out.mp4)
  when jetson_utils is importable (NOT EXECUTED here: no jetson_utils in CI).

A sink has ``emit(result, window, image, overlay)`` and ``close()``: ``window`` the
:class:`~deploy_jetson.sources.Window` (raw samples), ``image`` the spectrogram the
network saw, ``overlay`` the annotated image (or None); ``result`` is the dict
written to results.jsonl (keys: time, stream, window, start_s, end_s, probabilities,
smoothed, decision, class_index, label, confidence, quality, quality_metrics, latency_ms, timing_ms, backend).
"""
import json
import logging
import os
import re
import sys
import threading
import time

import numpy as np

from stetho import write_wav
from stetho.contract import segment_filename
from stetho.png import encode_png, write_png

log = logging.getLogger("stetho.sinks")


def imagenet_line(result):
    """The stdout line for one result, in jetson-inference's format.

    ``imagenet:  97.31% class #2 (normal)``; when the smoothed top class is
    below the threshold ``imagenet:  uncertain (61.20% class #1 (murmur))``;
    when the quality gate rejected the window ``imagenet:  no signal`` or
    ``imagenet:  poor contact``.
    """
    if result.get("class_index") is None:
        return "imagenet:  %s" % result["decision"]
    core = "%05.2f%% class #%d (%s)" % (100.0 * result["confidence"], result["class_index"], result["label"])
    if result["decision"] == "uncertain":
        return "imagenet:  uncertain (%s)" % core
    return "imagenet:  " + core


class ConsoleSink(object):
    """Print the imagenet.py line, prefixed by the window's span, and flush."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        line = imagenet_line(result)
        self.stream.write("%s  [%s %6.2f-%6.2f s, %s, %.1f ms]\n" % (line, result["stream"], result["start_s"],
                                                                      result["end_s"], result["quality"],
                                                                      result["latency_ms"]))
        self.stream.flush()

    def close(self):
        self.stream.flush()


class JsonlSink(object):
    """Append results as JSON Lines; every line is written at once (and fsynced every ``fsync_every`` lines).

    Each line goes to the file in one ``os.write`` on a descriptor opened with O_APPEND: a reader following
    the file sees whole lines, and no Python buffer holds a result back (nor costs its layers per window).
    """

    def __init__(self, path, fsync_every=10):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fsync_every = fsync_every
        self.lines = 0

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        data = (json.dumps(result) + "\n").encode("utf-8")  # keys in the service's order (insertion order)
        while data:
            data = data[os.write(self.fd, data):]  # a regular file takes it all; a short write is finished
        self.lines += 1
        if self.fsync_every and self.lines % self.fsync_every == 0:
            os.fsync(self.fd)

    def close(self):
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


class OverlaySink(object):
    """Keep ``path`` (latest.png) holding the newest overlay, written atomically (``.part`` then rename).

    Encoding and writing (2-4 ms for 224×224 here) happen on a background thread with a one-slot
    mailbox, so the classification loop never waits for the disk: if windows come faster than PNGs
    can be written (``--fast`` replays), older overlays are skipped and only the newest is written.
    ``last_png`` holds the bytes of the last PNG written (for the status page).  ``close()`` writes
    the pending overlay before returning.  PNG level 1: the image is replaced every hop, speed beats size.
    """

    def __init__(self, path, state=None, level=1, background=True):
        self.path = path
        self.level = level
        self.last_png = None
        self.written = 0
        self.write_s = 0.0
        self._pending = None
        self._busy = False
        self._closing = False
        self._condition = threading.Condition()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="stetho-overlay", daemon=True)
            self._thread.start()

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        if overlay is None:
            return
        if self._thread is None:
            self._write(overlay)
            return
        with self._condition:
            self._pending = overlay
            self._condition.notify()

    def _write(self, overlay):
        started = time.perf_counter()
        data = encode_png(overlay, self.level)
        tmp = self.path + ".part"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.path)
        self.last_png = data
        self.written += 1
        self.write_s += time.perf_counter() - started

    def _run(self):
        while True:
            with self._condition:
                while self._pending is None and not self._closing:
                    self._condition.wait()
                overlay, self._pending = self._pending, None
                closing = self._closing
                self._busy = overlay is not None
            if overlay is not None:
                try:
                    self._write(overlay)
                except (IOError, OSError) as error:
                    log.error("cannot write %s: %s", self.path, error)
            with self._condition:
                self._busy = False
                self._condition.notify_all()
            if closing and overlay is None:
                return

    def flush(self, timeout=2.0):
        """Wait until the newest overlay is on disk (live windows come 1.5 s apart: it always is)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while (self._pending is not None or self._busy) and time.monotonic() < deadline:
                self._condition.wait(max(0.0, deadline - time.monotonic()))

    def close(self):
        if self._thread is not None:
            with self._condition:
                self._closing = True
                self._condition.notify()
            self._thread.join(2.0)


def flagged_decisions(classes, normal=("normal", "N", "healthy")):
    """Default decisions worth archiving: every class not named like 'normal', and 'uncertain'."""
    return set(c for c in classes if c not in normal) | {"uncertain"}


class WavArchiveSink(object):
    """Write the raw audio of windows whose decision is in ``decisions`` to ``folder`` as 16-bit WAV.

    File name: ``<time>_<stream>_<window>_<decision>.wav`` (characters outside
    [A-Za-z0-9._-] replaced).  At most ``max_files`` are kept per run, so a
    long abnormal stretch cannot fill the disk.
    """

    def __init__(self, folder, rate, decisions, max_files=1000):
        self.folder = folder
        self.rate = int(rate)
        self.decisions = set(decisions)
        self.max_files = int(max_files)
        self.written = 0
        if not os.path.isdir(folder):
            os.makedirs(folder)

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        if window is None or result["decision"] not in self.decisions or self.written >= self.max_files:
            return
        stamp = "%.3f" % result["time"]
        name = "%s_%s_%04d_%s.wav" % (stamp, result["stream"], result["window"], result["decision"])
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        write_wav(os.path.join(self.folder, name), np.clip(window.samples, -1.0, 1.0), self.rate)
        self.written += 1
        if self.written == self.max_files:
            log.warning("archive %s reached %d files; no more this run", self.folder, self.max_files)

    def close(self):
        pass


class ImageSink(object):
    """Write the spectrogram of every window as ``<stream>__<index:04d>.png``, as prepare.py writes it
    (indexed colour with the contract's palette when given the levels, else RGB)."""

    def __init__(self, folder, palette=None):
        self.folder = folder
        self.palette = palette
        if not os.path.isdir(folder):
            os.makedirs(folder)

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        path = os.path.join(self.folder, segment_filename(result["stream"], result["window"]))
        if levels is not None and self.palette is not None:
            write_png(path, levels, palette=self.palette)
        elif image is not None:
            write_png(path, image)

    def close(self):
        pass


class VideoSink(object):
    """jetson_utils.videoOutput: display://0, rtp://host:port, file://out.mp4 (Jetson only)."""

    def __init__(self, uri, utils=None):
        if utils is None:
            try:
                import jetson_utils as utils
            except ImportError:
                try:
                    import jetson.utils as utils
                except ImportError as error:
                    raise RuntimeError("--video %s needs jetson_utils (jetson-inference), not installed here (%s)"
                                       % (uri, error))
        self.utils = utils
        self.output = utils.videoOutput(uri)
        self.uri = uri

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        if overlay is None:
            return
        self.output.Render(self.utils.cudaFromNumpy(np.ascontiguousarray(overlay)))
        if hasattr(self.output, "SetStatus"):
            self.output.SetStatus("stetho | %s | %.1f ms" % (result["decision"], result["latency_ms"]))

    def close(self):
        if hasattr(self.output, "Close"):
            self.output.Close()

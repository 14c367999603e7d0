"""Where each window's result goes.

- :class:`ConsoleSink` — the imagenet.py line on stdout: ``imagenet:  97.31% class #2 (normal)``
  (or ``imagenet:  no signal`` / ``poor contact`` / ``uncertain (61.20% class #1 (murmur))``).
- :class:`JsonlSink` — ``results.jsonl``, one JSON object per window, flushed per line, rotated by
  size (``results.jsonl.1`` .. ``.N``); it holds the ``--output`` lock (one service per folder).
- :class:`OverlaySink` — ``latest.png``: the overlay of the latest window, replaced atomically
  (written to ``.part`` then renamed), so a reader never sees half an image.
- :class:`WavArchiveSink` — the raw audio of flagged windows as WAV files (``--archive DIR``), bounded
  by total size across restarts (oldest first) and paused under a free-space floor.
- :class:`ImageSink` — every window's spectrogram as ``<stream>__<index>.png`` (``--save-images DIR``),
  the very file name and pixels train_host/prepare.py writes for the same recording.
- :class:`VideoSink` — jetson_utils ``videoOutput`` (display://0, rtp://HOST:PORT, file://out.mp4)
  when jetson_utils is importable (NOT EXECUTED here: no jetson_utils in CI).

A sink has ``emit(result, window, image, overlay)`` and ``close()``: ``window`` the
:class:`~deploy_jetson.sources.Window` (raw samples), ``image`` the spectrogram the
network saw, ``overlay`` the annotated image (an array, or an :class:`~deploy_jetson.overlay.OverlayFrame`
that :func:`~deploy_jetson.overlay.as_image` draws; or None); ``result`` is the dict
written to results.jsonl (keys: time, stream, window, start_s, end_s, probabilities,
smoothed, decision, class_index, label, confidence, quality, quality_metrics, latency_ms, timing_ms, backend).

A sink that cannot write (a full disk, an I/O error) never stops the service: it reports through
``deploy_jetson.disk.SinkHealth`` (logged once per change, shown on the status page and in /metrics)
and tries again with the next window; :func:`emit_all` catches what a sink itself did not.
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
from deploy_jetson.disk import (ARCHIVE_MAX_MB, DISK_FULL, MB, MIN_FREE_MB, RESULTS_KEEP, RESULTS_MAX_MB,
                                SinkHealth, describe_error, free_bytes, lock_output)
from deploy_jetson.overlay import as_image

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

    name = "console"

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

    Bounded: when a line would take the file past ``max_bytes`` it is renamed ``results.jsonl.1`` (the
    older ones shifting to .2 .. ``.keep``, the oldest dropped) and a new file is started.  A write that
    fails (a full disk: ENOSPC) is undone (no half line stays), reported to ``health`` and kept in memory
    (at most ``max_pending`` lines, the oldest dropped beyond) to be written first once the disk has room.
    ``lock``: hold the folder for this process alone (:func:`deploy_jetson.disk.lock_output`).
    """

    name = "results"

    def __init__(self, path, fsync_every=10, max_bytes=RESULTS_MAX_MB * MB, keep=RESULTS_KEEP, health=None,
                 max_pending=1000, lock=True):
        self.path = path
        self.fsync_every = fsync_every
        self.max_bytes = int(max_bytes)
        self.keep = max(0, int(keep))
        self.health = health if health is not None else SinkHealth()
        self.max_pending = max(1, int(max_pending))
        self.lines = 0
        self.dropped = 0
        self.rotations = 0
        self._pending = []
        self._lock = lock_output(os.path.dirname(os.path.abspath(path))) if lock else None
        self.fd = None
        try:
            self._open()
        except OSError as error:
            if error.errno not in DISK_FULL:
                self.close()
                raise
            self.health.error(self.name, "%s: %s" % (path, describe_error(error)))

    def _open(self):
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        info = os.fstat(self.fd)
        self._regular = (info.st_mode & 0o170000) == 0o100000
        self._size = info.st_size if self._regular else 0

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        self._pending.append((json.dumps(result) + "\n").encode("utf-8"))  # keys in the service's order
        if len(self._pending) > self.max_pending:
            del self._pending[0]
            self.dropped += 1
        self._write_pending()

    def _write_pending(self):
        try:
            if self.fd is None:
                self._open()
            while self._pending:
                data = self._pending[0]
                if self._regular and self.max_bytes > 0 and self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                self._write(data)
                del self._pending[0]
                self.lines += 1
                if self._regular and self.fsync_every and self.lines % self.fsync_every == 0:
                    os.fsync(self.fd)
        except OSError as error:
            held = len(self._pending)
            self.health.error(self.name, "%s: %s; %d line(s) held in memory%s"
                              % (self.path, describe_error(error), held,
                                 ", %d dropped" % self.dropped if self.dropped else ""), describe_error(error))
            return False
        self.health.ok(self.name)
        return True

    def _write(self, data):
        start = self._size
        try:
            while data:
                written = os.write(self.fd, data)  # a regular file takes it all; a short write is finished
                data = data[written:]
                self._size += written
        except OSError:
            if self._regular and self._size != start:  # no half line: a reader must only ever see whole ones
                try:
                    os.ftruncate(self.fd, start)
                    self._size = start
                except OSError:
                    pass
            raise

    def _rotate(self):
        """results.jsonl → .1 → .2 ... → .keep (the oldest is dropped); then a new results.jsonl."""
        os.close(self.fd)
        self.fd = None
        if self.keep == 0:
            os.remove(self.path)
        else:
            for index in range(self.keep - 1, 0, -1):
                older = "%s.%d" % (self.path, index)
                if os.path.exists(older):
                    os.replace(older, "%s.%d" % (self.path, index + 1))
            os.replace(self.path, self.path + ".1")
        self.rotations += 1
        log.info("rotated %s (%d MB limit, %d kept)", self.path, self.max_bytes // MB, self.keep)
        self._open()

    def close(self):
        if self._pending:
            if not self._write_pending():
                log.error("%s: %d result line(s) could not be written and are lost", self.path, len(self._pending))
                self._pending = []
        if self.fd is not None:
            try:
                if self._regular:
                    os.fsync(self.fd)
            except OSError as error:
                log.error("%s: %s", self.path, describe_error(error))
            os.close(self.fd)
            self.fd = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class OverlaySink(object):
    """Keep ``path`` (latest.png) holding the newest overlay, written atomically (``.part`` then rename).

    Drawing (an :class:`~deploy_jetson.overlay.OverlayFrame`), encoding and writing happen on a background
    thread with a one-slot mailbox, so the classification loop never waits for them: if windows come faster than PNGs
    can be written (``--fast`` replays), older overlays are skipped and only the newest is written.
    ``last_png`` holds the bytes of the last PNG written (for the status page).  ``close()`` writes
    the pending overlay before returning.  PNG level 1: the image is replaced every hop, speed beats size.
    """

    name = "latest.png"

    def __init__(self, path, state=None, level=1, background=True, health=None):
        self.path = path
        self.level = level
        self.health = health if health is not None else SinkHealth(state)
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
        data = encode_png(as_image(overlay), self.level)
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
                    self.health.ok(self.name)
                except (IOError, OSError) as error:
                    self.health.error(self.name, "%s: %s" % (self.path, describe_error(error)))
                    _remove_quietly(self.path + ".part")
                except Exception as error:  # an overlay that cannot be drawn: reported; the thread carries on
                    self.health.error(self.name, "%s: cannot draw the overlay (%s: %s)"
                                      % (self.path, type(error).__name__, error))
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


_ARCHIVE_NAME = re.compile(r"^\d+\.\d{3}_.*\.wav$")  # what WavArchiveSink writes: <epoch s>_<stream>_...


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


class WavArchiveSink(object):
    """Write the raw audio of windows whose decision is in ``decisions`` to ``folder`` as 16-bit WAV.

    File name: ``<time>_<stream>_<window>_<decision>.wav`` (characters outside
    [A-Za-z0-9._-] replaced).  Bounded across restarts: the archive's files
    (those named so, found in ``folder`` at start) total at most ``max_bytes``,
    the oldest removed first; below ``min_free_bytes`` of free space on the
    folder's file system nothing is written ('paused', reported to ``health``),
    so the archive stops well before results.jsonl runs out of room.
    """

    name = "archive"

    def __init__(self, folder, rate, decisions, max_bytes=ARCHIVE_MAX_MB * MB, min_free_bytes=MIN_FREE_MB * MB,
                 health=None, free=free_bytes):
        self.folder = folder
        self.rate = int(rate)
        self.decisions = set(decisions)
        self.max_bytes = int(max_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.health = health if health is not None else SinkHealth()
        self.free = free
        self.written = 0
        self.removed = 0
        if not os.path.isdir(folder):
            os.makedirs(folder)
        self._files = []  # (name, bytes), oldest first
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if _ARCHIVE_NAME.match(name) and os.path.isfile(path):
                self._files.append((name, os.path.getsize(path)))
        self.total = sum(size for _, size in self._files)
        self._trim()

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        if window is None or result["decision"] not in self.decisions:
            return
        size = 44 + 2 * len(window.samples)
        try:
            free = self.free(self.folder)
            if free - size < self.min_free_bytes:
                self.health.paused(self.name, "%s: paused, %.0f MB free is under the %.0f MB floor"
                                   % (self.folder, free / float(MB), self.min_free_bytes / float(MB)), "floor")
                return
            stamp = "%.3f" % result["time"]
            name = "%s_%s_%04d_%s.wav" % (stamp, result["stream"], result["window"], result["decision"])
            name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            path = os.path.join(self.folder, name)
            try:
                write_wav(path, np.clip(window.samples, -1.0, 1.0), self.rate)
            except OSError:
                _remove_quietly(path + ".part")
                raise
        except OSError as error:
            self.health.error(self.name, "%s: %s" % (self.folder, describe_error(error)))
            return
        self._files.append((name, os.path.getsize(path)))
        self.total += self._files[-1][1]
        self.written += 1
        self._trim()
        self.health.ok(self.name)

    def _trim(self):
        """Remove the oldest files until the archive is within ``max_bytes``."""
        while self._files and self.total > self.max_bytes:
            name, size = self._files.pop(0)
            try:
                os.remove(os.path.join(self.folder, name))
            except OSError as error:
                if os.path.exists(os.path.join(self.folder, name)):
                    log.error("archive %s: cannot remove %s (%s)", self.folder, name, describe_error(error))
            self.total -= size
            self.removed += 1

    def close(self):
        pass


class ImageSink(object):
    """Write the spectrogram of every window as ``<stream>__<index:04d>.png``, as prepare.py writes it
    (indexed colour with the contract's palette when given the levels, else RGB).  An archive too: it
    pauses below ``min_free_bytes`` of free space, and a failed write is reported, not raised."""

    name = "images"

    def __init__(self, folder, palette=None, min_free_bytes=MIN_FREE_MB * MB, health=None, free=free_bytes):
        self.folder = folder
        self.palette = palette
        self.min_free_bytes = int(min_free_bytes)
        self.health = health if health is not None else SinkHealth()
        self.free = free
        if not os.path.isdir(folder):
            os.makedirs(folder)

    def emit(self, result, window=None, image=None, overlay=None, levels=None):
        path = os.path.join(self.folder, segment_filename(result["stream"], result["window"]))
        try:
            free = self.free(self.folder)
            if free < self.min_free_bytes:
                self.health.paused(self.name, "%s: paused, %.0f MB free is under the %.0f MB floor"
                                   % (self.folder, free / float(MB), self.min_free_bytes / float(MB)), "floor")
                return
            if levels is not None and self.palette is not None:
                write_png(path, levels, palette=self.palette)
            elif image is not None:
                write_png(path, image)
        except OSError as error:
            _remove_quietly(path + ".part")
            self.health.error(self.name, "%s: %s" % (self.folder, describe_error(error)))
            return
        self.health.ok(self.name)

    def close(self):
        pass


def emit_all(sinks, health, result, window=None, image=None, overlay=None, levels=None):
    """Hand one window to every sink; a sink that raises OSError (stdout on a full disk, a video device gone)
    is reported to ``health`` under its name and the others still get the window."""
    for sink in sinks:
        try:
            sink.emit(result, window, image, overlay, levels)
        except (IOError, OSError) as error:
            health.error(getattr(sink, "name", type(sink).__name__), describe_error(error))


class VideoSink(object):
    """jetson_utils.videoOutput: display://0, rtp://host:port, file://out.mp4 (Jetson only)."""

    name = "video"

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
        self.output.Render(self.utils.cudaFromNumpy(np.ascontiguousarray(as_image(overlay))))
        if hasattr(self.output, "SetStatus"):
            self.output.SetStatus("stetho | %s | %.1f ms" % (result["decision"], result["latency_ms"]))

    def close(self):
        if hasattr(self.output, "Close"):
            self.output.Close()

"""Where each finished exam goes: ``exams.jsonl``, a summary picture, an ``exam:`` line, the status page.

- ``OUTPUT/exams.jsonl``: one JSON line per exam (deploy_jetson/exam.py's record, plus ``png``), appended in one
  ``os.write`` and fsynced: a reader never sees half a line, and a stop mid-exam writes one complete line marked
  ``interrupted``.
- ``OUTPUT/exams/exam-<UTC time>-<n>.png``: the summary picture (deploy_jetson/exam_png.py), written to ``.part``
  then renamed; only the newest ``keep`` are kept (0: none written).
- ``--keep-audio DIR``: the raw audio of every exam with a verdict, ``exam-<UTC time>-<n>-<stream>.wav`` at
  the model's rate: the recordings ``train_host/adapt.py`` adapts a model to a new stethoscope with.  Bounded
  across restarts by ``keep_audio_max_bytes`` (the oldest go first) and paused under the free-space floor.
- stdout: the ``exam:`` line (deploy_jetson/exam.exam_line), unless quiet.
- the service state: the status page's last exams, ``/metrics``' exam counters, sd_notify's STATUS.

A disk that refuses a write (full, read-only) costs that exam's file, never the service: the error is logged
once per kind and counted in ``errors``.
"""
import json
import logging
import os
import sys
import time

import re

import numpy as np

from stetho import write_wav
from stetho.drift import DEVICE_WARNING
from stetho.png import write_png
from deploy_jetson.disk import MB, free_bytes
from deploy_jetson.exam import exam_audio, exam_line
from deploy_jetson.exam_png import draw_exam

log = logging.getLogger("stetho.exams")
PICTURES = "exams"
KEPT_NAME = re.compile(r"^exam-\d{8}T\d{6}Z-\d{4}-[A-Za-z0-9._-]*\.wav$")


class ExamOutputs(object):
    """Callable ``(record, exam)``: write the exam's line and picture, print it, tell the state."""

    def __init__(self, output, keep, palette, rule, classes, state=None, quiet=False, stream=None, keep_audio=None,
                 rate=None, keep_audio_max_bytes=1024 * MB, min_free_bytes=256 * MB, free=free_bytes):
        self.path = os.path.join(output, "exams.jsonl")
        self.folder = os.path.join(output, PICTURES)
        self.keep = max(0, int(keep))
        self.palette, self.rule, self.classes = palette, rule, list(classes)
        self.state = state
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        self.errors = 0
        self._reported = set()
        self.written = 0
        self.keep_audio, self.rate = keep_audio, rate
        self.keep_audio_max_bytes, self.min_free_bytes, self.free = keep_audio_max_bytes, min_free_bytes, free
        self.kept = []  # (name, bytes) of the kept recordings, oldest first
        self.device_flag = False  # the device-level drift check's last flag (logged when it changes)
        if keep_audio:
            if not os.path.isdir(keep_audio):
                os.makedirs(keep_audio)
            for name in sorted(os.listdir(keep_audio)):
                if KEPT_NAME.match(name):
                    self.kept.append((name, os.path.getsize(os.path.join(keep_audio, name))))

    def __call__(self, record, exam):
        record["png"] = self._picture(record, exam)
        record["audio"] = self._keep_audio(record, exam)
        self._append(record)
        if not self.quiet:
            self.stream.write(exam_line(record) + "\n")
            self.stream.flush()
        if self.state is not None:
            self.state.record_exam(record)
        device = record.get("device_drift") or {}
        if device.get("flag") is not None and bool(device["flag"]) != self.device_flag:
            self.device_flag = bool(device["flag"])
            if self.device_flag:
                log.warning("device drift: the mean drift score of the last %d exams is %.2f >= %.2f: %s",
                            device["exams"], device["mean_score"], device["threshold"],
                            DEVICE_WARNING % device["exams"])
            else:
                log.info("device drift: cleared (mean score of the last %d exams %.2f < %.2f)",
                         device["exams"], device["mean_score"], device["threshold"])

    def _failed(self, what, error):
        self.errors += 1
        if self.state is not None:  # on the status page and in /metrics beside the other sinks
            self.state.sink_status("exams", "error", "%s: %s" % (what, error))
        kind = (what, getattr(error, "errno", None))
        if kind not in self._reported:
            self._reported.add(kind)
            log.error("cannot write %s (%s); the service goes on without it", what, error)

    def _picture(self, record, exam):
        if not self.keep:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(record["end_time"]))
        name = "exam-%s-%04d.png" % (stamp, record["exam"])
        try:
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder)
            write_png(os.path.join(self.folder, name), draw_exam(record, exam, self.rule, self.classes, self.palette))
            pictures = sorted(n for n in os.listdir(self.folder) if n.startswith("exam-") and n.endswith(".png"))
            for old in pictures[:-self.keep]:
                os.remove(os.path.join(self.folder, old))
        except (IOError, OSError) as error:
            self._failed(self.folder, error)
            return None
        return "%s/%s" % (PICTURES, name)

    def _keep_audio(self, record, exam):
        """Write the exam's raw audio into --keep-audio (exams with a verdict only); its file name or None."""
        if not self.keep_audio or record["label"] is None:
            return None
        audio = exam_audio(exam)
        if audio is None:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(record["end_time"]))
        name = re.sub(r"[^A-Za-z0-9._-]", "_", "exam-%s-%04d-%s.wav" % (stamp, record["exam"], record["stream"]))
        size = 44 + 2 * audio.size
        try:
            if self.free(self.keep_audio) - size < self.min_free_bytes:
                self._failed(self.keep_audio, OSError("free space under the %.0f MB floor: recording not kept"
                                                      % (self.min_free_bytes / float(MB))))
                return None
            write_wav(os.path.join(self.keep_audio, name), np.clip(audio, -1.0, 1.0), self.rate)
        except (IOError, OSError) as error:
            self._failed(self.keep_audio, error)
            return None
        self.kept.append((name, size))
        while self.kept and sum(s for _, s in self.kept) > self.keep_audio_max_bytes:
            old, _ = self.kept.pop(0)
            try:
                os.remove(os.path.join(self.keep_audio, old))
            except OSError:
                pass
        return name

    def _append(self, record):
        data = (json.dumps(record) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self.written += 1
        except (IOError, OSError) as error:
            self._failed(self.path, error)

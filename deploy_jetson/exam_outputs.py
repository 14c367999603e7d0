"""Where each finished exam goes: ``exams.jsonl``, a summary picture, an ``exam:`` line, the status page.

- ``OUTPUT/exams.jsonl``: one JSON line per exam (deploy_jetson/exam.py's record, plus ``png``), appended in one
  ``os.write`` and fsynced: a reader never sees half a line, and a stop mid-exam writes one complete line marked
  ``interrupted``.
- ``OUTPUT/exams/exam-<UTC time>-<n>.png``: the summary picture (deploy_jetson/exam_png.py), written to ``.part``
  then renamed; only the newest ``keep`` are kept (0: none written).
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

from stetho.png import write_png
from deploy_jetson.exam import exam_line
from deploy_jetson.exam_png import draw_exam

log = logging.getLogger("stetho.exams")
PICTURES = "exams"


class ExamOutputs(object):
    """Callable ``(record, exam)``: write the exam's line and picture, print it, tell the state."""

    def __init__(self, output, keep, palette, rule, classes, state=None, quiet=False, stream=None):
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

    def __call__(self, record, exam):
        record["png"] = self._picture(record, exam)
        self._append(record)
        if not self.quiet:
            self.stream.write(exam_line(record) + "\n")
            self.stream.flush()
        if self.state is not None:
            self.state.record_exam(record)

    def _failed(self, what, error):
        self.errors += 1
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

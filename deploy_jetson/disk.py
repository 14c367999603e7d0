"""Disk limits for an unattended service: sink health, the --output lock, free space, size bounds.

A Nano left alone for months fills its SD card unless every file it writes is
bounded, and a full card must not stop it classifying.  The sinks
(deploy_jetson/sinks.py) use what is here:

- :class:`SinkHealth` — each sink reports 'ok', 'error' (a write failed) or
  'paused' (a write skipped on purpose, e.g. under the free-space floor); it
  is logged once per change (a full disk does not flood the journal) and
  passed to ``ServiceState.sink_status`` for the status page and /metrics.
- :func:`lock_output` — one service per ``--output`` folder: an exclusive
  ``flock`` on the folder itself, refused with the holder's pid.
- :func:`free_bytes` — space left to an unprivileged writer on a folder's
  file system (what the archive floor compares against).
- :func:`add_disk_arguments` / :func:`disk_limits` — the flags that set the
  bounds (results.jsonl rotation, archive size, free-space floor).

Python 3.6, stdlib only.
"""
import errno
import fcntl
import logging
import os

log = logging.getLogger("stetho.disk")

MB = 1 << 20
RESULTS_MAX_MB = 64      # results.jsonl is rotated beyond this (~700 bytes a window: ~1.5 days at a 1.5 s hop)
RESULTS_KEEP = 10        # rotated files kept: results.jsonl.1 (newest) .. .10 (oldest)
ARCHIVE_MAX_MB = 1024    # the WAV archive's total size, across restarts; the oldest files go first
MIN_FREE_MB = 256        # below this free space the archives (WAVs, images) stop; results.jsonl goes on
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputBusy(OSError):
    """Another process holds the --output folder (the message names the folder and, when known, the pid)."""


class SinkHealth(object):
    """What each sink last managed to do, logged on change and handed to ``state.sink_status``.

    ``ok(sink)`` after a write that worked, ``error(sink, message)`` after one
    that failed (every call counts one failure), ``paused(sink, message)`` when
    a write was skipped on purpose (every call counts one skipped write).
    """

    def __init__(self, state=None):
        self.state = state
        self._last = {}

    def _report(self, sink, status, message, cause):
        previous = self._last.get(sink)
        key = (status, message if cause is None else cause)
        self._last[sink] = key + (message,)
        if previous is None or previous[:2] != key:  # logged once per change, not once per window
            if status == "ok":
                if previous is not None:
                    log.warning("%s: writing again", sink)
            elif status == "error":
                log.error("%s: %s", sink, message)
            else:
                log.warning("%s: %s", sink, message)
        changed = previous is None or previous[0] != status
        if self.state is not None and hasattr(self.state, "sink_status") and (status != "ok" or changed):
            self.state.sink_status(sink, status, message)

    def ok(self, sink):
        self._report(sink, "ok", "", None)

    def error(self, sink, message, cause=None):
        """A failed write; ``cause`` (default: the message) decides what counts as a change worth a log line."""
        self._report(sink, "error", message, cause)

    def paused(self, sink, message, cause=None):
        self._report(sink, "paused", message, cause)

    def status(self, sink):
        """('ok' | 'error' | 'paused' | None, message) for ``sink``."""
        last = self._last.get(sink)
        return (last[0], last[2]) if last else (None, "")


def describe_error(error):
    """An OSError as one line: 'No space left on device (ENOSPC)'."""
    code = errno.errorcode.get(getattr(error, "errno", None) or 0)
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return "%s (%s)" % (text, code) if code else text


def free_bytes(folder):
    """Bytes an unprivileged writer may still use on ``folder``'s file system (statvfs f_bavail × f_frsize)."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _holder_pid(folder):
    """The pid holding a flock on ``folder`` according to /proc/locks, or None."""
    try:
        inode = os.stat(folder).st_ino
        with open("/proc/locks") as handle:
            for line in handle:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:02:131 0 EOF" (a "->" marks a waiter)
                if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                if int(fields[5].split(":")[-1]) == inode:
                    return int(fields[4])
    except (IOError, OSError, ValueError):
        pass
    return None


class OutputLock(object):
    """An exclusive flock on a folder, held until :meth:`close` (or the process ends)."""

    def __init__(self, folder, fd):
        self.folder, self._fd = folder, fd

    def close(self):
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def lock_output(folder, flag="--output"):
    """Take ``folder`` for this process alone; OutputBusy (naming it and the holder's pid) when another has it.

    The lock is a ``flock`` on the folder itself: nothing is written there, it
    goes when the process ends however it ends, and two services can never both
    append to one results.jsonl (their lines would interleave and rotation would
    drop files).
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (IOError, OSError) as error:
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        pid = _holder_pid(folder)
        raise OutputBusy("%s %s: another process%s is already writing there (a second stetho service?); stop it, "
                         "or give this one another %s" % (flag, folder, " (pid %d)" % pid if pid else "", flag))
    return OutputLock(folder, fd)


def add_disk_arguments(parser):
    """The service's disk-limit flags."""
    parser.add_argument("--results-max-mb", type=float, default=RESULTS_MAX_MB,
                        help="rotate results.jsonl beyond this size (default %d)" % RESULTS_MAX_MB)
    parser.add_argument("--results-keep", type=int, default=RESULTS_KEEP,
                        help="rotated results files kept, results.jsonl.1 the newest (default %d)" % RESULTS_KEEP)
    parser.add_argument("--archive-max-mb", type=float, default=ARCHIVE_MAX_MB,
                        help="--archive: total size of the WAVs kept, across restarts; the oldest go first "
                             "(default %d)" % ARCHIVE_MAX_MB)
    parser.add_argument("--min-free-mb", type=float, default=MIN_FREE_MB,
                        help="below this much free space the archives (--archive, --save-images) stop; results "
                             "go on (default %d)" % MIN_FREE_MB)


def disk_limits(args):
    """{results_max_bytes, results_keep, archive_max_bytes, min_free_bytes} from the flags (defaults when absent)."""
    def number(name, default):
        value = getattr(args, name, None)
        return default if value is None else value
    return {"results_max_bytes": int(number("results_max_mb", RESULTS_MAX_MB) * MB),
            "results_keep": max(0, int(number("results_keep", RESULTS_KEEP))),
            "archive_max_bytes": int(number("archive_max_mb", ARCHIVE_MAX_MB) * MB),
            "min_free_bytes": int(number("min_free_mb", MIN_FREE_MB) * MB)}

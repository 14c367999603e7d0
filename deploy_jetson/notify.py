"""systemd's sd_notify protocol with the stdlib socket module (no python-systemd needed).

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``).  The service sends datagrams of ``KEY=VALUE`` lines:

- ``READY=1`` once the model is loaded and audio is flowing (or waiting for a device),
- ``STATUS=...`` a one-line human status shown by ``systemctl status``,
- ``WATCHDOG=1`` at least every ``WATCHDOG_USEC / 2`` microseconds while the loop is alive,
- ``STOPPING=1`` when a stop was requested.

Without ``NOTIFY_SOCKET`` every call is a no-op, so the service runs the same
from a terminal.  Python 3.6, stdlib only.
"""
import os
import socket
import time


def socket_address(value):
    """NOTIFY_SOCKET value → an address for ``socket.sendto`` ('@' means the abstract namespace)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval(environ=None):
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when no watchdog is asked for.

    A WATCHDOG_PID naming another process means the watchdog is not ours.
    """
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        usec = int(usec)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier(object):
    """Send sd_notify messages; rate-limits WATCHDOG=1 to the interval systemd asked for.

    ``environ`` defaults to os.environ; ``clock`` to time.monotonic (tests pass their own).
    """

    def __init__(self, environ=None, clock=time.monotonic):
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET") or None
        self.interval = watchdog_interval(environ) if self.address else None
        self._clock = clock
        self._last_ping = None
        self._last_status = None
        self._socket = None
        self.errors = 0
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    @property
    def enabled(self):
        return self._socket is not None

    def send(self, message):
        """Send one datagram (str); returns True when it was sent. Never raises on socket errors."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto(message.encode("utf-8"), socket_address(self.address))
            return True
        except (OSError, socket.error):
            self.errors += 1  # systemd gone (e.g. during shutdown): nothing useful to do
            return False

    def ready(self, status=None):
        lines = ["READY=1", "MAINPID=%d" % os.getpid()]
        if status:
            lines.append("STATUS=" + _one_line(status))
            self._last_status = status
        self.send("\n".join(lines))
        self._last_ping = self._clock()

    def status(self, text):
        """Send STATUS= only when the text changed (systemd shows the latest)."""
        if text != self._last_status:
            self._last_status = text
            self.send("STATUS=" + _one_line(text))

    def watchdog(self, force=False):
        """Send WATCHDOG=1 when half the watchdog period has passed since the last ping."""
        if self.interval is None:
            return False
        now = self._clock()
        if force or self._last_ping is None or now - self._last_ping >= self.interval:
            self._last_ping = now
            return self.send("WATCHDOG=1")
        return False

    def stopping(self, status=None):
        lines = ["STOPPING=1"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        self.send("\n".join(lines))

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text):
    return " ".join(str(text).split())

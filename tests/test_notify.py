"""sd_notify over a real unix datagram socket: the Notifier alone, and the running service under a fake systemd."""
import os
import signal
import socket
import subprocess
import time

import pytest

from stetho import synth, write_wav

from deploy_jetson.notify import Notifier, socket_address, watchdog_interval
from test_service_support import make_model, service_cmd


@pytest.fixture
def listener(tmp_path):
    """A unix datagram socket playing systemd's notify socket; yields (path, receive function)."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)

    def receive(until, stop_when=lambda messages: False):
        messages = []
        deadline = time.monotonic() + until
        while time.monotonic() < deadline and not stop_when(messages):
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode("utf-8")))
            except socket.timeout:
                pass
        return messages
    yield path, receive
    sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec_and_respects_watchdog_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None and watchdog_interval({}) is None
    assert socket_address("@stetho/notify") == "\0stetho/notify" and socket_address("/run/x") == "/run/x"


def test_notifier_sends_ready_status_watchdog_stopping(listener):
    path, receive = listener
    now = {"t": 0.0}
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}, clock=lambda: now["t"])
    notifier.ready("loaded")
    notifier.status("capturing")
    notifier.status("capturing")       # unchanged: not sent again
    assert notifier.watchdog() is False  # 0 s since READY: not due
    now["t"] = 0.6
    assert notifier.watchdog() is True   # half of 1 s has passed
    notifier.stopping("bye")
    messages = [m for _, m in receive(0.5, lambda m: len(m) == 4)]
    assert messages[0].startswith("READY=1\nMAINPID=%d\nSTATUS=loaded" % os.getpid())
    assert messages[1:] == ["STATUS=capturing", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye"]
    notifier.close()


def test_notifier_reaches_an_abstract_socket_and_is_silent_without_one():
    name = "stetho-test-%d" % os.getpid()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096).startswith(b"READY=1")
    finally:
        sock.close()
    quiet = Notifier({})
    assert not quiet.enabled and quiet.send("READY=1") is False and quiet.watchdog() is False


def test_the_service_reports_ready_status_and_watchdog_to_systemd(listener, tmp_path):
    path, receive = listener
    model = make_model(tmp_path / "model")
    wav = tmp_path / "rec.wav"
    write_wav(str(wav), synth.heart_sound("normal", duration_s=6.0, rate=2000), 2000)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen(service_cmd("--model-dir", model, "--source", "file:%s" % wav, "--loop", "--quiet",
                                        "--output", tmp_path / "out"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        messages = receive(20, lambda m: sum("WATCHDOG=1" in x for _, x in m) >= 8
                           and any("windows; last" in x for _, x in m))  # ≥ 4 s, and a window classified
        proc.send_signal(signal.SIGTERM)
        messages += receive(3, lambda m: any("STOPPING=1" in x for _, x in m))
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    texts = [m for _, m in messages]
    assert texts[0].startswith("READY=1") and "backend onnxruntime" in texts[0]
    assert any(t.startswith("STATUS=replaying") for t in texts)
    assert any("STOPPING=1" in t for t in texts) and proc.returncode == 0
    assert any("windows; last: " in t for t in texts)
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # WatchdogSec=1 s → a ping every ~0.5 s: never a full period apart (systemd would kill the service),
    # and not spammed (at most one per half period, give or take the test's own read delays)
    assert len(pings) >= 8 and max(gaps) < 1.0, gaps
    assert len(pings) <= (pings[-1] - pings[0]) / 0.5 + 2, gaps

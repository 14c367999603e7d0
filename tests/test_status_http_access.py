"""Who may ask the status page, and how long they may take: the request deadline, making room for normal clients,
the Host check against DNS rebinding, the token, and the warnings (deploy_jetson/status_http.py, issue 28 item 6).

Everything runs against a real server on 127.0.0.1 with real sockets; nothing leaves the machine.
"""
import argparse
import http.client
import logging
import os
import re
import select
import socket
import threading
import time

import pytest

from deploy_jetson import service
from deploy_jetson.config import SettingsError, parse_settings
from deploy_jetson.state import ServiceState
from deploy_jetson.status_http import (MIN_TOKEN_CHARS, TOKEN_COOKIE, check_token, host_allowed, load_token,
                                       parse_allowed_hosts, start_status_server)

TOKEN = "Zq3-vX9_kT2mRw8sLp4yHn6b"   # 24 characters, as secrets.token_urlsafe(18) prints


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "stetho.http" and r.levelno >= logging.WARNING]


def _raw(port, data, timeout=5.0):
    """Send raw bytes; (status code or None, reply bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", reply)
    return (int(match.group(1)) if match else None), reply


def _get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


@pytest.fixture
def server_factory():
    servers = []

    def start(state=None, **kwargs):
        server = start_status_server("127.0.0.1", 0, state or ServiceState("m", ["a", "b"]), **kwargs)
        servers.append(server)
        return server, server.server_address[1]
    yield start
    for server in servers:
        server.shutdown()


def _trickle(port, report, interval=1.0, give_up_s=12.0):
    """A slow client: the request line, then one header line every ``interval`` s, never the blank line.

    report["closed_after"]: seconds from connect until the server closed the connection; report["reply"]."""
    started = time.monotonic()
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /api/status HTTP/1.0\r\n")
        sock.settimeout(interval)
        n = 0
        while time.monotonic() - started < give_up_s:
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                n += 1
                try:
                    sock.sendall(b"X-Slow-%d: still typing\r\n" % n)
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
    report["closed_after"] = time.monotonic() - started
    report["reply"] = reply


# ---------------------------------------------------------------------------------------------------------------
# Slow and idle clients


def test_a_trickling_client_is_cut_at_the_deadline_and_a_normal_client_is_served_meanwhile(server_factory, caplog):
    """Two clients that each send one header line a second fill both places; a normal client is still served at
    once, and no trickler holds a place past the whole-request deadline (old code: a 10 s timeout per read, so a
    line a second held the place for ever and the normal client was turned away)."""
    caplog.set_level(logging.DEBUG, logger="stetho.http")
    server, port = server_factory(max_clients=2, request_timeout=2.0)
    reports = [{}, {}]
    threads = [threading.Thread(target=_trickle, args=(port, r)) for r in reports]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    time.sleep(0.6)
    assert server.open_connections() == {"request": 2}, "both tricklers hold a place"
    asked = time.monotonic()
    response, _ = _get(port, "/api/status")
    assert response.status == 200 and time.monotonic() - asked < 1.0, "the normal client is served at once"
    for thread in threads:
        thread.join(timeout=15)
    closed = sorted(r["closed_after"] for r in reports)
    assert closed[0] < 1.5, "the oldest trickler made room for the normal client: %s" % closed
    assert 1.8 < closed[1] < 3.0, "the other one was cut at the 2 s deadline although it kept sending: %s" % closed
    assert any(r["reply"].startswith(b"HTTP/1.0 408 ") for r in reports), [r["reply"][:40] for r in reports]
    assert server.open_connections() == {}
    warnings = _warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "not served" in warnings[0].getMessage()


def test_idle_connections_make_room_and_a_silent_one_is_closed_quietly(server_factory, caplog):
    caplog.set_level(logging.WARNING, logger="stetho.http")
    server, port = server_factory(max_clients=2, request_timeout=1.0)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)  # the two idle connections now hold both places (they never send a request)
        response, _ = _get(port, "/api/status")
        assert response.status == 200, "a new client takes the place of the oldest idle connection"
        assert idle[0].recv(100) == b"", "the oldest idle connection was closed to make room"
        started = time.monotonic()
        assert idle[1].recv(100) == b"", "an idle connection that sends nothing is closed at the deadline, silently"
        assert time.monotonic() - started < 1.5
    finally:
        for sock in idle:
            sock.close()
    assert len(_warnings(caplog)) == 1, "only the connection dropped to make room is reported"


class _SlowState(ServiceState):
    """A real ServiceState whose snapshot waits until released: a request that is being answered."""

    def __init__(self):
        ServiceState.__init__(self, "m", ["a", "b"])
        self.entered, self.release = threading.Event(), threading.Event()

    def snapshot(self):
        self.entered.set()
        self.release.wait(10)
        return ServiceState.snapshot(self)


def test_requests_being_answered_keep_their_place_and_refusals_log_one_warning(server_factory, caplog):
    caplog.set_level(logging.WARNING, logger="stetho.http")
    state = _SlowState()
    server, port = server_factory(state=state, max_clients=1)
    answer = {}
    asker = threading.Thread(target=lambda: answer.update(zip(("status", "body"), _raw(port, b"GET /api/status "
                                                                                        b"HTTP/1.0\r\n\r\n"))))
    asker.start()
    assert state.entered.wait(5)
    for _ in range(20):   # the one place is past its request: every newcomer is refused, the reply goes on
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
    state.release.set()
    asker.join(10)
    assert answer["status"] == 200
    warnings = _warnings(caplog)
    assert len(warnings) == 1, "one summary, not one warning per refused connection: %d" % len(warnings)
    assert "refused" in warnings[0].getMessage()
    assert server.drops.total["refused (all 1 connections busy replying)"] == 20


def test_a_client_that_does_not_read_its_reply_does_not_keep_its_place(server_factory):
    """The reply (a 150 kB overlay here, twice a real one) goes into the kernel's send buffer at once, so a client
    with a tiny receive window that never reads does not hold the connection for the write timeout."""
    state = ServiceState("m", ["a", "b"])
    state.record({"time": 1.0, "probabilities": {"a": 0.5, "b": 0.5}, "decision": "a", "quality": "ok",
                  "latency_ms": 1.0}, os.urandom(150000))
    server, port = server_factory(state=state, max_clients=1)
    lazy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: a small window from the start
    lazy.settimeout(5)
    try:
        lazy.connect(("127.0.0.1", port))
        lazy.sendall(b"GET /api/latest.png HTTP/1.0\r\n\r\n")
        assert select.select([lazy], [], [], 5)[0], "the reply has begun"
        deadline = time.monotonic() + 3
        while server.open_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.open_connections() == {}, "the reply is in the kernel's hands; the place is free"
        response, _ = _get(port, "/api/status")
        assert response.status == 200
        received = b""
        while True:   # and the lazy client still gets the whole reply when it reads at last
            chunk = lazy.recv(65536)
            if not chunk:
                break
            received += chunk
        assert received.endswith(state.latest_png()) and b"Content-Length: 150000" in received
    finally:
        lazy.close()


# ---------------------------------------------------------------------------------------------------------------
# Host header (DNS rebinding)


@pytest.fixture(scope="module")
def plain_port():
    server = start_status_server("127.0.0.1", 0, ServiceState("m", ["a", "b"]))
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "attacker.local", "[::1", "[::1]x", "1.2.3.4:http", "", ":80", "0x7f000001"])
def test_a_foreign_host_name_gets_403(plain_port, host):
    port = plain_port
    code, reply = _raw(port, b"GET /api/status HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
    assert code == 403, reply[:200]
    assert b"Content-Type: text/plain" in reply and b"X-Content-Type-Options: nosniff" in reply
    assert b'"model"' not in reply


def test_ip_literals_localhost_and_own_names_are_allowed(server_factory):
    server, port = server_factory(allowed_hosts=parse_allowed_hosts("stetho.ward.example, Monitor-3"))
    own = socket.gethostname()
    for host in ["127.0.0.1:%d" % port, "127.0.0.1", "localhost:%d" % port, "LOCALHOST", "localhost.",
                 "[::1]:%d" % port, "[::1]", "10.0.0.7", "192.168.1.20:8080", "[fe80::1%25eth0]:80",
                 own, own + ":%d" % port, own.split(".")[0] + ".local", "stetho.ward.example", "monitor-3:8080"]:
        code, reply = _raw(port, b"GET /api/status HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
        assert code == 200, (host, reply[:200])
    assert _raw(port, b"GET /api/status HTTP/1.0\r\n\r\n")[0] == 200, "HTTP/1.0 may omit Host"
    assert _raw(port, b"GET /api/status HTTP/1.1\r\n\r\n")[0] == 400, "HTTP/1.1 must send Host"
    assert _raw(port, b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n")[0] == 400


def test_host_allowed_and_allow_host_parsing():
    names = frozenset(["localhost", "nano", "nano.local"])
    assert host_allowed("nano.local:8080", names) and host_allowed("[2001:db8::5]", names)
    assert not host_allowed("nano.evil.example", names) and not host_allowed("[127.0.0.1]", names)
    assert not host_allowed("127.0.0.1:99999999", names) and not host_allowed("nano:\u00b2", names)
    with pytest.raises(ValueError, match="--http-allow-host: 'bad name!' is not a host name"):
        parse_allowed_hosts("ok.example,bad name!")
    assert parse_allowed_hosts(" A.example ,, b ") == ["a.example", "b"]


# ---------------------------------------------------------------------------------------------------------------
# Token


def test_every_route_needs_the_token(server_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="stetho.http")
    server, port = server_factory(token=TOKEN)
    for path in ("/", "/api/status", "/api/history", "/api/latest.png", "/metrics", "/nope"):
        response, body = _get(port, path)
        assert response.status == 401, path
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert response.getheader("Cache-Control") == "no-store" and b"?token=TOKEN" in body
    wrong = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")
    assert _get(port, "/metrics", {"Authorization": "Bearer " + wrong})[0].status == 401
    assert _get(port, "/metrics", {"Authorization": "Basic " + TOKEN})[0].status == 401
    assert _get(port, "/api/status?token=" + TOKEN)[0].status == 401, "the query token is for the page only"
    response, _ = _get(port, "/?token=" + wrong)
    assert response.status == 401 and response.getheader("Set-Cookie") is None

    response, body = _get(port, "/metrics", {"Authorization": "Bearer " + TOKEN})   # Prometheus
    assert response.status == 200 and b"stetho_windows_total" in body
    response, _ = _get(port, "/api/status", {"Cookie": "other=1; %s=%s" % (TOKEN_COOKIE, TOKEN)})
    assert response.status == 200
    response, body = _get(port, "/?token=" + TOKEN)
    assert response.status == 200 and b"probability history" in body
    cookie = response.getheader("Set-Cookie")
    assert cookie.startswith("%s=%s;" % (TOKEN_COOKIE, TOKEN))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    response, _ = _get(port, "/?token=" + TOKEN, {"Cookie": "%s=%s" % (TOKEN_COOKIE, TOKEN)})
    assert response.status == 200 and response.getheader("Set-Cookie") is None, "no cookie when it is there"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "?token=<redacted>" in logged and TOKEN not in logged and wrong not in logged


def test_tokens_are_checked_and_read_from_a_file(tmp_path, caplog):
    for bad, why in (("", "empty"), ("short-token", "only 11 characters"), ("a" * 15, "only 15"),
                     ("has space in the middle!", "may only hold"), ('quote"quote"quote"', "may only hold")):
        with pytest.raises(ValueError, match=why):
            check_token(bad)
    assert check_token("x" * MIN_TOKEN_CHARS) == "x" * MIN_TOKEN_CHARS
    path = tmp_path / "http-token"
    path.write_text(TOKEN + "\n")
    os.chmod(str(path), 0o600)
    caplog.set_level(logging.WARNING, logger="stetho.http")
    assert load_token(None, str(path)) == TOKEN and not _warnings(caplog)
    os.chmod(str(path), 0o644)
    assert load_token(None, str(path)) == TOKEN
    assert "readable by every user" in _warnings(caplog)[0].getMessage()
    with pytest.raises(ValueError, match="both given"):
        load_token(TOKEN, str(path))
    with pytest.raises(ValueError, match=r"--http-token-file .*missing: cannot read"):
        load_token(None, str(tmp_path / "missing"))
    path.write_text("a" * 4096 + "\n")
    assert load_token(None, str(path)) == "a" * 4096, "what systemd/install.sh accepts"
    path.write_text(TOKEN + "\n" + TOKEN + "\n")
    with pytest.raises(ValueError, match="more than one line"):
        load_token(None, str(path))
    with pytest.raises(ValueError, match="4097 characters; at most 4096"):
        check_token("a" * 4097)
    path.write_text("tiny\n")
    with pytest.raises(ValueError, match=r"--http-token-file .*only 4 characters"):
        load_token(None, str(path))
    assert load_token(None, None) is None


def test_the_service_flags_reach_the_server(tmp_path):
    parser = service.build_parser()
    args = parse_settings(parser, ["--model-dir", "m", "--http", "127.0.0.1:0", "--http-allow-host", "ward7.example"],
                          environ={"STETHO_HTTP_TOKEN": TOKEN})
    assert args.http_token == TOKEN
    state = ServiceState("m", ["a"])
    card = argparse.Namespace(dataset={"synthetic": True, "name": "demo"})
    server = service.start_http(args.http, state, args, argparse.Namespace(card=card))
    try:
        port = server.server_address[1]
        assert _get(port, "/api/status")[0].status == 401
        response, body = _get(port, "/api/status", {"Authorization": "Bearer " + TOKEN, "Host": "ward7.example"})
        assert response.status == 200 and b'"info": {"synthetic": true}' in body
    finally:
        server.shutdown()
    for argv, message in ((["--http-token", "short"], "--http-token: the token is only 5 characters"),
                          (["--http-allow-host", "a b"], "--http-allow-host: 'a b' is not a host name"),
                          (["--http-token-file", str(tmp_path / "none")], "cannot read")):
        args = service.build_parser().parse_args(["--model-dir", "m", "--http", "127.0.0.1:0"] + argv)
        with pytest.raises(SettingsError, match=re.escape(message)):
            service.start_http(args.http, state, args)


# ---------------------------------------------------------------------------------------------------------------
# The start-up warning


def test_binding_the_network_without_a_token_warns(caplog):
    caplog.set_level(logging.INFO, logger="stetho.http")
    state = ServiceState("m", ["a"])
    for host, token, warned in (("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False),
                                ("localhost", None, False)):
        caplog.clear()
        server = start_status_server(host, 0, state, token=token)
        server.shutdown()
        messages = [r.getMessage() for r in _warnings(caplog)]
        assert bool(messages) == warned, (host, token, messages)
        if warned:
            assert "reachable from the network without a token" in messages[0]
            assert "anyone on the LAN can read patient results" in messages[0] and "--http-token" in messages[0]

"""The live status page (deploy_jetson/status_http.py) through a real HTTP client against a running server.

The server is fed by a real ServiceState holding recorded results: synthetic heart windows rendered with the
heart contract, their PNGs as overlays, probabilities that drift from normal to murmur.  When Debian's
chromium is installed the page is also loaded headless and screenshotted (the PNG is kept as an artefact).
"""
import http.client
import json
import os
import re
import shutil
import socket
import struct
import sys
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from deploy_jetson.state import ServiceState
from deploy_jetson.status_http import (MAX_REQUEST_LINE, PAGE_CSP, parse_address, prometheus_text,
                                       start_status_server)
from stetho.contract import preset, render_segment
from stetho.png import encode_png
from stetho.synth import heart_sound

CLASSES = ["extra", "murmur", "normal"]
CHROMIUM = "/usr/bin/chromium"
ARTEFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artefacts"


def _recorded_state(windows=40, info=None):
    """A ServiceState as the service leaves it after ``windows`` windows (clock advanced 1 s per window)."""
    clock = [1700000000.0]
    state = ServiceState("demo-heart", CLASSES, backend="onnxruntime", backend_reason="no TensorRT here",
                         clock=lambda: clock[0], info=info)
    state.set_device("file:held-out.wav", "replaying")
    contract = preset("heart", size=64)
    sound = heart_sound("murmur", duration_s=3.0, rate=contract.sample_rate, seed=3)
    png = encode_png(render_segment(sound, contract))
    for i in range(windows):
        murmur = min(0.9, 0.1 + 0.02 * i)
        probs = {"extra": 0.05, "murmur": murmur, "normal": 0.95 - murmur}
        decision = "murmur" if murmur > 0.6 else ("uncertain" if murmur > 0.4 else "normal")
        clock[0] += 1.0
        state.record({"time": clock[0], "window": [i * 1.0, i * 1.0 + 3.0], "probabilities": probs,
                      "decision": decision, "quality": "ok", "latency_ms": 12.5}, png)
    state.add_dropped(128)
    for number, (verdict, label, drift) in enumerate((("normal", "normal", False), ("murmur", "murmur", True)), 1):
        state.record_exam({"exam": number, "stream": "mic#1", "end_time": clock[0] - 30 + 10 * number,
                           "verdict": verdict, "label": label, "p_abnormal": 0.2 if label == "normal" else 0.8,
                           "accepted_s": 12.0, "drift": {"flag": drift, "score": 3.0, "threshold": 2.0},
                           "device_drift": {"exams": 18 + number, "needed": 20, "mean_score": 0.61,
                                            "threshold": 0.45, "flag": None if number < 2 else True},
                           "interrupted": False, "ended": "gap"})
    state.set_exam({"exam": 3, "stream": "mic#1", "accepted_s": 5.5, "min_s": 8.0, "windows_accepted": 3,
                    "provisional": {"label": "murmur", "p_abnormal": 0.71, "confidence": 0.6}})
    state.set_drift({"score": 3.2, "threshold": 2.0, "windows": 40, "flag": True})
    return state, png


@pytest.fixture(scope="module")
def served():
    state, png = _recorded_state(info={"synthetic": True})
    server = start_status_server("127.0.0.1", 0, state)
    host, port = server.server_address[:2]
    yield {"state": state, "png": png, "host": host, "port": port, "url": "http://%s:%d" % (host, port)}
    started = time.time()
    server.shutdown()
    assert time.time() - started < 2.0, "shutdown must be quick (the service stops within 2 s of SIGTERM)"


def _get(served, path, method="GET"):
    conn = http.client.HTTPConnection(served["host"], served["port"], timeout=5)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def _raw(served, data):
    """Send raw bytes, return the status code of the reply (None if the server just closed)."""
    with socket.create_connection((served["host"], served["port"]), timeout=5) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", reply)
    return int(match.group(1)) if match else None, reply


def test_routes_serve_the_recorded_state(served):
    response, body = _get(served, "/")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    page = body.decode("utf-8")
    for needle in ("/api/status", "/api/history", "/api/latest.png", "<svg", "id=\"decision\""):
        assert needle in page
    assert not re.search(r"(src|href)=\"https?:", page), "the page must not load external assets"
    assert response.getheader("Content-Security-Policy") == PAGE_CSP

    response, body = _get(served, "/api/status")
    assert response.status == 200 and response.getheader("Content-Type").startswith("application/json")
    status = json.loads(body.decode("utf-8"))
    assert status["model"] == "demo-heart" and status["backend"] == "onnxruntime"
    assert status["device"] == "file:held-out.wav" and status["device_status"] == "replaying"
    assert status["windows"] == 40 and status["dropped_frames"] == 128
    assert status["decision"] == "murmur" and status["quality"] == "ok"
    assert status["uptime_s"] == pytest.approx(40.0)
    assert status["last"]["probabilities"]["murmur"] == pytest.approx(0.88)
    assert status["info"] == {"synthetic": True}
    assert status["device_drift"] == {"exams": 20, "needed": 20, "mean_score": 0.61, "threshold": 0.45, "flag": True}

    response, body = _get(served, "/api/history")
    history = json.loads(body.decode("utf-8"))
    assert history["classes"] == CLASSES and len(history["items"]) == 40
    assert [item["decision"] for item in history["items"][:2]] == ["normal", "normal"]
    response, body = _get(served, "/api/history?limit=5")
    items = json.loads(body.decode("utf-8"))["items"]
    assert len(items) == 5 and items[-1]["time"] == status["last"]["time"]

    response, body = _get(served, "/api/latest.png")
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    assert body == served["png"]


def test_every_response_has_the_safe_headers(served):
    for path in ("/", "/api/status", "/api/history", "/api/latest.png", "/metrics", "/nope"):
        response, _ = _get(served, path)
        assert response.getheader("Cache-Control") == "no-store", path
        assert response.getheader("X-Content-Type-Options") == "nosniff", path
        assert "Python" not in (response.getheader("Server") or ""), "do not advertise the interpreter"


def test_head_gives_headers_without_a_body(served):
    get, get_body = _get(served, "/api/latest.png")
    head, head_body = _get(served, "/api/latest.png", method="HEAD")
    assert head.status == 200 and head_body == b""
    assert head.getheader("Content-Length") == get.getheader("Content-Length") == str(len(get_body))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"])
def test_only_get_and_head(served, method):
    response, _ = _get(served, "/api/status", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize("path", [
    "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e/", "/..%2f..%2fetc%2fpasswd",
    "/api/../../etc/passwd", "/api/status/../../../etc/passwd", "//etc/passwd", "/etc/passwd",
    "/api/latest.png/..", "/api/%6catest.png", "/deploy_jetson/status_http.py", "/.git/config",
    "/api", "/api/", "/metrics/", "/index.htm",
])
def test_unknown_paths_and_traversal_are_404(served, path):
    response, body = _get(served, path)
    assert response.status == 404
    assert b"root:" not in body and b"import" not in body


def test_traversal_in_a_raw_request_line(served):
    code, reply = _raw(served, b"GET /../../../../etc/passwd HTTP/1.0\r\n\r\n")
    assert code == 404 and b"root:" not in reply
    code, reply = _raw(served, b"GET http://127.0.0.1/../../etc/passwd HTTP/1.0\r\n\r\n")
    assert code == 404 and b"root:" not in reply


def test_oversized_request_line_is_rejected(served):
    code, _ = _raw(served, b"GET /" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.0\r\n\r\n")
    assert code == 414
    code, _ = _raw(served, b"GET /" + b"a" * (MAX_REQUEST_LINE - 40) + b" HTTP/1.0\r\n\r\n")
    assert code == 404, "a long but allowed request line is parsed normally"


def test_oversized_headers_are_rejected(served):
    code, _ = _raw(served, b"GET / HTTP/1.0\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n")
    assert code == 431
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    code, _ = _raw(served, b"GET / HTTP/1.0\r\n" + many + b"\r\n")
    assert code == 431


def test_malformed_requests_get_400_and_the_server_survives(served):
    code, _ = _raw(served, b"GARBAGE\r\n\r\n")
    assert code == 400
    code, _ = _raw(served, b"GET /api/history?limit=abc HTTP/1.0\r\n\r\n")
    assert code == 400
    code, _ = _raw(served, b"GET /api/history?limit=0 HTTP/1.0\r\n\r\n")
    assert code == 400
    response, _ = _get(served, "/api/status")
    assert response.status == 200


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                     r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})? '
                     r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def parse_prometheus(text):
    """A strict reader of the text exposition format 0.0.4: every line a HELP, a TYPE or a sample of a metric
    whose TYPE came first.  Returns {name: {"type": t, "samples": {labels_text: float}}}."""
    metrics = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            metrics.setdefault(name, {"samples": {}})["help"] = line.split(" ", 3)[3]
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            metrics.setdefault(name, {"samples": {}})["type"] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, "not a valid sample line: %r" % line
            name = match.group(1)
            assert "type" in metrics.get(name, {}), "sample before its TYPE: %r" % line
            metrics[name]["samples"][match.group(3) or ""] = float(match.group(4))
    return metrics


def test_metrics_parse_and_match_the_state(served):
    response, body = _get(served, "/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    metrics = parse_prometheus(body.decode("utf-8"))
    assert metrics["stetho_windows_total"]["type"] == "counter"
    assert metrics["stetho_windows_total"]["samples"][""] == 40
    assert metrics["stetho_dropped_frames_total"]["samples"][""] == 128
    assert metrics["stetho_probability"]["samples"]['class="murmur"'] == pytest.approx(0.88)
    decisions = metrics["stetho_decisions_total"]["samples"]
    assert sum(decisions.values()) == 40 and decisions['decision="murmur"'] > 0
    assert metrics["stetho_device_up"]["samples"][""] == 1
    assert metrics["stetho_device_drift_flag"]["samples"][""] == 1
    assert metrics["stetho_device_drift_score"]["samples"][""] == pytest.approx(0.61)
    assert metrics["stetho_drift_flag"]["samples"][""] == 1


def test_prometheus_text_escapes_labels_and_special_values():
    text = prometheus_text({"x_total": ("counter", "help with \\ and\nnewline",
                                        [({"a": 'q"uote', "b": "back\\slash\nnl"}, float("nan")),
                                         ({}, float("inf")), ({}, 3)])})
    assert text == ('# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\n'
                    'x_total{a="q\\"uote",b="back\\\\slash\\nnl"} NaN\nx_total +Inf\nx_total 3\n')
    parse_prometheus(text)


def test_latest_png_before_the_first_window_is_404_and_status_is_null():
    state = ServiceState("m", ["a", "b"])
    server = start_status_server("127.0.0.1", 0, state)
    try:
        url = "http://127.0.0.1:%d" % server.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(url + "/api/latest.png", timeout=5)
        assert error.value.code == 404
        status = json.loads(urllib.request.urlopen(url + "/api/status", timeout=5).read().decode("utf-8"))
        assert status["decision"] is None and status["windows"] == 0
        # numpy values and NaN in a result become plain JSON (browsers reject a bare NaN)
        np = pytest.importorskip("numpy")
        state.record({"time": np.float64(5.0), "probabilities": {"a": np.float32(0.25), "b": float("nan")},
                      "decision": "a", "quality": "ok", "latency_ms": np.float64(1.0)})
        status = json.loads(urllib.request.urlopen(url + "/api/status", timeout=5).read().decode("utf-8"))
        assert status["last"]["probabilities"] == {"a": 0.25, "b": None}
    finally:
        server.shutdown()


def test_default_bind_is_loopback_and_addresses_parse():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    for bad in ("host:port", "::1:80", "1.2.3.4:70000", "[::1]8080"):
        with pytest.raises(ValueError, match="--http"):
            parse_address(bad)
    state = ServiceState("m", ["a"])
    server = start_status_server("", 0, state)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
    if socket.has_ipv6:
        try:
            server = start_status_server("[::1]", 0, state)   # the service passes HOST as written
        except OSError:
            return  # no IPv6 loopback on this machine
        try:
            conn = http.client.HTTPConnection("::1", server.server_address[1], timeout=5)
            conn.request("GET", "/api/status")
            assert conn.getresponse().status == 200
        finally:
            server.shutdown()


def _png_size_and_colours(path):
    """Width, height and number of distinct colours of an 8-bit RGB/RGBA non-interlaced PNG (stdlib only)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    previous, colours = bytearray(stride), set()
    for y in range(height):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = row[x - bpp] if x >= bpp else 0
            b, c = previous[x], previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                row[x] = (row[x] + a) & 255
            elif kind == 2:
                row[x] = (row[x] + b) & 255
            elif kind == 3:
                row[x] = (row[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            colours.update(bytes(row[i:i + 3]) for i in range(0, stride, bpp * 4))
        previous = row
    return width, height, len(colours)


def _chromium(profile, *extra):
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--user-data-dir=%s" % profile,
            "--virtual-time-budget=5000", "--window-size=1000,700"] + list(extra)


_TICK = re.compile(r'<text [^>]*class="tick"[^>]*>(\d\d:\d\d:\d\d)</text>')


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(served, tmp_path):
    """Load the page in headless Chromium, let its script poll once, and keep the screenshot as an artefact."""
    shot = tmp_path / "status_page.png"
    command = _chromium(tmp_path / "profile", "--screenshot=%s" % shot, served["url"] + "/")
    started = time.time()
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    elapsed = time.time() - started
    assert run.returncode == 0 and shot.is_file(), run.stdout.decode("utf-8", "replace")[-2000:]
    dom = subprocess.run(command[:-2] + ["--dump-dom", served["url"] + "/"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, timeout=120).stdout.decode("utf-8", "replace")
    # the page's own script ran, fetched the JSON routes and drew: decision text, one line per class, the image
    assert '<div id="decision">murmur</div>' in dom, dom[-3000:]
    assert dom.count("<polyline") == len(CLASSES)
    assert "/api/latest.png?n=40" in dom and "88.0%" in dom
    # the chart's time axis: clock-time labels, increasing, over the 40 s of history (1 s per window)
    ticks = _TICK.findall(dom)
    assert len(ticks) >= 3 and ticks == sorted(ticks), dom[-3000:]
    assert "last 40 windows over 39 s" in dom
    # the model was trained on synthetic data (ServiceState info): the banner is shown
    assert re.search(r'<div id="synthetic" role="alert" style="display: block;">Demonstration model', dom), dom[:2000]
    # the exam in progress, the last exams (newest first) with their verdicts, and the drift warning
    assert "exam 3 in progress: 5.5 of 8 s of good contact; so far murmur (P(abnormal) 0.71)" in dom, dom[-4000:]
    assert dom.index("murmur (0.80)") < dom.index("normal (0.20)") and "unlike training data" in dom
    assert re.search(r'<div id="drift" role="alert" style="display: block;">This microphone sounds unlike', dom)
    assert "mean drift 0.61 &gt;= 0.45 over the last 20 exams" in dom, dom[-4000:]
    width, height, colours = _png_size_and_colours(shot)
    assert (width, height) == (1000, 700)
    assert colours > 20, "the screenshot is blank (%d colours)" % colours
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(str(shot), str(ARTEFACTS / "status_page.png"))
    print("chromium screenshot in %.1f s: %s" % (elapsed, ARTEFACTS / "status_page.png"))


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_with_a_token_works_in_headless_chromium(tmp_path):
    """Opened once as /?token=TOKEN, the page's own requests carry the cookie it set (HttpOnly, SameSite=Strict);
    without the token the browser gets 401.  A model not trained on synthetic data shows no banner."""
    token = "Zq3-vX9_kT2mRw8sLp4yHn6b"
    state, _ = _recorded_state(windows=12)
    server = start_status_server("127.0.0.1", 0, state, token=token)
    url = "http://127.0.0.1:%d/" % server.server_address[1]
    try:
        def dom(address, profile):
            return subprocess.run(_chromium(tmp_path / profile, "--dump-dom", address), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, timeout=120).stdout.decode("utf-8", "replace")
        page = dom(url + "?token=" + token, "with-token")
        assert "<div id=\"decision\">normal</div>" in page, page[-3000:]
        assert page.count("<polyline") == len(CLASSES) and "/api/latest.png?n=12" in page
        assert '<div id="synthetic" role="alert" style="display: none;">' in page
        assert "needs its token" in dom(url, "without-token")
    finally:
        server.shutdown()


def _tiny_model(folder, classes=("extra", "murmur", "normal"), size=64):
    """A model folder the real service loads: an ONNX built with onnx.helper (mean colour → linear → softmax;
    no training needed), its model.json with the sha256 and labels.txt."""
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    from onnx import TensorProto, helper, numpy_helper
    from stetho import ModelCard
    from stetho.labels import write_labels
    from stetho.modelcard import sha256_file
    n = len(classes)
    weights = numpy_helper.from_array(np.arange(3 * n, dtype=np.float32).reshape(3, n) / 10.0, "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_0"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("Gemm", ["pooled", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["output_0"], axis=1)],
        "tiny", [helper.make_tensor_value_info("input_0", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, [1, n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "resnet18.onnx"))
    ModelCard(list(classes), preset("heart", size=size),
              onnx_sha256=sha256_file(str(folder / "resnet18.onnx"))).save(str(folder))
    write_labels(str(folder / "labels.txt"), list(classes))
    return folder


def test_status_page_of_a_running_service(tmp_path):
    """The real service (deploy_jetson/service.py, onnxruntime) replaying a WAV in real time with --http."""
    import queue
    import signal
    import threading
    pytest.importorskip("onnxruntime")
    from stetho.audio_io import write_wav
    service = Path(__file__).resolve().parents[1] / "deploy_jetson" / "service.py"
    if not service.exists():
        pytest.skip("deploy_jetson/service.py not written yet")
    model = _tiny_model(tmp_path / "tiny-heart")
    wav = tmp_path / "held-out.wav"
    write_wav(str(wav), heart_sound("murmur", duration_s=6.0, rate=2000, seed=1), 2000)
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("STETHO_", "NOTIFY_SOCKET")))
    proc = subprocess.Popen([sys.executable, str(service), "--model-dir", str(model), "--source", "file:%s" % wav,
                             "--loop", "--backend", "onnxruntime", "--output", str(tmp_path / "out"), "--quiet",
                             "--http", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l.decode("utf-8", "replace")) for l in proc.stderr],
                     daemon=True).start()
    try:
        log, url, deadline = [], None, time.time() + 30
        while url is None and time.time() < deadline and proc.poll() is None:
            try:
                log.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            match = re.search(r"status page on (http://127\.0\.0\.1:\d+)/", log[-1])
            url = match.group(1) if match else None
        assert url, "the service did not start its status page:\n" + "".join(log)
        status = {"windows": 0}
        while status["windows"] < 2 and time.time() < deadline:
            time.sleep(0.3)
            status = json.loads(urllib.request.urlopen(url + "/api/status", timeout=5).read().decode("utf-8"))
        assert status["windows"] >= 2, status
        assert status["model"] == "tiny-heart" and status["backend"] == "onnxruntime"
        assert status["device_status"] == "replaying" and status["decision"]
        png = urllib.request.urlopen(url + "/api/latest.png", timeout=5).read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        history = json.loads(urllib.request.urlopen(url + "/api/history", timeout=5).read().decode("utf-8"))
        assert history["classes"] == ["extra", "murmur", "normal"] and len(history["items"]) >= 2
        metrics = parse_prometheus(urllib.request.urlopen(url + "/metrics", timeout=5).read().decode("utf-8"))
        assert metrics["stetho_windows_total"]["samples"][""] >= 2
        page = urllib.request.urlopen(url + "/", timeout=5).read()
        assert b"probability history" in page
        stopped = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.time() - stopped < 2.5, "the service must stop within 2 s of SIGTERM"
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "/api/status", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

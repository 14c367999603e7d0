"""The service's live status page: a small read-only HTTP server over a :class:`ServiceState`.

    server = start_status_server("127.0.0.1", 8080, state)   # serves in a daemon thread
    ...
    server.shutdown()                                         # stops serving and closes the socket

Routes (GET and HEAD only; any other method gets 405, any other path 404):

    /                  one self-contained HTML page (no external assets): latest overlay, current decision,
                       probability-history chart; it polls the JSON routes below once a second
    /api/status        JSON: model, classes, backend, device, uptime, windows, dropped frames, last result
    /api/history       JSON: {"classes": [...], "items": [{time, decision, quality, probabilities}, ...]};
                       ``?limit=N`` keeps the newest N items
    /api/latest.png    the latest overlay PNG (404 until the first window is classified)
    /metrics           Prometheus text exposition format 0.0.4 from ServiceState.metrics()

Nothing is ever read from disk by path: the routes are a fixed table matched exactly against the raw
(undecoded) request path, so ``/../etc/passwd`` or ``/%2e%2e/`` are simply unknown paths.  The request line
and headers are bounded (414 / 431), the socket has a read timeout, concurrent connections are capped, and
every response carries ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff`` (the page also a
Content-Security-Policy that allows only its own inline script and style, by hash).  Request lines are logged
at DEBUG through ``logging`` (logger ``stetho.http``), problems at WARNING.

Python 3.6, stdlib only (``http.server.ThreadingHTTPServer`` is 3.7+, so ``socketserver.ThreadingMixIn``).
"""
import base64
import hashlib
import io
import json
import logging
import math
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

log = logging.getLogger("stetho.http")

DEFAULT_HOST = "127.0.0.1"
MAX_REQUEST_LINE = 2048    # bytes, including CRLF; longer → 414
MAX_HEADER_LINE = 4096     # bytes per header line; longer → 431
MAX_HEADER_BYTES = 16384   # bytes for all header lines together → 431
MAX_HEADERS = 64           # header lines → 431
MAX_CLIENTS = 16           # connections served at once; more are closed at once
SOCKET_TIMEOUT_S = 10.0    # a client that sends nothing for this long is dropped
HISTORY_LIMIT_MAX = 10000  # ?limit= is clamped to this
LINGER_S = 0.5             # after replying, read what a client still sends for at most this long ...
LINGER_BYTES = 1 << 20     # ... or this many bytes, then close

_STYLE = """
body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#10151c;color:#e6edf3}
header{display:flex;flex-wrap:wrap;gap:4px 18px;align-items:baseline;padding:10px 16px;background:#18202b}
header h1{font-size:17px;margin:0 8px 0 0}
header span{color:#9fb0c0}
header b{color:#e6edf3;font-weight:600}
main{display:flex;flex-wrap:wrap;gap:16px;padding:16px}
section{background:#18202b;border-radius:8px;padding:12px}
#overlay-box{width:288px}
#overlay{width:288px;height:288px;image-rendering:pixelated;background:#000;display:block}
#noimage{color:#9fb0c0;padding:124px 0;text-align:center}
#decision-box{flex:1;min-width:260px}
#decision{font-size:44px;font-weight:700;margin:4px 0}
#quality{color:#9fb0c0}
.bar{display:flex;align-items:center;gap:8px;margin:4px 0}
.bar .name{width:110px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{display:block;flex:1;height:14px;background:#263241;border-radius:3px}
.bar .fill{display:block;height:14px;border-radius:3px}
.bar .pct{width:64px;text-align:right;font-variant-numeric:tabular-nums}
#chart-box{flex-basis:100%}
#chart{width:100%;height:200px;display:block}
#legend span{margin-right:14px}
#offline{display:none;background:#8b1e1e;color:#fff;padding:6px 16px}
footer{color:#6e7f90;padding:0 16px 16px;font-size:13px}
"""

_SCRIPT = """
"use strict";
var COLORS = ["#4fc3f7", "#ff8a65", "#aed581", "#ba68c8", "#ffd54f", "#4db6ac", "#f06292", "#90a4ae"];
var lastWindows = -1;
function $(id) { return document.getElementById(id); }
function color(i) { return COLORS[i % COLORS.length]; }
function text(id, value) { $(id).textContent = (value === null || value === undefined || value === "") ? "-" : value; }
function getJSON(url) {
  return fetch(url, {cache: "no-store"}).then(function (r) {
    if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
    return r.json();
  });
}
function duration(s) {
  s = Math.floor(s);
  var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (s % 60) + " s";
}
function drawBars(classes, probs) {
  var box = $("bars");
  while (box.firstChild) { box.removeChild(box.firstChild); }
  classes.forEach(function (name, i) {
    var p = probs && typeof probs[name] === "number" ? probs[name] : 0;
    var row = document.createElement("div"), label = document.createElement("span"),
        track = document.createElement("span"), fill = document.createElement("span"),
        pct = document.createElement("span");
    row.className = "bar"; label.className = "name"; track.className = "track"; fill.className = "fill";
    pct.className = "pct";
    label.textContent = name; pct.textContent = (100 * p).toFixed(1) + "%";
    fill.style.width = (100 * Math.max(0, Math.min(1, p))).toFixed(1) + "%";
    fill.style.background = color(i);
    track.appendChild(fill); row.appendChild(label); row.appendChild(track); row.appendChild(pct);
    box.appendChild(row);
  });
}
function svg(tag, attrs) {
  var el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
  return el;
}
function drawChart(classes, items) {
  var chart = $("chart"), W = 1000, H = 200, L = 40, R = 8, T = 8, B = 22;
  while (chart.firstChild) { chart.removeChild(chart.firstChild); }
  [0, 0.25, 0.5, 0.75, 1].forEach(function (v) {
    var y = T + (1 - v) * (H - T - B);
    chart.appendChild(svg("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#2c3a4b", "stroke-width": 1}));
    var label = svg("text", {x: L - 6, y: y + 4, fill: "#9fb0c0", "font-size": 11, "text-anchor": "end"});
    label.textContent = v.toFixed(2);
    chart.appendChild(label);
  });
  var legend = $("legend");
  while (legend.firstChild) { legend.removeChild(legend.firstChild); }
  classes.forEach(function (name, i) {
    var s = document.createElement("span");
    s.textContent = "\\u25A0 " + name;
    s.style.color = color(i);
    legend.appendChild(s);
  });
  if (!items.length) { return; }
  var t0 = items[0].time, t1 = items[items.length - 1].time, span = Math.max(t1 - t0, 1e-6);
  var caption = svg("text", {x: W - R, y: H - 6, fill: "#9fb0c0", "font-size": 11, "text-anchor": "end"});
  caption.textContent = "last " + items.length + " windows, " + duration(t1 - t0);
  chart.appendChild(caption);
  classes.forEach(function (name, i) {
    var points = items.map(function (item, k) {
      var p = (item.probabilities && typeof item.probabilities[name] === "number") ? item.probabilities[name] : 0;
      var x = items.length === 1 ? W - R : L + (W - L - R) * (item.time - t0) / span;
      return x.toFixed(1) + "," + (T + (1 - p) * (H - T - B)).toFixed(1);
    });
    chart.appendChild(svg("polyline", {points: points.join(" "), fill: "none", stroke: color(i),
                                       "stroke-width": 2, "stroke-linejoin": "round"}));
  });
}
function refresh() {
  getJSON("/api/status").then(function (s) {
    $("offline").style.display = "none";
    text("model", s.model); text("backend", s.backend); text("device", s.device);
    text("device-status", s.device_status); text("uptime", duration(s.uptime_s));
    text("windows", s.windows); text("dropped", s.dropped_frames);
    text("decision", s.decision === null ? "waiting for audio" : s.decision);
    text("quality", s.quality === null ? "" : "signal: " + s.quality);
    drawBars(s.classes, s.last ? s.last.probabilities : null);
    if (s.windows !== lastWindows) {
      lastWindows = s.windows;
      if (s.windows > 0) {
        $("overlay").src = "/api/latest.png?n=" + s.windows;
      }
      return getJSON("/api/history?limit=300").then(function (h) { drawChart(h.classes, h.items); });
    }
  }).catch(function (e) {
    $("offline").textContent = "status unavailable: " + e.message;
    $("offline").style.display = "block";
  });
}
document.addEventListener("DOMContentLoaded", function () {
  $("overlay").addEventListener("load", function () {
    $("overlay").style.display = "block"; $("noimage").style.display = "none";
  });
  $("overlay").addEventListener("error", function () {
    $("overlay").style.display = "none"; $("noimage").style.display = "block";
  });
  $("overlay").style.display = "none";
  refresh();
  setInterval(refresh, 1000);
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>stethoscope-nano status</title>
<style>%(style)s</style>
<script>%(script)s</script>
</head>
<body>
<div id="offline"></div>
<header>
<h1>stethoscope-nano</h1>
<span>model <b id="model">-</b></span>
<span>backend <b id="backend">-</b></span>
<span>input <b id="device">-</b> (<b id="device-status">-</b>)</span>
<span>up <b id="uptime">-</b></span>
<span>windows <b id="windows">-</b></span>
<span>dropped frames <b id="dropped">-</b></span>
</header>
<main>
<section id="overlay-box"><img id="overlay" alt="latest spectrogram overlay"><div id="noimage">no overlay yet</div></section>
<section id="decision-box"><div>current decision</div><div id="decision">-</div><div id="quality"></div>
<div id="bars"></div></section>
<section id="chart-box"><div>probability history</div>
<svg id="chart" viewBox="0 0 1000 200" preserveAspectRatio="none" role="img" aria-label="probability history"></svg>
<div id="legend"></div></section>
</main>
<footer>Read-only status page. Not a diagnosis: a screening aid to be interpreted by a clinician.
JSON: /api/status, /api/history; Prometheus: /metrics.</footer>
</body>
</html>
""" % {"style": _STYLE, "script": _SCRIPT}


def _csp_hash(source):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii")


PAGE_BYTES = _PAGE.encode("utf-8")
PAGE_CSP = ("default-src 'none'; img-src 'self'; connect-src 'self'; script-src %s; style-src %s; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'" % (_csp_hash(_SCRIPT), _csp_hash(_STYLE)))

_COMMON_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                   ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"))

JSON_TYPE = "application/json; charset=utf-8"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (unit-testable without a socket)

def parse_address(text, default_host=DEFAULT_HOST):
    """``"HOST:PORT"``, ``":PORT"``, ``"PORT"`` or ``"[IPv6]:PORT"`` → (host, port).  Missing host → 127.0.0.1."""
    text = (text or "").strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("bad --http address %r: use [IPv6]:PORT" % text)
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" not in text:
        host, port = "", text
    else:
        raise ValueError("bad --http address %r: write IPv6 addresses as [ADDR]:PORT" % text)
    try:
        port = int(port)
    except ValueError:
        raise ValueError("bad --http address %r: port %r is not a number" % (text, port))
    if not 0 <= port <= 65535:
        raise ValueError("bad --http address %r: port %d out of range 0..65535" % (text, port))
    return host or default_host, port


def _number(value):
    """A Prometheus sample value: integers as integers, floats round-trip, NaN / ±Inf spelled as the format wants."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape_label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(metrics):
    """ServiceState.metrics() ({name: (type, help, [(labels, value)])}) → text exposition format 0.0.4."""
    lines = []
    for name in sorted(metrics):
        kind, help_text, samples = metrics[name]
        lines.append("# HELP %s %s" % (name, str(help_text).replace("\\", "\\\\").replace("\n", "\\n")))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            label_text = ",".join('%s="%s"' % (k, _escape_label(labels[k])) for k in sorted(labels))
            lines.append("%s%s %s" % (name, "{%s}" % label_text if label_text else "", _number(value)))
    return "\n".join(lines) + "\n"


def _plain(value):
    """Make a result JSON-safe: numpy scalars/arrays → Python, NaN/Inf → None (browsers reject bare NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy
        return _plain(value.tolist())
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def json_bytes(obj):
    return json.dumps(_plain(obj), sort_keys=True, allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# The handler

class _HeadersTooLarge(Exception):
    pass


class StatusHandler(BaseHTTPRequestHandler):
    """One request: bounded parsing, a fixed route table, no files."""

    server_version = "stetho-status"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and nothing to keep alive on a Nano
    default_request_version = "HTTP/1.0"  # so even a garbled request line gets a status line and headers back
    timeout = SOCKET_TIMEOUT_S

    def handle_one_request(self):
        """Like the stdlib's, with tighter limits and the headers read (and bounded) before parsing."""
        self.close_connection = True
        self.command, self.request_version, self.requestline = None, self.default_request_version, ""
        try:
            line = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST_LINE:
                self.send_error(414, "Request line longer than %d bytes" % MAX_REQUEST_LINE)
                return
            try:
                head = self._read_header_block()
            except _HeadersTooLarge as error:
                self.raw_requestline = line
                self.requestline = line.decode("iso-8859-1").rstrip("\r\n")
                self.send_error(431, str(error))
                return
            self.raw_requestline = line
            socket_file, self.rfile = self.rfile, io.BytesIO(head)
            try:
                parsed = self.parse_request()   # sends 400/505 itself when the request is malformed
            finally:
                self.rfile = socket_file
            if not parsed:
                return
            if self.command not in ("GET", "HEAD"):
                self.send_error(405, "Read-only: GET and HEAD only")
                return
            self._serve(head_only=self.command == "HEAD")
            self.wfile.flush()
        except socket.timeout:
            log.debug("client %s timed out", self.client_address[0])
        except (ConnectionError, BrokenPipeError):
            log.debug("client %s went away", self.client_address[0])

    def _read_header_block(self):
        lines, total = [], 0
        while True:
            line = self.rfile.readline(MAX_HEADER_LINE + 1)
            total += len(line)
            if len(line) > MAX_HEADER_LINE:
                raise _HeadersTooLarge("A header line is longer than %d bytes" % MAX_HEADER_LINE)
            if total > MAX_HEADER_BYTES:
                raise _HeadersTooLarge("Headers are longer than %d bytes" % MAX_HEADER_BYTES)
            if len(lines) >= MAX_HEADERS:
                raise _HeadersTooLarge("More than %d header lines" % MAX_HEADERS)
            lines.append(line)
            if line in (b"\r\n", b"\n", b""):
                return b"".join(lines)

    # -- routing ----------------------------------------------------------------------------------------------

    def _serve(self, head_only):
        path, _, query = self.path.partition("?")
        routes = {
            "/": self._page,
            "/index.html": self._page,
            "/api/status": self._status,
            "/api/history": self._history,
            "/api/latest.png": self._latest_png,
            "/metrics": self._metrics,
        }
        route = routes.get(path)
        if route is None:
            self.send_error(404, "No such page")
            return
        try:
            result = route(query)
        except ValueError as error:
            self.send_error(400, str(error))
            return
        except Exception:  # a bug must not kill the service thread; log it and answer 500
            log.exception("status page: %s failed", path)
            self.send_error(500, "Internal error (see the service log)")
            return
        code, content_type, body, extra = result
        self._respond(code, content_type, body, extra, head_only)

    def _page(self, query):
        return 200, "text/html; charset=utf-8", PAGE_BYTES, [("Content-Security-Policy", PAGE_CSP)]

    def _status(self, query):
        return 200, JSON_TYPE, json_bytes(self.server.state.snapshot()), []

    def _history(self, query):
        limit = None
        for part in filter(None, query.split("&")):
            key, _, value = part.partition("=")
            if key == "limit":
                try:
                    limit = int(value)
                except ValueError:
                    raise ValueError("limit must be a whole number, got %r" % value[:32])
                if limit < 1:
                    raise ValueError("limit must be at least 1")
                limit = min(limit, HISTORY_LIMIT_MAX)
        state = self.server.state
        return 200, JSON_TYPE, json_bytes({"classes": state.classes, "items": state.history(limit)}), []

    def _latest_png(self, query):
        png = self.server.state.latest_png()
        if png is None:
            return 404, "text/plain; charset=utf-8", b"no overlay yet\n", []
        return 200, "image/png", bytes(png), []

    def _metrics(self, query):
        return 200, METRICS_TYPE, prometheus_text(self.server.state.metrics()).encode("utf-8"), []

    # -- responses --------------------------------------------------------------------------------------------

    def _respond(self, code, content_type, body, extra_headers=(), head_only=False):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _COMMON_HEADERS + tuple(extra_headers):
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """Plain-text errors with the same safe headers (the stdlib's HTML error page echoes input back)."""
        self.close_connection = True
        text = "%d %s\n" % (code, message or self.responses.get(code, ("Error",))[0])
        extra = [("Allow", "GET, HEAD")] if code == 405 else []
        try:
            self._respond(code, "text/plain; charset=utf-8", text.encode("utf-8"), extra,
                          head_only=self.command == "HEAD")
        except (OSError, socket.timeout):
            pass

    # -- logging ----------------------------------------------------------------------------------------------

    def log_request(self, code="-", size="-"):
        log.debug('%s "%s" %s', self.client_address[0], self.requestline[:200], code)

    def log_error(self, fmt, *args):
        log.warning("status page: %s: " + fmt, self.client_address[0], *args)

    def log_message(self, fmt, *args):
        log.debug("status page: %s: " + fmt, self.client_address[0], *args)


# ---------------------------------------------------------------------------------------------------------------
# The server

class StatusServer(socketserver.ThreadingMixIn, HTTPServer):
    """A threaded HTTP server (Python 3.6 has no ThreadingHTTPServer) with a cap on concurrent connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address, state, max_clients=MAX_CLIENTS):
        self.state = state
        self.max_clients = max_clients
        self._slots = threading.BoundedSemaphore(max_clients)
        self._stopped = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        HTTPServer.__init__(self, address, StatusHandler)

    def server_bind(self):
        # HTTPServer.server_bind() calls socket.getfqdn(), a DNS lookup that can stall for seconds on an
        # offline Nano; the name is only used in CGI environments, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.warning("status page: more than %s connections at once; dropping %s",
                        self.max_clients, client_address[0])
            self.shutdown_request(request)
            return
        try:
            socketserver.ThreadingMixIn.process_request(self, request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request):
        """Lingering close: after the reply, read (and drop) what the client still sends, a little while.

        Closing a socket with unread input (an oversized request we refused, a POST body) makes the kernel
        send a reset, and the client then loses the error reply it was about to read.
        """
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER_S)
            deadline, drained = time.time() + LINGER_S, 0
            while drained < LINGER_BYTES and time.time() < deadline:
                chunk = request.recv(16384)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request, client_address):
        log.warning("status page: error serving %s", client_address[0], exc_info=True)

    def shutdown(self):
        """Stop serving (returns within ~0.5 s) and close the listening socket.  Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        HTTPServer.shutdown(self)
        self.server_close()


def start_status_server(host, port, state, max_clients=MAX_CLIENTS):
    """Serve the status page for ``state`` on host:port in a daemon thread; returns the server.

    ``server.server_address`` is the bound address (port 0 picks a free port); ``server.shutdown()`` stops it.
    Raises OSError (e.g. address in use) before any thread starts.
    """
    host = (host or DEFAULT_HOST).strip("[]")  # "[::1]" as written in a URL → "::1"
    server = StatusServer((host, int(port)), state, max_clients=max_clients)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                              name="stetho-status-http", daemon=True)
    thread.start()
    log.info("status page on http://%s:%d/", *_display_address(server.server_address))
    return server


def _display_address(address):
    host, port = address[0], address[1]
    return ("[%s]" % host if ":" in host else host), port

"""The service's live status page: a small read-only HTTP server over a :class:`ServiceState`.

    server = start_status_server("127.0.0.1", 8080, state)   # serves in a daemon thread
    server = start_status_server("0.0.0.0", 8080, state, token=read_token_file("/etc/stetho/http-token"))
    ...
    server.shutdown()                                         # stops serving and closes the socket

Routes (GET and HEAD only; any other method gets 405, any other path 404):

    /                  one self-contained HTML page (no external assets): latest overlay, current decision,
                       probability-history chart with a time axis, a banner when the model was trained on
                       synthetic data; it polls the JSON routes below once a second
    /api/status        JSON: model, classes, backend, device, uptime, windows, dropped frames, last result,
                       ``info`` (what the service knows of the model, e.g. ``{"synthetic": true}``)
    /api/history       JSON: {"classes": [...], "items": [{time, decision, quality, probabilities}, ...]};
                       ``?limit=N`` keeps the newest N items
    /api/latest.png    the latest overlay PNG (404 until the first window is classified)
    /metrics           Prometheus text exposition format 0.0.4 from ServiceState.metrics()

Nothing is ever read from disk by path: the routes are a fixed table matched exactly against the raw
(undecoded) request path, so ``/../etc/passwd`` or ``/%2e%2e/`` are simply unknown paths.

Who may ask:

* Host header (DNS rebinding): only IP literals, ``localhost``, this machine's name (``socket.gethostname()``,
  its first label, and either with ``.local``), the bound name, and names given in ``allowed_hosts``
  (``--http-allow-host``); any other name gets 403.  HTTP/1.0 without a Host is allowed; HTTP/1.1 without
  one (or with two) gets 400.
* Token (``--http-token`` / ``--http-token-file``): when set, every route needs it, as
  ``Authorization: Bearer TOKEN`` (curl, Prometheus), the cookie ``stetho_token`` or, on the page only,
  ``/?token=TOKEN``; the page then sets that cookie (HttpOnly, SameSite=Strict) so its own requests carry it,
  and its script removes the token from the address bar.  401 otherwise.  Compared with hmac.compare_digest;
  never logged.  Binding a non-loopback address without a token logs a WARNING at start.

Slow or idle clients: the request line and headers must arrive within ``request_timeout`` seconds in all
(REQUEST_TIMEOUT_S, 5 s) however the client trickles them; the reply goes into a send buffer big enough to
hold it whole (SEND_BUFFER_BYTES), and must otherwise be taken within WRITE_TIMEOUT_S.
At most ``max_clients`` connections are open at once; when a new one arrives and all are taken, the oldest
connection still sending its request is dropped to make room (a normal client sends its request in one
packet, so the ones still sending are the slow ones), and only when every connection is past its request
is the new one refused.  Slow clients therefore cannot starve a normal one, with one bounded pool of
threads.  Refused, dropped, timed-out and unauthorised requests are counted and reported in one WARNING at
most once a minute (``at most one such warning a minute``), never one per connection.

Every response carries ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``, ``X-Frame-Options:
DENY`` and ``Referrer-Policy: no-referrer`` (the page also a Content-Security-Policy that allows only its
own inline script and style, by hash).  Request lines are logged at DEBUG (token redacted) through
``logging`` (logger ``stetho.http``).

Python 3.6, stdlib only (``http.server.ThreadingHTTPServer`` is 3.7+, so ``socketserver.ThreadingMixIn``).
"""
import base64
import collections
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import re
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import unquote

log = logging.getLogger("stetho.http")

DEFAULT_HOST = "127.0.0.1"
MAX_REQUEST_LINE = 2048    # bytes, including CRLF; longer → 414
MAX_HEADER_LINE = 4096     # bytes per header line; longer → 431
MAX_HEADER_BYTES = 16384   # bytes for all header lines together → 431
MAX_HEADERS = 64           # header lines → 431
MAX_CLIENTS = 16           # connections open at once (see the module doc for who makes room for whom)
REQUEST_TIMEOUT_S = 5.0    # the whole request line + headers must arrive within this, else 408 and close
WRITE_TIMEOUT_S = 10.0     # a reply (headers, then body) must be taken by the client within this
SEND_BUFFER_BYTES = 262144  # the kernel takes a whole reply (an overlay PNG is ~70 kB) at once, so a client that
                            # reads slowly (or never) does not keep its connection busy (the kernel caps this at
                            # net.core.wmem_max, 208 kB by default, and doubles it)
HISTORY_LIMIT_MAX = 10000  # ?limit= is clamped to this
LINGER_S = 0.5             # after replying, read what a client still sends for at most this long ...
LINGER_BYTES = 1 << 20     # ... or this many bytes, then close
SUMMARY_INTERVAL_S = 60.0  # at most one WARNING about refused/dropped connections per this many seconds
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096     # as systemd/install.sh accepts
TOKEN_COOKIE = "stetho_token"
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")   # URL-, cookie- and header-safe as written
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&]token=)[^&\s]*")
_PORT = re.compile(r"^[0-9]{0,5}$")   # RFC 3986: port = *DIGIT (ASCII digits only: str.isdigit takes '²')

_STYLE = """
body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#10151c;color:#e6edf3}
header{display:flex;flex-wrap:wrap;gap:4px 18px;align-items:baseline;padding:10px 16px;background:#18202b}
header h1{font-size:17px;margin:0 8px 0 0}
header span{color:#9fb0c0}
header b{color:#e6edf3;font-weight:600}
main{display:flex;flex-wrap:wrap;gap:16px;padding:16px}
section{background:#18202b;border-radius:8px;padding:12px}
#overlay-box{max-width:100%}
#overlay{max-width:100%;min-width:288px;image-rendering:pixelated;background:#000;display:block}
#noimage{color:#9fb0c0;padding:124px 0;text-align:center;width:288px}
#decision-box{flex:1;min-width:260px}
#decision{font-size:44px;font-weight:700;margin:4px 0}
#quality{color:#9fb0c0}
.bar{display:flex;align-items:center;gap:8px;margin:4px 0}
.bar .name{width:110px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{display:block;flex:1;height:14px;background:#263241;border-radius:3px}
.bar .fill{display:block;height:14px;border-radius:3px}
.bar .pct{width:64px;text-align:right;font-variant-numeric:tabular-nums}
#chart-box{flex-basis:100%}
#chart-caption{color:#9fb0c0;margin-left:8px}
#chart{width:100%;height:200px;display:block}
#legend span{margin-right:14px}
#offline{display:none;background:#8b1e1e;color:#fff;padding:6px 16px}
#synthetic{display:none;background:#8a5a00;color:#fff;padding:8px 16px;font-weight:600}
#drift,#sinks{display:none;background:#6b2d5c;color:#fff;padding:8px 16px;font-weight:600}
#exam-box{flex:1 1 440px;min-width:300px}
#exam-now{font-size:18px;font-weight:600;margin:4px 0}
#exam-progress{height:10px;background:#263241;border-radius:3px;margin:6px 0}
#exam-progress span{display:block;height:10px;background:#4fc3f7;border-radius:3px}
#exams{width:100%;border-collapse:collapse;font-size:13px}
#exams td,#exams th{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid #263241}
#exams th{color:#9fb0c0;font-weight:400}
.verdict-normal{color:#81c784}.verdict-abnormal{color:#ef5350}.verdict-none{color:#9fb0c0}
footer{color:#6e7f90;padding:0 16px 16px;font-size:13px}
"""

_SCRIPT = """
"use strict";
var COLORS = ["#4fc3f7", "#ff8a65", "#aed581", "#ba68c8", "#ffd54f", "#4db6ac", "#f06292", "#90a4ae"];
var STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
var lastWindows = -1;
function $(id) { return document.getElementById(id); }
function color(i) { return COLORS[i % COLORS.length]; }
function text(id, value) { $(id).textContent = (value === null || value === undefined || value === "") ? "-" : value; }
function getJSON(url) {
  return fetch(url, {cache: "no-store", credentials: "same-origin"}).then(function (r) {
    if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
    return r.json();
  });
}
function duration(s) {
  s = Math.floor(s);
  var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (s % 60) + " s";
}
function pad(n) { return (n < 10 ? "0" : "") + n; }
function clockTime(t) {
  var d = new Date(t * 1000);
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}
function timeTicks(t0, t1, most) {
  var step = STEPS[STEPS.length - 1], ticks = [];
  for (var i = 0; i < STEPS.length; i++) {
    if ((t1 - t0) / STEPS[i] <= most) { step = STEPS[i]; break; }
  }
  for (var t = Math.ceil(t0 / step) * step; t <= t1 + 1e-6; t += step) { ticks.push(t); }
  return ticks;
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
  var chart = $("chart"), H = 200, L = 40, R = 12, T = 8, B = 24;
  var W = Math.max(300, Math.round(chart.getBoundingClientRect().width) || 1000);
  chart.setAttribute("viewBox", "0 0 " + W + " " + H);  // one unit = one pixel: labels are not stretched
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
  items = items.filter(function (item) { return typeof item.time === "number"; });
  if (!items.length) { text("chart-caption", ""); return; }
  var t1 = items[items.length - 1].time, t0 = Math.min(items[0].time, t1 - 1), span = t1 - t0;
  function xOf(t) { return L + (W - L - R) * (t - t0) / span; }
  timeTicks(t0, t1, Math.max(2, Math.floor((W - L - R) / 90))).forEach(function (t) {
    var x = xOf(t);
    chart.appendChild(svg("line", {x1: x, x2: x, y1: T, y2: H - B, stroke: "#223041", "stroke-width": 1}));
    var label = svg("text", {x: x, y: H - 7, fill: "#9fb0c0", "font-size": 11, "class": "tick",
                             "text-anchor": x > W - R - 28 ? "end" : "middle"});
    label.textContent = clockTime(t);
    chart.appendChild(label);
  });
  text("chart-caption", "last " + items.length + " windows over " + duration(items[items.length - 1].time -
       items[0].time) + "; time of day");
  classes.forEach(function (name, i) {
    var points = items.map(function (item) {
      var p = (item.probabilities && typeof item.probabilities[name] === "number") ? item.probabilities[name] : 0;
      return xOf(item.time).toFixed(1) + "," + (T + (1 - p) * (H - T - B)).toFixed(1);
    });
    chart.appendChild(svg("polyline", {points: points.join(" "), fill: "none", stroke: color(i),
                                       "stroke-width": 2, "stroke-linejoin": "round"}));
  });
}
function cell(row, value, cls) {
  var td = document.createElement("td");
  td.textContent = value;
  if (cls) { td.className = cls; }
  row.appendChild(td);
}
function verdictClass(exam) {
  if (exam.label === null || exam.label === undefined) { return "verdict-none"; }
  return /^(normal|n|healthy)$/i.test(exam.label) ? "verdict-normal" : "verdict-abnormal";
}
function drawExams(s) {
  var now = s.exam, box = $("exams-body");
  if (now) {
    var share = Math.min(1, now.accepted_s / now.min_s);
    text("exam-now", "exam " + now.exam + " in progress: " + now.accepted_s.toFixed(1) +
         (share < 1 ? " of " + now.min_s.toFixed(0) + " s of good contact" : " s of good contact (enough for a verdict)")
         + (now.provisional ? "; so far " + now.provisional.label +
         (now.provisional.p_abnormal === null ? "" : " (P(abnormal) " + now.provisional.p_abnormal.toFixed(2) + ")")
         : ""));
    $("exam-progress").firstChild.style.width = (100 * share).toFixed(0) + "%";
  } else {
    text("exam-now", "no exam in progress: place the chest piece");
    $("exam-progress").firstChild.style.width = "0%";
  }
  while (box.firstChild) { box.removeChild(box.firstChild); }
  (s.exams || []).forEach(function (e) {
    var row = document.createElement("tr");
    cell(row, clockTime(e.end_time));
    cell(row, e.stream);
    cell(row, e.verdict + (e.p_abnormal === null || e.p_abnormal === undefined ? "" :
                           " (" + e.p_abnormal.toFixed(2) + ")"), verdictClass(e));
    cell(row, e.accepted_s.toFixed(0) + " s");
    cell(row, e.drift && e.drift.flag ? "unlike training data" : "");
    cell(row, e.interrupted ? "interrupted" : e.ended);
    box.appendChild(row);
  });
  var drift = s.drift, device = s.device_drift;
  var flagged = (drift && drift.flag) || (device && device.flag);
  $("drift").style.display = flagged ? "block" : "none";
  if (flagged) {
    $("drift").textContent = "This microphone sounds unlike the training data (" +
      (drift && drift.flag ? "drift " + drift.score.toFixed(1) + " >= " + drift.threshold.toFixed(1) +
       " over the last " + drift.windows + " windows" : "") +
      (drift && drift.flag && device && device.flag ? "; " : "") +
      (device && device.flag ? "mean drift " + device.mean_score.toFixed(2) + " >= " +
       device.threshold.toFixed(2) + " over the last " + device.exams + " exams" : "") +
      "): verdicts may be unreliable. Record 5-10 minutes of exams (--keep-audio) and adapt the model " +
      "(train_host/adapt.py).";
  }
  var problems = s.sink_problems || [];
  $("sinks").style.display = problems.length ? "block" : "none";
  if (problems.length) {
    $("sinks").textContent = "Not everything is being saved: " + problems.map(function (p) {
      return typeof p === "string" ? p : (p.sink + ": " + (p.message || p.status));
    }).join("; ");
  }
}
function refresh() {
  getJSON("/api/status").then(function (s) {
    $("offline").style.display = "none";
    $("synthetic").style.display = (s.info && s.info.synthetic === true) ? "block" : "none";
    drawExams(s);
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
  if (/[?&]token=/.test(location.search) && window.history && history.replaceState) {
    history.replaceState(null, "", location.pathname);  // the cookie carries it from now on
  }
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
<div id="synthetic" role="alert">Demonstration model: trained on synthetic data, not on patient recordings.
Its results say nothing about this patient.</div>
<div id="drift" role="alert"></div>
<div id="sinks" role="alert"></div>
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
<section id="exam-box"><div>examination (one verdict per listen)</div><div id="exam-now">-</div>
<div id="exam-progress"><span></span></div>
<table id="exams"><thead><tr><th>ended</th><th>stream</th><th>verdict</th><th>good contact</th><th>drift</th>
<th>how it ended</th></tr></thead><tbody id="exams-body"></tbody></table></section>
<section id="chart-box"><div>probability history<span id="chart-caption"></span></div>
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
TEXT_TYPE = "text/plain; charset=utf-8"


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


def check_token(token, origin="--http-token"):
    """The token as given, or ValueError naming ``origin`` when it is empty, short or has unsafe characters.

    16 to 4096 characters (MIN/MAX_TOKEN_CHARS) of ``A-Z a-z 0-9 . _ ~ + / = -`` (what ``openssl rand -hex``,
    ``-base64`` and Python's ``secrets.token_urlsafe`` print), so it travels unchanged in a header, a cookie
    and a URL.
    """
    token = "" if token is None else str(token)
    hint = "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError("%s: the token is %s; use at least %d characters (%s)"
                         % (origin, "empty" if not token else "only %d characters" % len(token),
                            MIN_TOKEN_CHARS, hint))
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError("%s: the token is %d characters; at most %d" % (origin, len(token), MAX_TOKEN_CHARS))
    if not _TOKEN_CHARS.match(token):
        raise ValueError("%s: the token may only hold A-Z a-z 0-9 . _ ~ + / = - (no spaces or quotes; %s)"
                         % (origin, hint))
    return token


def read_token_file(path):
    """The token in ``path`` (one line; surrounding whitespace and the newline dropped), checked by check_token.

    Warns when the file is readable by every user (a token beside world-readable settings protects nothing).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(2 * MAX_TOKEN_CHARS + 1)
        mode = os.stat(path).st_mode
    except (IOError, OSError) as error:
        raise ValueError("--http-token-file %s: cannot read (%s)" % (path, getattr(error, "strerror", error)))
    if len(data) > 2 * MAX_TOKEN_CHARS:
        raise ValueError("--http-token-file %s: longer than %d bytes; not a token file" % (path, 2 * MAX_TOKEN_CHARS))
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError("--http-token-file %s: not ASCII text" % path)
    if "\n" in token:
        raise ValueError("--http-token-file %s: holds more than one line; the token is one line" % path)
    token = check_token(token, "--http-token-file %s" % path)
    if mode & stat.S_IROTH:
        log.warning("--http-token-file %s is readable by every user on this machine; chmod 600 it", path)
    return token


def load_token(token=None, token_file=None):
    """--http-token / --http-token-file (either, not both) → the checked token, or None when neither is set."""
    if token and token_file:
        raise ValueError("--http-token and --http-token-file both given; use one (the file keeps it out of "
                         "world-readable settings)")
    if token_file:
        return read_token_file(token_file)
    if token is not None:
        return check_token(token)
    return None


def parse_allowed_hosts(text):
    """``"NAME[,NAME...]"`` (--http-allow-host) → [lower-case names]; ValueError for anything not a host name."""
    names = []
    for part in (text or "").split(","):
        name = part.strip().lower().rstrip(".")
        if not part.strip():
            continue
        if not _HOST_NAME.match(name):
            raise ValueError("--http-allow-host: %r is not a host name (letters, digits, '-' and '.')" % part.strip())
        names.append(name)
    return names


def allowed_host_names(bind_host="", extra=()):
    """The names a Host header may carry besides IP literals: localhost, this machine's names, the bound
    name (when it is a name), and ``extra``."""
    names = {"localhost"}
    try:
        own = socket.gethostname().lower().rstrip(".")
    except OSError:
        own = ""
    for name in (own, own.split(".")[0]):
        if name and name != "localhost":
            names.update((name, name + ".local"))
    bind_host = (bind_host or "").strip("[]").lower().rstrip(".")
    if bind_host and not _ip_literal(bind_host):
        names.add(bind_host)
    names.update(n.lower().rstrip(".") for n in extra)
    return frozenset(names)


def _ip_literal(text, version=None):
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0] if version == 6 else text)  # 3.6: no "%eth0" scopes
        return version is None or address.version == version
    except ValueError:
        return False


def host_allowed(value, names):
    """Whether a Host header value is an IP literal (v4, or v6 in brackets, either with an optional port) or
    one of ``names`` (lower case, see allowed_host_names) with an optional port.  DNS rebinding sends the
    attacker's own name here, which no list of ours holds."""
    value = value.strip().lower()
    if value.startswith("["):
        address, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and _PORT.match(rest[1:]))):
            return False
        return _ip_literal(address.replace("%25", "%"), 6)
    name, sep, port = value.partition(":")
    if sep and not _PORT.match(port):
        return False
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return False
    return name in names or _ip_literal(name, 4)


def is_loopback(host):
    """Whether binding ``host`` keeps the page on this machine (127.0.0.0/8, ::1, localhost)."""
    host = (host or DEFAULT_HOST).strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class DropSummary(object):
    """Counts requests not served, by reason, and logs them in one WARNING at most every ``interval`` s.

    The first one is reported at once (so a problem is seen), later ones are summed until the interval
    has passed and the next one arrives; :meth:`flush` reports what is left (at INFO) at shutdown.
    """

    def __init__(self, interval=SUMMARY_INTERVAL_S, clock=time.monotonic):
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._last = None
        self.total = collections.Counter()   # everything ever counted, for tests and the curious

    def note(self, reason):
        with self._lock:
            self._counts[reason] += 1
            self.total[reason] += 1
            now = self._clock()
            if self._last is not None and now - self._last < self.interval:
                return
            counts, self._counts, self._last = self._counts, collections.Counter(), now
        log.warning("status page: %s (at most one such warning a minute)", self._describe(counts))

    def flush(self):
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
        if counts:
            log.info("status page: %s since the last warning", self._describe(counts))

    @staticmethod
    def _describe(counts):
        return "%d request(s) not served: %s" % (sum(counts.values()), ", ".join(
            "%d %s" % (n, reason) for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))


# ---------------------------------------------------------------------------------------------------------------
# The handler

class _HeadersTooLarge(Exception):
    pass


class _TooSlow(Exception):
    """The request line and headers did not all arrive within the request deadline."""


class _Dropped(Exception):
    """The server dropped this connection to make room for a new one."""


class _HeadReader(object):
    """Reads the request head straight from the socket against one deadline for the whole head.

    A file's readline() under a socket timeout only bounds each recv(): a client sending a byte every few
    seconds keeps it going for ever.  Here every recv() gets the time left until the deadline.
    """

    def __init__(self, sock, deadline):
        self._sock = sock
        self._deadline = deadline
        self._buffer = b""
        self.received = 0
        self.closed = False

    def readline(self, limit):
        """Up to ``limit`` bytes ending in b"\\n" (fewer at end of input); _TooSlow past the deadline."""
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self._buffer) >= limit:
                cut = end + 1 if end >= 0 else limit
                line, self._buffer = self._buffer[:cut], self._buffer[cut:]
                return line
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise _TooSlow()
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(4096)
            except socket.timeout:
                raise _TooSlow()
            if not chunk:
                line, self._buffer = self._buffer, b""
                return line
            self.received += len(chunk)
            self._buffer += chunk

    def close(self):
        self.closed = True


class StatusHandler(BaseHTTPRequestHandler):
    """One request: bounded parsing against a deadline, Host and token checks, a fixed route table, no files."""

    server_version = "stetho-status"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and nothing to keep alive on a Nano
    default_request_version = "HTTP/1.0"  # so even a garbled request line gets a status line and headers back
    timeout = WRITE_TIMEOUT_S

    def setup(self):
        BaseHTTPRequestHandler.setup(self)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass
        self.rfile.close()  # the stdlib's buffered reader; the socket is read through _HeadReader instead
        self.rfile = _HeadReader(self.connection, time.monotonic() + self.server.request_timeout)

    def handle_one_request(self):
        """Like the stdlib's, with tighter limits, one deadline, and the headers read (and bounded) first."""
        self.close_connection = True
        self.command, self.request_version, self.requestline = None, self.default_request_version, ""
        reader = self.rfile
        try:
            line = reader.readline(MAX_REQUEST_LINE + 1)
            if not line or not self.server.is_open(self.request):
                return
            self.raw_requestline = line
            if len(line) > MAX_REQUEST_LINE:
                self.send_error(414, "Request line longer than %d bytes" % MAX_REQUEST_LINE)
                return
            try:
                head = self._read_header_block()
            except _HeadersTooLarge as error:
                self.requestline = line.decode("iso-8859-1").rstrip("\r\n")
                self.send_error(431, str(error))
                return
            if not self.server.begin_reply(self.request):
                return
            self.rfile = io.BytesIO(head)
            try:
                parsed = self.parse_request()   # sends 400/505 itself when the request is malformed
            finally:
                self.rfile = reader
            if not parsed or not self._host_ok():
                return
            if self.command not in ("GET", "HEAD"):
                self.send_error(405, "Read-only: GET and HEAD only")
                return
            self._serve(head_only=self.command == "HEAD")
            self.wfile.flush()
        except _TooSlow:
            if not reader.received:  # an idle connection (a browser's preconnect): close it, nothing to report
                log.debug("client %s sent nothing within %g s", self.client_address[0], self.server.request_timeout)
                return
            self.server.drops.note("timed out (request not complete within %g s)" % self.server.request_timeout)
            if self.server.begin_reply(self.request):
                self.send_error(408, "Request not complete within %g s" % self.server.request_timeout)
        except _Dropped:
            log.debug("client %s dropped to make room", self.client_address[0])
        except socket.timeout:
            log.debug("client %s did not take its reply within %g s", self.client_address[0], WRITE_TIMEOUT_S)
        except OSError:   # reset, broken pipe, or the socket shut down by the server (dropped)
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

    # -- who may ask ------------------------------------------------------------------------------------------

    def _host_ok(self):
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            self.send_error(400, "More than one Host header")
            return False
        if not hosts:
            if self.request_version == "HTTP/1.0":
                return True
            self.send_error(400, "An %s request needs a Host header" % self.request_version)
            return False
        if host_allowed(hosts[0], self.server.allowed_hosts):
            return True
        self.server.drops.note("refused for their Host header")
        self.send_error(403, "Host %r is not a name of this device; use its IP address, or start the service with "
                             "--http-allow-host NAME" % hosts[0][:100])
        return False

    def _token_ok(self, query, page):
        """(allowed, token came in the query) for this request; always allowed when no token is set."""
        expected = self.server.token
        if expected is None:
            return True, False
        candidates = []
        for value in self.headers.get_all("Authorization") or []:
            scheme, _, credential = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                candidates.append(("header", credential.strip()))
        for value in self.headers.get_all("Cookie") or []:
            for part in value.split(";"):
                name, sep, cookie = part.strip().partition("=")
                if sep and name == TOKEN_COOKIE:
                    candidates.append(("cookie", cookie.strip().strip('"')))
        if page:
            for part in query.split("&"):
                key, sep, value = part.partition("=")
                if sep and key == "token":
                    candidates.append(("query", unquote(value)))
        good = [where for where, value in candidates
                if hmac.compare_digest(value.encode("utf-8", "replace"), expected)]
        return bool(good), "query" in good and "cookie" not in good

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
        allowed, set_cookie = self._token_ok(query, page=path in ("/", "/index.html"))
        if not allowed:
            self.server.drops.note("without a valid token")
            self.send_error(401, "This status page needs its token: open /?token=TOKEN once in the browser, or "
                                 "send 'Authorization: Bearer TOKEN'",
                            extra=[("WWW-Authenticate", 'Bearer realm="stetho-status"')])
            return
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
        if set_cookie:
            extra = list(extra) + [("Set-Cookie", "%s=%s; Path=/; HttpOnly; SameSite=Strict"
                                    % (TOKEN_COOKIE, self.server.token.decode("ascii")))]
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
            return 404, TEXT_TYPE, b"no overlay yet\n", []
        return 200, "image/png", bytes(png), []

    def _metrics(self, query):
        return 200, METRICS_TYPE, prometheus_text(self.server.state.metrics()).encode("utf-8"), []

    # -- responses --------------------------------------------------------------------------------------------

    def _respond(self, code, content_type, body, extra_headers=(), head_only=False):
        if not self.server.begin_reply(self.request):
            raise _Dropped()
        self.connection.settimeout(WRITE_TIMEOUT_S)  # sendall(): the whole reply within it (Python >= 3.5)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _COMMON_HEADERS + tuple(extra_headers):
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None, extra=()):
        """Plain-text errors with the same safe headers (the stdlib's HTML error page echoes input back);
        ``extra``: more (name, value) headers, e.g. WWW-Authenticate for 401."""
        self.close_connection = True
        text = "%d %s\n" % (code, message or self.responses.get(code, ("Error",))[0])
        extra = ([("Allow", "GET, HEAD")] if code == 405 else []) + list(extra)
        try:
            self._respond(code, TEXT_TYPE, text.encode("utf-8"), extra, head_only=self.command == "HEAD")
        except (OSError, _Dropped):
            pass

    # -- logging ----------------------------------------------------------------------------------------------

    def log_request(self, code="-", size="-"):
        log.debug('%s "%s" %s', self.client_address[0], _TOKEN_IN_QUERY.sub(r"\1<redacted>", self.requestline[:200]),
                  code)

    def log_error(self, fmt, *args):
        log.debug("status page: %s: " + fmt, self.client_address[0], *args)

    def log_message(self, fmt, *args):
        log.debug("status page: %s: " + fmt, self.client_address[0], *args)


# ---------------------------------------------------------------------------------------------------------------
# The server

class StatusServer(socketserver.ThreadingMixIn, HTTPServer):
    """A threaded HTTP server (Python 3.6 has no ThreadingHTTPServer) over a table of at most ``max_clients``
    open connections: when it is full, a new connection takes the place of the oldest one still sending
    its request, and is refused (closed) only when every open one is past its request."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address, state, max_clients=MAX_CLIENTS, token=None, allowed_hosts=(),
                 request_timeout=REQUEST_TIMEOUT_S):
        self.state = state
        self.max_clients = max_clients
        self.request_timeout = float(request_timeout)
        self.token = check_token(token).encode("ascii") if token is not None else None
        self.allowed_hosts = allowed_host_names(address[0], allowed_hosts)
        self.drops = DropSummary()
        self._lock = threading.Lock()
        self._open = collections.OrderedDict()  # socket → "request" (still sending its head) or "reply"
        self._stopped = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        HTTPServer.__init__(self, address, StatusHandler)

    def server_bind(self):
        # HTTPServer.server_bind() calls socket.getfqdn(), a DNS lookup that can stall for seconds on an
        # offline Nano; the name is only used in CGI environments, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    # -- the connection table ---------------------------------------------------------------------------------

    def process_request(self, request, client_address):
        victim = None
        with self._lock:
            if len(self._open) >= self.max_clients:
                victim = next((sock for sock, phase in self._open.items() if phase == "request"), None)
                if victim is None:
                    refused = True
                else:
                    del self._open[victim]
                    refused = False
            else:
                refused = False
            if not refused:
                self._open[request] = "request"
        if refused:
            self.drops.note("refused (all %d connections busy replying)" % self.max_clients)
            self.close_request(request)  # no lingering here: that would stall the accepting thread
            return
        if victim is not None:
            self.drops.note("dropped to make room (still sending their request when %d were open)"
                            % self.max_clients)
            try:
                victim.shutdown(socket.SHUT_RDWR)  # wakes its thread's recv() with end of input
            except OSError:
                pass
        try:
            socketserver.ThreadingMixIn.process_request(self, request, client_address)
        except Exception:
            self._forget(request)
            raise

    def is_open(self, request):
        """False once the connection was dropped to make room."""
        with self._lock:
            return request in self._open

    def begin_reply(self, request):
        """Mark the connection as past its request (it can no longer be dropped); False if already dropped."""
        with self._lock:
            if request not in self._open:
                return False
            self._open[request] = "reply"
            return True

    def _forget(self, request):
        with self._lock:
            self._open.pop(request, None)

    def open_connections(self):
        """{"request": n, "reply": n}: the connections open now, by phase."""
        with self._lock:
            return dict(collections.Counter(self._open.values()))

    def process_request_thread(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._forget(request)
            self.shutdown_request(request)

    def shutdown_request(self, request):
        """Lingering close: after the reply, read (and drop) what the client still sends, a little while.

        Closing a socket with unread input (an oversized request we refused, a POST body) makes the kernel
        send a reset, and the client then loses the error reply it was about to read.
        """
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER_S)
            deadline, drained = time.monotonic() + LINGER_S, 0
            while drained < LINGER_BYTES and time.monotonic() < deadline:
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
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:  # their threads end now rather than at their deadlines
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.drops.flush()


def start_status_server(host, port, state, max_clients=MAX_CLIENTS, token=None, allowed_hosts=(),
                        request_timeout=REQUEST_TIMEOUT_S):
    """Serve the status page for ``state`` on host:port in a daemon thread; returns the server.

    ``token``: when given (see check_token), every route needs it.  ``allowed_hosts``: extra names the Host
    header may carry.  ``request_timeout``: seconds for a whole request line + headers.
    ``server.server_address`` is the bound address (port 0 picks a free port); ``server.shutdown()`` stops it.
    Raises ValueError for a bad token and OSError (e.g. address in use) before any thread starts.
    """
    host = (host or DEFAULT_HOST).strip("[]")  # "[::1]" as written in a URL → "::1"
    server = StatusServer((host, int(port)), state, max_clients=max_clients, token=token,
                          allowed_hosts=allowed_hosts, request_timeout=request_timeout)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                              name="stetho-status-http", daemon=True)
    thread.start()
    log.info("status page on http://%s:%d/%s", *(_display_address(server.server_address) +
                                                  (" (token required)" if token is not None else "",)))
    if token is None and not is_loopback(host):
        log.warning("the status page (%s) is reachable from the network without a token: anyone on the LAN can "
                    "read patient results; set --http-token (or --http-token-file)", host)
    return server


def _display_address(address):
    host, port = address[0], address[1]
    return ("[%s]" % host if ":" in host else host), port

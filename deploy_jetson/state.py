"""What the running service knows about itself, shared (thread-safely) with the status page and sd_notify.

The service loop writes; the HTTP status page and the systemd notifier read
snapshots.  Nothing here does I/O.  Python 3.6, stdlib only.
"""
import collections
import threading
import time


class ServiceState(object):
    """Thread-safe state of one service run.

    The classification loop calls :meth:`record` once per window; sources call
    :meth:`set_device` and :meth:`add_dropped`; the status page calls
    :meth:`snapshot`, :meth:`latest_png`, :meth:`history` and :meth:`metrics`.
    """

    def __init__(self, model_name, classes, backend="", backend_reason="", history_size=600, clock=time.time):
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.model_name = model_name
        self.classes = list(classes)
        self.backend = backend
        self.backend_reason = backend_reason
        self.device = ""
        self.device_status = "starting"
        self.windows = 0
        self.dropped_frames = 0
        self.decisions = collections.Counter()
        self.qualities = collections.Counter()
        self.latency_ms_sum = 0.0
        self.last = None
        self._latest_png = None
        self._history = collections.deque(maxlen=history_size)

    def set_backend(self, name, reason=""):
        with self._lock:
            self.backend, self.backend_reason = name, reason

    def set_device(self, description, status):
        """``status``: 'capturing', 'waiting for device', 'replaying', 'finished' or 'stopped'."""
        with self._lock:
            self.device, self.device_status = description, status

    def add_dropped(self, frames):
        with self._lock:
            self.dropped_frames += int(frames)

    def record(self, result, overlay_png=None):
        """Remember one window's result (the dict written to results.jsonl) and its overlay PNG bytes.

        ``result`` needs keys: time (epoch s), probabilities ({class: p}, this window), decision (str),
        quality (str), latency_ms (float); ``smoothed`` ({class: p} over the last K windows) when the
        service smooths; others are kept as they are.
        """
        with self._lock:
            self.windows += 1
            self.decisions[result.get("decision", "")] += 1
            self.qualities[result.get("quality", "")] += 1
            self.latency_ms_sum += float(result.get("latency_ms", 0.0))
            self.last = dict(result)
            if overlay_png is not None:
                self._latest_png = overlay_png
            self._history.append({"time": result.get("time"), "decision": result.get("decision"),
                                  "quality": result.get("quality"),
                                  "probabilities": dict(result.get("probabilities") or {}),
                                  "smoothed": dict(result.get("smoothed") or {})})

    def snapshot(self):
        """A JSON-ready dict for /api/status."""
        with self._lock:
            return {
                "model": self.model_name,
                "classes": list(self.classes),
                "backend": self.backend,
                "backend_reason": self.backend_reason,
                "device": self.device,
                "device_status": self.device_status,
                "uptime_s": round(self._clock() - self.started, 3),
                "windows": self.windows,
                "dropped_frames": self.dropped_frames,
                "last": dict(self.last) if self.last else None,
                "decision": self.last.get("decision") if self.last else None,
                "quality": self.last.get("quality") if self.last else None,
            }

    def latest_png(self):
        with self._lock:
            return self._latest_png

    def history(self, limit=None):
        with self._lock:
            items = list(self._history)
        return items[-limit:] if limit else items

    def metrics(self):
        """Counters and gauges for /metrics: {name: (type, help, [(labels dict, value)])}."""
        with self._lock:
            last = self.last or {}
            last_probs = last.get("smoothed") or last.get("probabilities") or {}
            return {
                "stetho_uptime_seconds": ("gauge", "Seconds since the service started",
                                          [({}, self._clock() - self.started)]),
                "stetho_windows_total": ("counter", "Windows classified", [({}, self.windows)]),
                "stetho_dropped_frames_total": ("counter", "Audio frames lost to input overflow",
                                                [({}, self.dropped_frames)]),
                "stetho_decisions_total": ("counter", "Decisions by outcome",
                                           [({"decision": k}, v) for k, v in sorted(self.decisions.items())]),
                "stetho_quality_total": ("counter", "Windows by signal quality",
                                         [({"quality": k}, v) for k, v in sorted(self.qualities.items())]),
                "stetho_latency_ms_sum": ("counter", "Sum of per-window latency in ms", [({}, self.latency_ms_sum)]),
                "stetho_probability": ("gauge", "Latest smoothed class probability",
                                       [({"class": k}, v) for k, v in sorted(last_probs.items())]),
                "stetho_device_up": ("gauge", "1 while audio is flowing",
                                     [({}, 1 if self.device_status in ("capturing", "replaying") else 0)]),
            }

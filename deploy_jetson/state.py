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

    def __init__(self, model_name, classes, backend="", backend_reason="", history_size=600, clock=time.time,
                 info=None):
        """``info``: JSON-ready facts about the model for the status page, e.g. ``{"synthetic": True}`` when
        it was trained on synthetic data (the page then shows a banner); see :meth:`set_info`."""
        self._lock = threading.Lock()
        self.info = dict(info or {})
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
        self.exam = None                                  # the exam in progress (deploy_jetson.exam.progress)
        self.exams = collections.deque(maxlen=10)         # the last exams' records (exams.jsonl lines)
        self.exam_verdicts = collections.Counter()
        self.drift = None                                 # the running drift check (stetho.drift)
        self.device_drift = None                          # the device-level check over the last exams
        self._latest_png = None
        self._history = collections.deque(maxlen=history_size)
        self.sinks = {}  # sink name → {status, detail, since, errors, skipped} (see sink_status)

    def set_backend(self, name, reason=""):
        with self._lock:
            self.backend, self.backend_reason = name, reason

    def set_info(self, **info):
        """Add to :attr:`info` (shown as ``info`` in :meth:`snapshot`)."""
        with self._lock:
            self.info.update(info)

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

    def set_exam(self, progress):
        """The exam in progress (a dict: accepted_s, min_s, running mean...), or None between exams."""
        with self._lock:
            self.exam = dict(progress) if progress else None

    def set_drift(self, judged):
        """The running drift check (stetho.drift.DriftReference.judge's dict), or None without input statistics."""
        with self._lock:
            self.drift = dict(judged) if judged else None

    def record_exam(self, record):
        """A finished exam's record (its exams.jsonl line)."""
        with self._lock:
            self.exams.append(dict(record))
            if record.get("device_drift") is not None:
                self.device_drift = dict(record["device_drift"])
            self.exam_verdicts[record.get("verdict") or ""] += 1
            self.exam = None

    def sink_status(self, sink, status, detail=""):
        """A sink's health: ``status`` 'ok' (writing), 'error' (a write failed; ``detail`` says why) or 'paused'
        (writes skipped on purpose, e.g. under the free-space floor).  Each 'error' call counts one failed
        write, each 'paused' call one skipped write; ``since`` is when the status last changed (epoch s)."""
        with self._lock:
            entry = self.sinks.get(sink)
            if entry is None:
                entry = self.sinks[sink] = {"status": status, "detail": "", "since": self._clock(), "errors": 0,
                                            "skipped": 0}
            if entry["status"] != status:
                entry["since"] = self._clock()
            entry["status"], entry["detail"] = status, detail
            if status == "error":
                entry["errors"] += 1
            elif status == "paused":
                entry["skipped"] += 1

    def snapshot(self):
        """A JSON-ready dict for /api/status (``sinks``: each sink's health; ``sink_problems``: one line for each
        sink that is not writing, e.g. 'results: ... No space left on device (ENOSPC) ...')."""
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
                "info": dict(self.info),
                "exam": dict(self.exam) if self.exam else None,
                "exams": [dict(record) for record in reversed(self.exams)],  # newest first
                "drift": dict(self.drift) if self.drift else None,
                "device_drift": dict(self.device_drift) if self.device_drift else None,
                "sinks": dict((name, dict(entry)) for name, entry in self.sinks.items()),
                "sink_problems": ["%s %s: %s" % (name, entry["status"], entry["detail"])
                                  for name, entry in sorted(self.sinks.items()) if entry["status"] != "ok"],
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
                "stetho_exams_total": ("counter", "Finished exams by verdict",
                                       [({"verdict": k}, v) for k, v in sorted(self.exam_verdicts.items())]),
                "stetho_drift_score": ("gauge", "Drift score of the last accepted windows against the training "
                                       "input (NaN until enough windows, or without input statistics)",
                                       [({}, (self.drift or {}).get("score") if (self.drift or {}).get("score")
                                         is not None else float("nan"))]),
                "stetho_drift_flag": ("gauge", "1 when the input sounds unlike the training data",
                                      [({}, 1 if (self.drift or {}).get("flag") else 0)]),
                "stetho_device_drift_score": ("gauge", "Mean drift score of the last exams (the device-level check; "
                                              "NaN without input statistics or exams)",
                                              [({}, (self.device_drift or {}).get("mean_score")
                                                if (self.device_drift or {}).get("mean_score") is not None
                                                else float("nan"))]),
                "stetho_device_drift_flag": ("gauge", "1 when the last exams, together, sound unlike the training data",
                                             [({}, 1 if (self.device_drift or {}).get("flag") else 0)]),
                "stetho_exam_in_progress": ("gauge", "1 while an exam is in progress", [({}, 1 if self.exam else 0)]),
                "stetho_exam_accepted_seconds": ("gauge", "Accepted audio (s) of the exam in progress",
                                                 [({}, (self.exam or {}).get("accepted_s", 0.0))]),
                "stetho_device_up": ("gauge", "1 while audio is flowing",
                                     [({}, 1 if self.device_status in ("capturing", "replaying") else 0)]),
                "stetho_sink_up": ("gauge", "1 while the sink's last write worked, 0 after an error or a pause",
                                   [({"sink": k}, 1 if v["status"] == "ok" else 0)
                                    for k, v in sorted(self.sinks.items())]),
                "stetho_sink_errors_total": ("counter", "Failed writes by sink (e.g. a full disk)",
                                             [({"sink": k}, v["errors"]) for k, v in sorted(self.sinks.items())]),
                "stetho_sink_skipped_total": ("counter", "Writes skipped on purpose by sink (free-space floor)",
                                              [({"sink": k}, v["skipped"]) for k, v in sorted(self.sinks.items())]),
            }

"""Examinations: one verdict per continuous listen at one site, as the accuracy figures were measured.

Every figure of the workstation's report is recording level: the mean of a recording's window probabilities,
then the model's decision rule (``stetho.decision``, stored in model.json).  The service groups its windows
into *exams* and answers the same way:

- an exam starts at the first window the quality gate accepts;
- it ends after ``gap_s`` seconds of stream time without contact (the chest piece lifted, poor contact),
  counted from the start of the first window rejected since the last accepted one (or from the end of the
  last accepted window's audio, where no window comes: silence cuts no peak-to-peak cycle); after ``max_s``
  seconds (live sources only); at the end of each file (a file is one exam); on request (SIGUSR1) or at
  shutdown (then marked interrupted);
- its verdict is the rule applied to the mean of the accepted windows' **raw** probabilities (not the smoothed
  ones the overlay shows): the same windows and arithmetic as ``evaluate.py``'s recording level, for window
  and for peak-cycle contracts; with less than ``min_s`` seconds of accepted audio it is 'too short'.

A file whose windows were all rejected still gets its exam line, with the rejection as its verdict ('no
signal' or 'poor contact'), so every replayed file is answered.

Where model.json stores the training input's statistics (``input_stats``, stetho/drift.py), every exam line
carries its drift check (the exam's mean row profile against the training data's) and the device-level check
(the mean drift score of the last exams, where the model stores its threshold), and the tracker keeps a running
check over the last ``DRIFT_WINDOWS`` accepted windows for the status page.  Python 3.6, numpy only.
"""
import collections
import time

import numpy as np

from stetho.drift import DEVICE_WARNING, WARNING as DRIFT_WARNING, ProfileMean, row_profile

TOO_SHORT = "too short"
DRIFT_WINDOWS = 60  # the running drift check: about 90 s of 3 s windows every 1.5 s
ENDS = ("gap", "max", "end of file", "stream ended", "requested", "shutdown")


class ExamSettings(object):
    """``gap_s``: rejected stream time that ends an exam; ``max_s``: longest live exam; ``min_s``: accepted audio a
    verdict needs (all seconds, > 0)."""

    def __init__(self, gap_s=4.0, max_s=60.0, min_s=8.0):
        for name, value in (("--exam-gap-s", gap_s), ("--exam-max-s", max_s), ("--exam-min-s", min_s)):
            if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
                raise ValueError("%s must be a positive number of seconds, not %r" % (name, value))
        if min_s > max_s:
            raise ValueError("--exam-min-s %g is longer than --exam-max-s %g: no live exam could get a verdict"
                             % (min_s, max_s))
        self.gap_s, self.max_s, self.min_s = float(gap_s), float(max_s), float(min_s)


def exam_audio(exam):
    """The exam's raw audio from its first accepted window's start to its last accepted window's end (float32;
    gaps between windows, if any, are zeros), from the pieces kept for ``--keep-audio``; None when none were kept."""
    accepted = [(start, piece) for start, piece, ok in exam.pieces if ok]
    if not accepted:
        return None
    first = min(start for start, _ in accepted)
    end = max(start + piece.size for start, piece in accepted)
    audio = np.zeros(end - first, dtype=np.float32)
    for start, piece, _ in exam.pieces:
        lo, hi = max(start, first), min(start + piece.size, end)
        if hi > lo:
            audio[lo - first:hi - first] = piece[lo - start:hi - start]
    return audio


def union_length(spans):
    """Total length of the union of (start, end) intervals (seconds)."""
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


class Exam(object):
    """An exam in progress: the accepted windows' raw probabilities and spans, the rejections, a few images."""

    STRIP_TILES = 8  # spectrograms kept for the summary picture (non-overlapping accepted windows)

    def __init__(self, number, stream, start_s, clock=time.time, monotonic=time.monotonic):
        self.number = number
        self.stream = stream
        self.start_s = start_s
        self.end_s = start_s
        self.started_wall, self.started_mono = clock(), monotonic()
        self.sums = None
        self.accepted = 0
        self.spans = []
        self.last_accepted_end_s = None
        self.gap_from_s = None                          # start of the first window rejected since the last accepted
        self.rejected = collections.Counter()           # by decision: 'no signal', 'poor contact'
        self.rejected_quality = collections.Counter()   # by gate verdict: silent, clipping, handling, rubbing
        self.trace = []                                 # (start_s, end_s, probabilities or None)
        self.strip = []                                 # uint8 R×R levels of accepted windows, for the picture
        self._strip_reach = None
        self.profile = ProfileMean()                    # the accepted windows' mean row profile (drift check)
        self.pieces = []                                # (start sample, raw samples) when the audio is kept
        self.kept_samples = 0

    def add(self, result, levels, start_s, end_s):
        """One window's result (the service's results.jsonl dict)."""
        self.end_s = max(self.end_s, end_s)
        if result.get("probabilities") is None:  # rejected by the gate
            if self.gap_from_s is None:
                self.gap_from_s = start_s
            self.rejected[result["decision"]] += 1
            self.rejected_quality[result.get("quality", "")] += 1
            self.trace.append((start_s, end_s, None))
            return
        probabilities = [float(v) for v in result["probabilities"].values()]
        # a running float64 sum: the mean is sum / n, as numpy's mean over the windows of a recording
        self.sums = probabilities if self.sums is None else [a + b for a, b in zip(self.sums, probabilities)]
        self.accepted += 1
        self.gap_from_s = None
        self.spans.append((start_s, end_s))
        self.last_accepted_end_s = end_s if self.last_accepted_end_s is None else max(self.last_accepted_end_s, end_s)
        self.trace.append((start_s, end_s, probabilities))
        if levels is not None and len(self.strip) < self.STRIP_TILES and (
                self._strip_reach is None or start_s >= self._strip_reach - 1e-9):
            self.strip.append(np.array(levels, dtype=np.uint8, copy=True))
            self._strip_reach = end_s

    @property
    def accepted_s(self):
        """Seconds of audio the accepted windows cover (their union)."""
        return union_length(self.spans)

    def mean(self):
        """Mean raw probabilities of the accepted windows (list of N floats), or None."""
        if not self.accepted:
            return None
        return [value / self.accepted for value in self.sums]


class ExamTracker(object):
    """Groups the service's windows into exams and answers each (see the module doc).

    ``rule``: the model's :class:`stetho.decision.DecisionRule`; ``classes``: class names; ``live``: True for a
    microphone or stdin (``max_s`` applies), False for files (one file, one exam); ``on_end(record, exam)``: called
    with every finished exam's record (the exams.jsonl line) and the :class:`Exam`.
    """

    def __init__(self, settings, rule, classes, live, on_end, context=None, clock=time.time,
                 monotonic=time.monotonic, drift=None, rate=None, keep_audio_s=0.0):
        self.settings = settings
        self.rule = rule
        self.classes = list(classes)
        self.live = live
        self.on_end = on_end
        self.context = dict(context or {})  # model, model_sha256, backend: copied into every record
        self.clock, self.monotonic = clock, monotonic
        self.exam = None
        self.count = 0
        self._pending_file = None  # a file stream whose windows were all rejected so far: (stream, Exam)
        self.drift = drift  # stetho.drift.DriftReference, or None (a model without input statistics)
        self.recent = ProfileMean(DRIFT_WINDOWS)  # the running drift check, across exams
        # the device-level check: the last exams' drift scores (since the service started)
        self.exam_scores = collections.deque(maxlen=(drift.device_exams or 1) if drift is not None else 1)
        self.rate = rate
        self.keep_audio_s = float(keep_audio_s) if rate else 0.0  # --keep-audio: raw audio kept per exam, at most

    # -- feeding ----------------------------------------------------------------------------------------

    def window(self, result, levels=None, window=None):
        """Account one window (the results.jsonl dict: stream, start_s, end_s, probabilities, decision, quality);
        ``window`` (deploy_jetson.sources.Window): its raw samples, kept for ``--keep-audio``."""
        stream, start_s = result["stream"], float(result["start_s"])
        end_s = float(result.get("audio_end_s", result["end_s"]))  # the audio the window holds, not its padding
        accepted = result.get("probabilities") is not None
        if self.exam is not None and self.exam.stream != stream:
            self.end("stream ended")
        if self.exam is None:
            if not accepted:
                if not self.live:  # remember the rejections of a file that may never get an accepted window
                    if self._pending_file is None or self._pending_file.stream != stream:
                        self._pending_file = Exam(0, stream, start_s, self.clock, self.monotonic)
                    self._pending_file.add(result, None, start_s, end_s)
                return None
            self.count += 1
            self.exam = Exam(self.count, stream, start_s, self.clock, self.monotonic)
            if self._pending_file is not None and self._pending_file.stream == stream:
                self.exam.rejected.update(self._pending_file.rejected)  # a file's exam counts all its windows
                self.exam.rejected_quality.update(self._pending_file.rejected_quality)
                self.exam.trace = list(self._pending_file.trace)
                self.exam.start_s = self._pending_file.start_s
            self._pending_file = None
        self.exam.add(result, levels, start_s, end_s)
        if self.keep_audio_s and window is not None and self.exam.kept_samples < self.keep_audio_s * self.rate:
            held = window.samples[:window.length or window.samples.size]
            self.exam.pieces.append((int(window.start), held, result.get("probabilities") is not None))
            self.exam.kept_samples += held.size
        if self.drift is not None and accepted and levels is not None:
            profile = row_profile(levels, self.drift.top_db)
            self.exam.profile.add(profile)
            self.recent.add(profile)
        if self.live and self.exam.end_s - self.exam.start_s >= self.settings.max_s:
            return self.end("max")
        return None

    def advance(self, stream, now_s):
        """Stream time ``now_s`` (seconds of ``stream`` received so far): ends the exam after a gap. Returns the
        finished record or None."""
        exam = self.exam
        if exam is None or exam.stream != stream or exam.last_accepted_end_s is None:
            return None
        since = exam.last_accepted_end_s if exam.gap_from_s is None else min(exam.gap_from_s,
                                                                              exam.last_accepted_end_s)
        if now_s - since >= self.settings.gap_s:
            return self.end("gap")
        return None

    def end_stream(self, stream, reason="end of file"):
        """The stream ended (a file's end): its exam ends; a file without an accepted window gets its record."""
        if self.exam is not None and self.exam.stream == stream:
            return self.end(reason)
        pending = self._pending_file
        if pending is not None and pending.stream == stream:
            self._pending_file = None
            self.count += 1
            pending.number = self.count
            self.exam = pending
            return self.end(reason)
        return None

    def end(self, reason, interrupted=False):
        """End the exam in progress now (``reason``: one of ENDS); returns its record (None when none)."""
        exam, self.exam = self.exam, None
        if exam is None:
            return None
        record = self.record(exam, reason, interrupted)
        self.on_end(record, exam)
        return record

    # -- the verdict ----------------------------------------------------------------------------------

    def record(self, exam, reason, interrupted=False):
        """The exams.jsonl line of ``exam`` (see the module doc for the verdict)."""
        mean = exam.mean()
        accepted_s = exam.accepted_s
        verdict = label = p_abnormal = confidence = None
        if mean is None:
            verdict = exam.rejected.most_common(1)[0][0] if exam.rejected else "no signal"
        elif accepted_s + 1e-9 < self.settings.min_s:
            verdict = TOO_SHORT
        else:
            decided = self.rule.decide(mean)
            verdict = label = decided.label
            p_abnormal, confidence = decided.p_abnormal, decided.confidence
        if mean is not None and p_abnormal is None and self.rule.rule == "threshold":
            p_abnormal = 1.0 - mean[self.rule.normal_index]
        drift = None if self.drift is None else self.drift.judge(exam.profile.mean(), exam.profile.count)
        if drift is not None and drift["score"] is not None:
            self.exam_scores.append(drift["score"])
        out = collections.OrderedDict([
            ("exam", exam.number), ("stream", exam.stream),
            ("start_time", round(exam.started_wall, 3)), ("end_time", round(self.clock(), 3)),
            ("start_monotonic", round(exam.started_mono, 3)), ("end_monotonic", round(self.monotonic(), 3)),
            ("start_s", round(exam.start_s, 4)), ("end_s", round(exam.end_s, 4)),
            ("duration_s", round(exam.end_s - exam.start_s, 4)), ("accepted_s", round(accepted_s, 4)),
            ("min_s", self.settings.min_s),
            ("windows_accepted", exam.accepted), ("windows_rejected", dict(exam.rejected)),
            ("rejected_by_quality", dict(exam.rejected_quality)),
            ("mean_probabilities", dict(zip(self.classes, mean)) if mean is not None else None),
            ("verdict", verdict), ("label", label),
            ("confidence", None if confidence is None else round(confidence, 6)),
            ("p_abnormal", None if p_abnormal is None else round(p_abnormal, 6)),
            ("rule", self.rule.rule), ("threshold", self.rule.threshold), ("rule_text", self.rule.describe()),
            ("ended", reason), ("interrupted", bool(interrupted)),
            ("drift", drift), ("device_drift", self.device_drift()),
        ])
        out.update(self.context)
        return out

    def device_drift(self):
        """The device-level check over the last exams (stetho.drift.DriftReference.judge_device), or None."""
        return None if self.drift is None else self.drift.judge_device(self.exam_scores)

    def running_drift(self):
        """The drift check over the last accepted windows (None without input statistics)."""
        return None if self.drift is None else self.drift.judge(self.recent.mean(), self.recent.count)


def exam_line(record):
    """The ``exam:`` line on stdout, beside the per-window imagenet.py lines."""
    rejected = sum(record["windows_rejected"].values())
    why = ", ".join("%s %d" % kv for kv in sorted(record["windows_rejected"].items()))
    if record["label"] is not None:
        if record["p_abnormal"] is not None and record["threshold"] is not None:
            how = "P(abnormal) %.2f %s %.2f" % (record["p_abnormal"],
                                               ">=" if record["p_abnormal"] >= record["threshold"] else "<",
                                               record["threshold"])
        else:
            how = "%.2f%%" % (100.0 * record["confidence"])
        answer = "%s (%s)" % (record["verdict"], how)
    elif record["verdict"] == TOO_SHORT:
        answer = "too short (%.1f s accepted, %.0f s needed)" % (record["accepted_s"], record["min_s"])
    else:
        answer = record["verdict"]
    drift = record.get("drift") or {}
    return "exam: %d %s %s; %.1f s accepted of %.1f s, %d window(s) rejected%s; ended by %s%s%s" % (
        record["exam"], record["stream"], answer, record["accepted_s"], record["duration_s"], rejected,
        " (%s)" % why if why else "", record["ended"], ", INTERRUPTED" if record["interrupted"] else "",
        "; DRIFT (score %.1f >= %.1f): %s" % (drift["score"], drift["threshold"], DRIFT_WARNING)
        if drift.get("flag") else "") + device_drift_note(record.get("device_drift"))


def device_drift_note(device):
    """'; DEVICE DRIFT (...)' for an exam line when the device-level check fires, else ''."""
    if not device or not device.get("flag"):
        return ""
    return "; DEVICE DRIFT (mean score of the last %d exams %.2f >= %.2f): %s" % (
        device["exams"], device["mean_score"], device["threshold"], DEVICE_WARNING % device["exams"])


def progress(exam, settings, rule, classes):
    """What the status page shows of the exam in progress: accepted seconds of the minimum, the running mean."""
    if exam is None:
        return None
    mean = exam.mean()
    provisional = None
    if mean is not None:
        decided = rule.decide(mean)
        provisional = {"label": decided.label, "p_abnormal": decided.p_abnormal, "confidence": decided.confidence}
    return {"exam": exam.number, "stream": exam.stream, "started": round(exam.started_wall, 3),
            "accepted_s": round(exam.accepted_s, 3), "min_s": settings.min_s,
            "windows_accepted": exam.accepted, "windows_rejected": dict(exam.rejected),
            "mean_probabilities": dict(zip(classes, mean)) if mean is not None else None,
            "provisional": provisional}

"""Exams: one verdict per continuous listen, as the figures were measured (deploy_jetson/exam.py, service.py).

Unit tests drive the tracker with window results; the service tests feed composed streams through stdin (the
live path: gaps end exams) and signal it (SIGUSR1 ends an exam, SIGTERM mid-exam leaves one complete line
marked interrupted and no partial file).
"""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from deploy_jetson.exam import ExamSettings, ExamTracker, exam_line, union_length
from stetho import synth
from stetho.decision import DecisionRule

from test_service_support import make_model, read_jsonl, service_cmd

CLASSES = ["abnormal", "normal"]
THRESHOLD = {"version": 1, "rule": "threshold", "normal_class": "normal", "threshold": 0.3,
             "objective": "max balanced accuracy", "chosen_on": {"split": "val", "recordings": 10}}
RATE = 2000


def results(stream, start_s, seconds, accepted=True, p_abnormal=0.6, window_s=3.0, hop_s=1.5):
    """Window results as service.py writes them, for windows starting at start_s, start_s + hop_s, ..."""
    out = []
    t = start_s
    while t + window_s <= start_s + seconds + 1e-9:
        p = {"abnormal": p_abnormal, "normal": 1.0 - p_abnormal} if accepted else None
        out.append({"stream": stream, "start_s": t, "end_s": t + window_s, "audio_end_s": t + window_s,
                    "probabilities": p, "decision": "abnormal" if accepted else "no signal",
                    "quality": "ok" if accepted else "silent"})
        t += hop_s
    return out


def tracker(live=True, **settings):
    ended = []
    rule = DecisionRule(THRESHOLD, CLASSES)
    return ExamTracker(ExamSettings(**settings), rule, CLASSES, live, lambda record, exam: ended.append(record)), ended


def feed(track, windows, stream="mic#1"):
    for result in windows:
        track.window(result)
        track.advance(stream, result["end_s"])


def test_union_length_counts_overlapping_windows_once():
    assert union_length([(0, 3), (1.5, 4.5), (3, 6)]) == 6
    assert union_length([(0, 3), (10, 13)]) == 6
    assert union_length([]) == 0


def test_contact_a_gap_and_contact_again_are_two_exams_with_the_rule_applied_to_the_mean():
    track, ended = tracker()
    feed(track, results("mic#1", 0.0, 12.0, p_abnormal=0.6))
    feed(track, results("mic#1", 10.5, 6.0, accepted=False))          # the chest piece lifted for ~6 s
    feed(track, results("mic#1", 18.0, 12.0, p_abnormal=0.1))
    track.end("shutdown", interrupted=True)
    assert [e["ended"] for e in ended] == ["gap", "shutdown"]
    first, second = ended
    assert first["verdict"] == "abnormal" and first["p_abnormal"] == pytest.approx(0.6)
    assert first["accepted_s"] == pytest.approx(12.0) and first["windows_accepted"] == 7
    assert second["verdict"] == "normal" and second["interrupted"] is True
    assert "exam: 1 mic#1 abnormal (P(abnormal) 0.60 >= 0.30)" in exam_line(first)


def test_a_short_contact_is_too_short_and_a_file_is_one_exam_whatever_its_gaps():
    track, ended = tracker()
    feed(track, results("mic#1", 0.0, 5.0))
    feed(track, results("mic#1", 5.0, 9.0, accepted=False))
    assert ended[0]["verdict"] == "too short" and ended[0]["label"] is None and ended[0]["accepted_s"] == 4.5
    files, ended = tracker(live=False)
    feed(files, results("rec", 0.0, 12.0) + results("rec", 12.0, 9.0, accepted=False) + results("rec", 21.0, 9.0))
    assert ended == []  # no gap ends a file's exam
    files.end_stream("rec")
    assert len(ended) == 1 and ended[0]["windows_rejected"] == {"no signal": 5} and ended[0]["ended"] == "end of file"


def test_a_file_without_an_accepted_window_still_gets_its_answer():
    files, ended = tracker(live=False)
    feed(files, results("quiet", 0.0, 10.0, accepted=False))
    files.end_stream("quiet")
    assert ended[0]["verdict"] == "no signal" and ended[0]["mean_probabilities"] is None


def test_a_live_exam_ends_at_the_longest_and_the_next_begins():
    track, ended = tracker(max_s=20.0, min_s=8.0)
    feed(track, results("mic#1", 0.0, 45.0))
    assert [e["ended"] for e in ended] == ["max", "max"]
    assert ended[0]["duration_s"] >= 20.0 and track.exam is not None


def test_the_exam_mean_is_the_mean_of_the_raw_accepted_probabilities():
    track, ended = tracker(live=False)
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 9)
    windows = []
    for i, p in enumerate(values):
        windows += results("rec", 1.5 * i, 3.0, p_abnormal=float(p))
    windows.insert(3, results("rec", 4.5, 3.0, accepted=False)[0])  # a rejected window is left out of the mean
    feed(track, windows, "rec")
    track.end_stream("rec")
    assert ended[0]["mean_probabilities"]["abnormal"] == pytest.approx(values.mean(), abs=1e-12)


def test_settings_are_checked():
    for bad in (dict(gap_s=0), dict(max_s=float("nan")), dict(min_s=-1), dict(min_s=90.0, max_s=60.0)):
        with pytest.raises(ValueError):
            ExamSettings(**bad)


# ---- the service, live through stdin ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("exam") / "m", classes=CLASSES, decision=THRESHOLD)


def pcm(*parts):
    """s16le bytes of heart sound (seconds > 0) and silence (seconds < 0) parts, at 2 kHz."""
    out = []
    for i, seconds in enumerate(parts):
        n = int(abs(seconds) * RATE)
        out.append(synth.heart_sound("murmur", duration_s=abs(seconds), rate=RATE, seed=i) if seconds > 0
                   else np.zeros(n, np.float32))
    return (np.clip(np.concatenate(out), -1, 1) * 32767).astype("<i2").tobytes()


def test_service_on_a_composed_stream_gives_two_exams_and_a_too_short_one(model, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(service_cmd("--model-dir", model, "--source", "stdin", "--quiet", "--output", out,
                                     "--exam-keep", "2"), input=pcm(12, -6, 12, -6, 5), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert run.returncode == 0, run.stderr
    exams = read_jsonl(out / "exams.jsonl")
    assert [e["ended"] for e in exams] == ["gap", "gap", "stream ended"]
    assert [e["verdict"] for e in exams][2] == "too short"
    assert all(e["verdict"] in CLASSES for e in exams[:2])
    assert 10.5 <= exams[0]["accepted_s"] <= 13.5 and exams[2]["accepted_s"] < 8
    for e in exams[:2]:
        mean = np.mean([[r["probabilities"][c] for c in CLASSES] for r in read_jsonl(out / "results.jsonl")
                        if r["probabilities"] and e["start_s"] <= r["start_s"] < e["end_s"]], axis=0)
        assert [e["mean_probabilities"][c] for c in CLASSES] == pytest.approx(list(mean), abs=1e-9)
    pictures = sorted(os.listdir(str(out / "exams")))
    assert len(pictures) == 2 and exams[2]["png"] == "exams/" + pictures[-1]  # the newest two kept


def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _lines(path):
    return read_jsonl(path) if path.exists() else []


def test_sigusr1_ends_the_exam_and_sigterm_mid_exam_writes_one_interrupted_line(model, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(service_cmd("--model-dir", model, "--source", "stdin", "--output", out,
                                           "--exam-min-s", "4"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        process.stdin.write(pcm(10))
        process.stdin.flush()
        assert _wait_for(lambda: len(_lines(out / "results.jsonl")) >= 5)
        process.send_signal(signal.SIGUSR1)
        assert _wait_for(lambda: len(_lines(out / "exams.jsonl")) == 1)
        assert _lines(out / "exams.jsonl")[0]["ended"] == "requested"
        process.stdin.write(pcm(9))
        process.stdin.flush()
        assert _wait_for(lambda: len(_lines(out / "results.jsonl")) >= 10)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    exams = _lines(out / "exams.jsonl")
    assert [(e["ended"], e["interrupted"]) for e in exams] == [("requested", False), ("shutdown", True)]
    assert b"exam: 2 stdin" in stdout and b"INTERRUPTED" in stdout
    leftovers = [name for root, _, names in os.walk(str(out)) for name in names if name.endswith(".part")]
    assert leftovers == []
    with open(str(out / "exams.jsonl"), "rb") as handle:
        assert handle.read().endswith(b"}\n")


def test_the_status_state_shows_the_exam_in_progress_and_the_last_ones(model, tmp_path):
    from deploy_jetson.state import ServiceState
    from deploy_jetson.exam import progress
    state = ServiceState("m", CLASSES)
    track, ended = tracker()
    track.on_end = lambda record, exam: state.record_exam(record)
    feed(track, results("mic#1", 0.0, 6.0))
    state.set_exam(progress(track.exam, track.settings, track.rule, CLASSES))
    snap = state.snapshot()
    assert snap["exam"]["accepted_s"] == 6.0 and snap["exam"]["min_s"] == 8.0
    assert snap["exam"]["provisional"]["label"] == "abnormal"
    track.end("requested")
    snap = state.snapshot()
    assert snap["exam"] is None and snap["exams"][0]["verdict"] == "too short"
    metrics = state.metrics()
    assert metrics["stetho_exams_total"][2] == [({"verdict": "too short"}, 1)]
    assert json.dumps(snap)

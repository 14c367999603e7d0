"""Disk on an unattended Nano (issue 28, item 5): a sink that cannot write never stops the service; it is reported
in the state (status page, /metrics); results.jsonl and the WAV archive are bounded; archives stop first under a
free-space floor; two services never share one --output."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest

from stetho import synth, write_wav
from deploy_jetson.disk import OutputBusy, SinkHealth, free_bytes, lock_output
from deploy_jetson.sinks import ImageSink, JsonlSink, WavArchiveSink, emit_all
from deploy_jetson.sources import Window
from deploy_jetson.state import ServiceState

from test_service_support import REPO, make_model, read_jsonl, service_cmd

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")


def result(index, decision="murmur", stream="rec"):
    return {"time": 1700000000.0 + index, "stream": stream, "window": index, "decision": decision,
            "padding": "x" * 150}


def window(index, seconds=3.0, rate=2000):
    samples = synth.heart_sound("murmur", duration_s=seconds, rate=rate, seed=index).astype(np.float32)
    return Window("rec", index, 0, samples, False)


def sink_metric(state, name, sink):
    return dict((labels["sink"], value) for labels, value in state.metrics()[name][2])[sink]


@needs_dev_full
def test_dev_full_as_the_results_file_is_reported_and_never_raises(tmp_path):
    """Before: ENOSPC from os.write went up through the loop → traceback → systemd gave up after 5 restarts."""
    os.symlink("/dev/full", str(tmp_path / "results.jsonl"))
    state = ServiceState("m", ["a", "b"])
    sink = JsonlSink(str(tmp_path / "results.jsonl"), health=SinkHealth(state), max_pending=3)
    for index in range(5):
        sink.emit(result(index))
    snap = state.snapshot()
    entry = snap["sinks"]["results"]
    assert entry["status"] == "error" and entry["errors"] == 5
    assert "No space left on device (ENOSPC)" in entry["detail"] and "3 line(s) held in memory" in entry["detail"]
    assert snap["sink_problems"] == ["results error: " + entry["detail"]]
    assert sink_metric(state, "stetho_sink_up", "results") == 0
    assert sink_metric(state, "stetho_sink_errors_total", "results") == 5
    assert sink.dropped == 2
    sink.close()  # the held lines are lost, said once in the log; close does not raise either


def _in_a_small_tmpfs(script, tmp_path, size="96k"):
    """Run ``script`` (Python) with a ``size`` tmpfs mounted at tmp_path/disk, in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a small tmpfs")
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"]).returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    command = "mount -t tmpfs -o size=%s tmpfs %s && cd %s && %s %s" % (size, disk, REPO, sys.executable,
                                                                        tmp_path / "script.py")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                          env=dict(os.environ, DISK=str(disk), PYTHONPATH=str(REPO)))


def test_a_really_full_disk_leaves_whole_lines_and_the_held_ones_follow_once_there_is_room(tmp_path):
    """On a 96 kB tmpfs: a write cut short by ENOSPC is undone (no half line), the lines that did not fit wait
    in memory, and once a file is removed they are written first, in order: none lost."""
    run = _in_a_small_tmpfs("""
        import json, logging, os
        from deploy_jetson.disk import SinkHealth
        from deploy_jetson.sinks import JsonlSink
        from deploy_jetson.state import ServiceState
        logging.basicConfig()
        disk = os.environ["DISK"]
        with open(os.path.join(disk, "filler"), "wb") as handle:
            handle.write(b"x" * (96 * 1024 - 8 * 1024))
        state = ServiceState("m", ["a"])
        sink = JsonlSink(os.path.join(disk, "results.jsonl"), health=SinkHealth(state))
        for index in range(40):                                # ~13 kB of lines into ~8 kB of room
            sink.emit({"window": index, "text": "y" * 300})
        full = dict(state.snapshot()["sinks"]["results"])
        os.remove(os.path.join(disk, "filler"))
        for index in range(40, 45):
            sink.emit({"window": index, "text": "y" * 300})
        sink.close()
        with open(os.path.join(disk, "results.jsonl")) as handle:
            lines = handle.read().splitlines()
        print(json.dumps({"windows": [json.loads(line)["window"] for line in lines], "full": full,
                          "after": state.snapshot()["sinks"]["results"]}))
    """, tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["windows"] == list(range(45))  # whole lines only, none lost, in order
    assert report["full"]["status"] == "error" and "ENOSPC" in report["full"]["detail"]
    assert report["after"]["status"] == "ok" and report["after"]["errors"] == report["full"]["errors"]
    assert "Traceback" not in run.stderr and "writing again" in run.stderr
    assert run.stderr.count("No space left on device") == 1  # logged once when it started, not once a window


def test_results_rotate_by_size_and_keep_n(tmp_path):
    path = str(tmp_path / "results.jsonl")
    sink = JsonlSink(path, max_bytes=2000, keep=2)
    for index in range(60):
        sink.emit(result(index))
    sink.close()
    names = sorted(os.listdir(str(tmp_path)))
    assert names == ["results.jsonl", "results.jsonl.1", "results.jsonl.2"]
    assert all(os.path.getsize(str(tmp_path / n)) <= 2000 for n in names)
    kept = [r["window"] for n in ("results.jsonl.2", "results.jsonl.1", "results.jsonl")
            for r in read_jsonl(tmp_path / n)]
    assert kept == list(range(60 - len(kept), 60))  # the newest lines, in order, with no gap
    again = JsonlSink(path, max_bytes=2000, keep=2)  # a restart continues the same bound
    for index in range(60, 80):
        again.emit(result(index))
    again.close()
    assert sorted(os.listdir(str(tmp_path))) == names


def test_the_archive_is_bounded_by_total_size_across_restarts(tmp_path):
    """Before: at most 1000 files per run, reset at every start: unbounded over restarts."""
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file: never removed")
    one = 44 + 2 * 6000
    for run in range(3):  # three service runs, four flagged windows each
        sink = WavArchiveSink(str(folder), 2000, {"murmur"}, max_bytes=5 * one, min_free_bytes=0)
        for index in range(4):
            sink.emit(result(10 * run + index), window(index))
        sink.emit(result(99, decision="normal"), window(0))  # not flagged: not archived
        sink.close()
    wavs = sorted(n for n in os.listdir(str(folder)) if n.endswith(".wav"))
    assert len(wavs) == 5 and sum(os.path.getsize(str(folder / n)) for n in wavs) <= 5 * one
    assert [int(n.split("_")[2]) for n in wavs] == [13, 20, 21, 22, 23]  # the newest: end of run 2, all of run 3
    assert (folder / "notes.txt").exists()


def test_archives_pause_below_the_free_space_floor_while_results_go_on(tmp_path):
    """The floor is compared with the real free space of tmp_path's file system (statvfs)."""
    state = ServiceState("m", ["murmur", "normal"])
    health = SinkHealth(state)
    floor = free_bytes(str(tmp_path)) + 2 ** 40  # always above what is free
    results = JsonlSink(str(tmp_path / "results.jsonl"), health=health)
    archive = WavArchiveSink(str(tmp_path / "archive"), 2000, {"murmur"}, min_free_bytes=floor, health=health)
    images = ImageSink(str(tmp_path / "images"), min_free_bytes=floor, health=health)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    for index in range(3):
        emit_all([results, archive, images], health, result(index), window(index), image)
    results.close()
    assert os.listdir(str(tmp_path / "archive")) == [] and os.listdir(str(tmp_path / "images")) == []
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 3
    sinks = state.snapshot()["sinks"]
    assert sinks["results"]["status"] == "ok"
    assert sinks["archive"]["status"] == "paused" and sinks["archive"]["skipped"] == 3
    assert "under the" in sinks["archive"]["detail"] and "MB floor" in sinks["archive"]["detail"]
    assert sinks["images"]["status"] == "paused"
    assert sink_metric(state, "stetho_sink_skipped_total", "archive") == 3
    assert sink_metric(state, "stetho_sink_up", "results") == 1


def test_a_sink_that_raises_is_reported_and_the_others_still_get_the_window(tmp_path):
    class Broken(object):
        name = "console"

        def emit(self, *args):
            raise OSError(errno.EPIPE, "Broken pipe")

    class Counter(object):
        name = "counter"
        seen = 0

        def emit(self, *args):
            Counter.seen += 1
    state = ServiceState("m", ["a"])
    health = SinkHealth(state)
    for index in range(2):
        emit_all([Broken(), Counter()], health, result(index))
    assert Counter.seen == 2
    entry = state.snapshot()["sinks"]["console"]
    assert entry["status"] == "error" and entry["errors"] == 2 and "Broken pipe (EPIPE)" in entry["detail"]


def test_a_second_writer_on_one_output_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.path.insert(0, %r)\n"
                               "from deploy_jetson.disk import lock_output\nlock = lock_output(%r)\n"
                               "print('locked', flush=True)\ntime.sleep(60)\n" % (str(REPO), str(tmp_path))],
                              stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy) as caught:
            JsonlSink(str(tmp_path / "results.jsonl"))
        message = str(caught.value)
        assert str(tmp_path) in message and "(pid %d)" % holder.pid in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    JsonlSink(str(tmp_path / "results.jsonl")).close()  # the holder is gone: free again
    first = lock_output(str(tmp_path))
    with pytest.raises(OutputBusy):
        lock_output(str(tmp_path))  # within one process too
    first.close()


# ---- the service, end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "held.wav"
    write_wav(str(path), synth.heart_sound("murmur", bpm=80, duration_s=12.0, rate=2000, seed=3), 2000)
    return path


@needs_dev_full
def test_the_service_keeps_classifying_and_serving_with_results_on_dev_full(model, recording, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("/dev/full", str(out / "results.jsonl"))
    proc = subprocess.Popen(service_cmd("--model-dir", model, "--source", "file:%s" % recording, "--loop",
                                        "--quiet", "--output", out, "--http", "127.0.0.1:0", "--block", "0.05"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        port, deadline = None, time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "status page on http://127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split("/")[0])
        assert port, "no status page address logged"
        status = {}
        while time.monotonic() < deadline and status.get("windows", 0) < 2:
            time.sleep(0.5)
            status = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/api/status" % port, timeout=5).read())
        assert status["windows"] >= 2, status
        assert status["sinks"]["results"]["status"] == "error"
        assert "No space left on device" in status["sinks"]["results"]["detail"]
        assert status["sink_problems"] and status["sink_problems"][0].startswith("results error:")
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
        assert 'stetho_sink_up{sink="results"} 0' in metrics
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("No space left on device") <= 2  # said when it starts (and at close), not every window


def test_a_second_service_on_the_same_output_is_refused(model, recording, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = subprocess.Popen(service_cmd("--model-dir", model, "--source", "file:%s" % recording, "--loop",
                                         "--quiet", "--output", out),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        deadline = time.monotonic() + 30
        while not (out / "results.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(service_cmd("--model-dir", model, "--source", "file:%s" % recording, "--fast",
                                            "--output", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        assert second.returncode == 2
        assert "--output %s: another process (pid %d) is already writing there" % (out, first.pid) in second.stderr
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=10)
    finally:
        first.kill()
    assert first.returncode == 0

"""Live capture through a real ALSA device made from a raw recording, and a missing device, via sounddevice.

There is no sound card here, so the test builds one from an ALSA ``type file`` PCM: its ``infile`` supplies
the captured samples and its ``null`` slave the device.  The null slave has no clock (a plain file would be
read at CPU speed), so ``infile`` is a FIFO that the test fills from the raw s16le recording in real time,
one 0.1 s block (the service's read size) per write: every read then returns exactly the recording's
samples.  No ``plug`` is needed: the service captures 16-bit at the contract's rate, which the file PCM
passes straight through.  ALSA_CONFIG_PATH points libasound at alsa.conf plus this test's definitions.
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from stetho import read_wav, synth

from deploy_jetson.sources import MicSource
from test_service_support import make_model, read_jsonl, service_cmd

try:
    import sounddevice  # noqa: F401
except (ImportError, OSError) as error:  # OSError: libportaudio2 missing
    pytest.skip("sounddevice/PortAudio unavailable: %s" % error, allow_module_level=True)
ALSA_CONF = "/usr/share/alsa/alsa.conf"
RATE = 2000
BLOCK = RATE // 10  # the service reads 0.1 s blocks


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "tiny")


def alsa_env(tmp_path, infile):
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.!default {\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
                    '  infile "%s"\n  format "raw"\n}\n' % infile)
    if not os.path.isfile(ALSA_CONF):
        pytest.skip("no %s (libasound2-data)" % ALSA_CONF)
    return dict(os.environ, ALSA_CONFIG_PATH="%s:%s" % (ALSA_CONF, conf))


def test_the_service_classifies_live_audio_captured_from_an_alsa_device(model, tmp_path):
    recording = (np.clip(synth.heart_sound("murmur", duration_s=9.0, rate=RATE, seed=7), -1, 1) * 32767)
    recording = recording.astype("<i2")
    raw = tmp_path / "recording.raw"
    recording.tofile(str(raw))
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(str(fifo))
    fd = os.open(str(fifo), os.O_RDWR)  # holds the FIFO open, so the device can open and close it at will
    done = threading.Event()

    def feed():  # the raw file, in real time ×2 (the FIFO paces the capture)
        data = np.fromfile(str(raw), dtype="<i2")
        for start in range(0, data.size, BLOCK):
            if done.is_set():
                return
            os.write(fd, data[start:start + BLOCK].tobytes())
            time.sleep(0.05)
        while not done.is_set():  # then silence, as a real microphone keeps delivering
            os.write(fd, np.zeros(BLOCK, "<i2").tobytes())
            time.sleep(0.1)
    out = tmp_path / "out"
    proc = subprocess.Popen(service_cmd("--model-dir", model, "--source", "mic:default", "--output", out,
                                        "--smooth", "1", "--archive", tmp_path / "archive",
                                        "--archive-on", "uncertain,extra,murmur,normal"),
                            env=alsa_env(tmp_path, fifo), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        lines = []
        deadline = time.monotonic() + 40
        while len(lines) < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("imagenet:"):
                lines.append(line)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=10)
        stop_s = time.monotonic() - started
    finally:
        done.set()
        proc.kill()
        os.close(fd)
    assert len(lines) == 5, err
    assert "capturing from default" in err and stop_s < 2.0 and proc.returncode == 0
    results = read_jsonl(out / "results.jsonl")
    assert [r["stream"] for r in results[:5]] == ["mic#1"] * 5
    assert [r["start_s"] for r in results[:5]] == [0.0, 1.5, 3.0, 4.5, 6.0]
    assert all(r["quality"] == "ok" and r["decision"] for r in results[:5])
    # what was captured is the recording itself, sample for sample (an ALSA open may swallow a frame or two)
    first = sorted(os.listdir(str(tmp_path / "archive")))[0]
    captured, rate = read_wav(str(tmp_path / "archive" / first))
    codes = np.round(captured * 32768).astype(np.int64)
    offset = int(np.flatnonzero(recording == codes[0])[0])
    assert rate == RATE and offset < 10
    np.testing.assert_array_equal(codes, recording[offset:offset + codes.size])


def test_a_missing_device_is_retried_with_capped_backoff_without_spinning(model, tmp_path):
    out = tmp_path / "out"
    env = alsa_env(tmp_path, tmp_path / "unused.raw")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's side of sd_notify
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    proc = subprocess.Popen(service_cmd("--model-dir", model, "--source", "mic:NONEXISTENT", "--output", out,
                                        "--retry-initial", "0.2", "--retry-max", "0.8"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    time.sleep(4.5)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, status, ru = os.wait4(proc.pid, 0)
    stop_s = time.monotonic() - started
    proc.returncode = os.WEXITSTATUS(status)
    err = proc.stderr.read()
    retries = re.findall(r"(\d\d):(\d\d):(\d\d),(\d\d\d) WARNING stetho.sources: audio device NONEXISTENT "
                         r"unavailable \(.*\); retrying in ([\d.]+) s", err)
    delays = [float(r[4]) for r in retries]
    assert delays[:4] == [0.2, 0.4, 0.8, 0.8], err    # doubling, capped at --retry-max
    times = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000.0 for h, m, s, ms, _ in retries]
    for (t0, t1), delay in zip(zip(times, times[1:]), delays):
        assert delay - 0.05 <= t1 - t0 <= delay + 0.5   # each attempt waits its delay, no busy retrying
    assert ru.ru_utime + ru.ru_stime < 3.0            # ~4.5 s of waiting must not burn a core
    assert stop_s < 2.0 and "signal 15 received" in err and proc.returncode == 0
    statuses = []
    while True:
        try:
            statuses.append(notify.recv(4096).decode())
        except BlockingIOError:
            break
    notify.close()
    assert statuses[0].startswith("READY=1")  # up, and saying what it waits for
    assert any(m.startswith("STATUS=waiting for device mic:NONEXISTENT") for m in statuses), statuses


class FakeStream(object):
    def __init__(self, owner, hang=False):
        self.owner, self.active, self.hang = owner, True, hang

    def start(self):
        pass

    def abort(self):
        if self.hang:
            time.sleep(30)

    def close(self):
        pass


class FakeSoundDevice(object):
    """sounddevice stand-in: the device is absent for ``absent`` opens, then delivers ``blocks`` then stalls."""

    def __init__(self, absent=2, hang=False):
        self.absent, self.hang, self.opened = absent, hang, 0

    def query_devices(self, device, kind):
        if self.absent > 0:
            self.absent -= 1
            raise ValueError("No input device matching %r" % device)
        return {"name": "Fake USB"}

    def InputStream(self, samplerate, channels, dtype, device, blocksize, callback):
        self.opened += 1
        stream = FakeStream(self, self.hang)
        data = np.arange(1, 1 + samplerate, dtype=np.int16).reshape(-1, 1)
        callback(data, data.shape[0], None, None)  # one second of audio, then nothing (unplugged)
        return stream


def test_mic_source_waits_for_the_device_and_reconnects_after_a_stall():
    from deploy_jetson.state import ServiceState
    state = ServiceState("m", ["a", "b"])
    fake = FakeSoundDevice(absent=2)
    source = MicSource("Fake", 100, block_s=0.05, state=state, retry_initial=0.05, retry_max=0.1, stall_s=0.3,
                       sounddevice=fake)
    seen, statuses = [], []
    for block in source.blocks():
        statuses.append(state.snapshot()["device_status"])
        if block.samples.size or block.end:
            seen.append((block.stream, block.samples.size, block.end))
        if fake.opened == 2 and block.end:
            break
    assert "waiting for device" in statuses and "capturing" in statuses
    assert source.attempts == 4 and fake.opened == 2
    assert seen[0] == ("mic#1", 100, False) and ("mic#1", 0, True) in seen and seen[-1][0] == "mic#2"


def test_a_stream_stuck_in_the_driver_does_not_hold_the_source():
    source = MicSource("Fake", 100, block_s=0.05, stall_s=0.2, retry_initial=0.05,
                       sounddevice=FakeSoundDevice(absent=0, hang=True))
    started = time.monotonic()
    for block in source.blocks():
        if block.end:
            break
    assert source.stuck and time.monotonic() - started < 3.0

"""Memory on an unattended Nano (issue 28, item 4): files are streamed, so memory stays flat whatever their length;
implausible headers are refused; a failing file never ends a folder replay; the unit caps the service's memory.

The full benchmark (a 2-hour 44.1 kHz file through the service and prepare.py) is bench/memory.py.
"""
import os
import re
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from stetho import AudioError, synth, write_wav
from stetho.audio_io import load_resampled
from deploy_jetson.sources import FileSource

from test_service_support import REPO, make_model, read_jsonl

MB = 2 ** 20


def long_wav(path, seconds, rate=44100, seed=0):
    """A ``seconds``-long 16-bit mono WAV of a heart-like sound at ``rate``, written in pieces (never whole in
    memory): 10 s of synthetic heart sound repeated, plus a little noise."""
    piece = synth.heart_sound("murmur", bpm=72, duration_s=10.0, rate=rate, seed=seed)
    codes = (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()
    total = int(seconds * rate) * 2
    with open(str(path), "wb") as handle:
        fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
        handle.write(b"RIFF" + struct.pack("<I", 36 + total) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", total))
        left = total
        while left:
            chunk = codes[:left]
            handle.write(chunk)
            left -= len(chunk)
    return path


def traced_peak(function):
    """(result, peak bytes allocated through Python and numpy while ``function`` ran)."""
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    return long_wav(tmp_path_factory.mktemp("long") / "ten_minutes.wav", 600)


def test_a_ten_minute_44k_file_replays_with_flat_memory(ten_minutes):
    """Before: the service decoded the whole file to float64 (212 MB for 10 minutes, 6 GB for 2 hours) and
    resampled it whole before the first window. Now a few MB, whatever the length."""
    def replay():
        source = FileSource(str(ten_minutes), 2000, realtime=False)
        count = 0
        for block in source.blocks():
            count += block.samples.size
        return count, source.failed
    (count, failed), peak = traced_peak(replay)
    assert not failed and count == 600 * 2000
    assert peak < 12 * MB, "%.1f MB" % (peak / MB)


def test_load_resampled_holds_the_result_and_one_block(ten_minutes):
    """prepare.py's loader: the 10 minutes at 2 kHz (4.8 MB of float32) and little besides."""
    (samples, rate, frames), peak = traced_peak(lambda: load_resampled(str(ten_minutes), 2000))
    assert rate == 44100 and frames == 600 * 44100 and samples.size == 600 * 2000
    assert peak < samples.nbytes * 2 + 8 * MB, "%.1f MB" % (peak / MB)


def test_the_numpy_sinc_resampler_streams_in_bounded_memory_too(tmp_path, monkeypatch):
    """The Nano has no soxr: its resampler must stream as well."""
    from stetho import resampling
    monkeypatch.setattr(resampling, "_optional", lambda name: None)  # no soxr: the Nano's resampler
    path = long_wav(tmp_path / "one_minute_8k.wav", 60, rate=8000)
    (samples, _, _), peak = traced_peak(lambda: load_resampled(str(path), 2000))
    assert samples.size == 60 * 2000
    assert peak < samples.nbytes * 2 + 24 * MB, "%.1f MB" % (peak / MB)


def test_a_one_hertz_header_is_skipped_by_name_and_the_folder_replay_goes_on(tmp_path):
    folder = tmp_path / "recs"
    folder.mkdir()
    write_wav(str(folder / "a.wav"), synth.heart_sound("normal", duration_s=3.0, rate=4000), 4000)
    pcm = (np.random.RandomState(0).randn(100000) * 3000).astype("<i2").tobytes()  # 200 kB claiming 1 Hz
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 2, 2, 16)
    (folder / "b.wav").write_bytes(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16)
                                   + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm)
    write_wav(str(folder / "c.wav"), synth.heart_sound("extra", duration_s=2.0, rate=8000), 8000)
    source = FileSource(str(folder), 2000, realtime=False)
    blocks = list(source.blocks())
    assert [(b.stream, b.samples.size, b.end) for b in blocks] == [("a", 6000, True), ("c", 4000, True)]
    assert list(source.failed) == [str(folder / "b.wav")]
    assert "b.wav: sample rate 1 Hz is implausible" in source.failed[str(folder / "b.wav")]


def test_a_file_failing_part_way_ends_its_stream_and_the_replay_goes_on(tmp_path, monkeypatch):
    """An error mid-file (here: NaN samples 70 s in; the same path as MemoryError or a file cut short while
    read) keeps the windows already delivered, ends that stream and replays the next file."""
    folder = tmp_path / "recs"
    folder.mkdir()
    audio = synth.heart_sound("normal", duration_s=100.0, rate=2000)
    audio[140000] = np.nan
    data = audio.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 2000, 8000, 4, 32)
    (folder / "a.wav").write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
                                   + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    write_wav(str(folder / "b.wav"), synth.heart_sound("normal", duration_s=3.0, rate=2000), 2000)
    source = FileSource(str(folder), 2000, realtime=False, fast_block_s=20.0)
    blocks = list(source.blocks())
    streams = [(b.stream, b.end) for b in blocks]
    assert streams[-2:] == [("a", True), ("b", True)] and all(s == "a" for s, _ in streams[:-1])
    assert 100000 <= sum(b.samples.size for b in blocks if b.stream == "a") < 140000
    assert "NaN" in source.failed[str(folder / "a.wav")]
    failing = {"called": 0}

    def out_of_memory(*args, **kwargs):
        failing["called"] += 1
        raise MemoryError()
    monkeypatch.setattr("deploy_jetson.sources.ResampledFile", out_of_memory)
    source = FileSource(str(folder), 2000, realtime=False)
    assert list(source.blocks()) == [] and failing["called"] == 2
    assert all("out of memory" in message for message in source.failed.values())


def test_an_implausible_rate_is_refused_by_prepare_as_a_skipped_file(tmp_path):
    from train_host import prepare
    path = tmp_path / "claims_1_hz.wav"
    pcm = (np.random.RandomState(0).randn(100000) * 3000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 2, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", len(pcm)) + pcm)
    with pytest.raises(AudioError, match="claims_1_hz.wav: sample rate 1 Hz is implausible"):
        load_resampled(str(path), 2000)
    assert prepare.audio_error_kind("x.wav: sample rate 1 Hz is implausible (accepted: 1000-384000 Hz)") == "corrupt"


def _peak_rss_mb(stdout):
    return float(re.search(r"peak RSS (\d+) MB", stdout).group(1))


def test_a_memory_limited_service_replays_a_long_file(tmp_path, ten_minutes):
    """The service replaying 10 minutes of 44.1 kHz audio peaks no higher than replaying 10 seconds of it, and
    runs under an address-space limit (RLIMIT_AS) set a little above what the 10-second replay reached: the
    whole-file decode of before (float64 at 44.1 kHz, then resampled whole) would need 260 MB more."""
    resource = pytest.importorskip("resource")
    model = make_model(tmp_path / "model")
    short = long_wav(tmp_path / "ten_seconds.wav", 10)
    probe = ("import resource, runpy, sys\n"
             "sys.argv = ['service.py'] + sys.argv[1:]\n"
             "try:\n"
             "    runpy.run_path(%r, run_name='__main__')\n"
             "finally:\n"
             "    peak = [l for l in open('/proc/self/status') if l.startswith('VmPeak:')][0].split()[1]\n"
             "    sys.stderr.write('VmPeak %%s kB\\n' %% peak)\n" % str(REPO / "deploy_jetson" / "service.py"))
    common = ["--model-dir", model, "--fast", "--quiet", "--backend", "onnxruntime", "--smooth", "1"]

    def replay(wav, out, limit=None):
        def set_limit():
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return subprocess.run([sys.executable, "-c", probe] + [str(a) for a in common + ["--source", "file:%s" % wav,
                                                                                        "--output", out]],
                              cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=300, preexec_fn=set_limit, env=dict(os.environ, OMP_NUM_THREADS="1"))
    first = replay(short, tmp_path / "short")
    assert first.returncode == 0, first.stderr
    vm_peak = int(re.search(r"VmPeak (\d+) kB", first.stderr).group(1)) * 1024
    limit = vm_peak + 96 * MB
    second = replay(ten_minutes, tmp_path / "long", limit)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    results = read_jsonl(tmp_path / "long" / "results.jsonl")
    assert len(results) == (600 - 3) // 1.5 + 1  # every window of the 10 minutes
    assert _peak_rss_mb(second.stdout) <= _peak_rss_mb(first.stdout) + 24, (first.stdout, second.stdout)


def test_the_unit_caps_the_service_memory():
    unit = (REPO / "systemd" / "stetho.service").read_text()
    values = re.findall(r"^MemoryMax=(\d+)([MG])$", unit, re.M)
    assert len(values) == 1, "stetho.service needs one MemoryMax= (in M or G)"
    number, unit_letter = values[0]
    megabytes = int(number) * (1024 if unit_letter == "G" else 1)
    assert 1024 <= megabytes <= 2048, "room for CUDA/TensorRT on a 4 GB Nano, and well below it"


# ---- shared-audio detection (prepare.py) reads files block by block too --------------------------------------

def test_the_streamed_fingerprint_is_the_whole_one_on_real_recordings(shared_data):
    from stetho import load_audio
    from train_host.shared_audio import as_steps, file_fingerprint, fingerprint
    files = (sorted((shared_data / "yaseen2018").glob("*/*.wav"))[::200]
             + sorted((shared_data / "icbhi2017_sample" / "audio_and_txt_files").glob("*.wav"))[:2])
    for path in files:
        whole = fingerprint(as_steps(load_audio(str(path))[0]))
        for block in (1000, 4096, 1 << 18):
            streamed, frames = file_fingerprint(str(path), block=block)
            assert np.array_equal(streamed.hashes, whole.hashes), (path, block)
            assert np.array_equal(streamed.positions, whole.positions), (path, block)


def test_a_long_recording_keeps_a_bounded_fingerprint_that_still_finds_a_shared_stretch(tmp_path):
    """A recording with more runs than max_hashes keeps a sample of them (the same rule in every file): a 2 s cut
    of it still pairs with it, at the right offset, and the pair is confirmed from the files block by block."""
    from train_host.shared_audio import (FileSteps, as_steps, candidate_offsets, file_fingerprint, file_steps,
                                         same_audio, shared_audio_groups)
    rng = np.random.RandomState(4)
    long_audio = rng.randn(8000 * 60) * 0.1  # 60 s at 8 kHz: ~480000 audible runs
    write_wav(str(tmp_path / "long.wav"), long_audio, 8000)
    write_wav(str(tmp_path / "cut.wav"), long_audio[200000:216000], 8000)
    write_wav(str(tmp_path / "other.wav"), rng.randn(16000) * 0.1, 8000)
    prints, frames = {}, {}
    for name in ("long", "cut", "other"):
        prints[name], frames[name] = file_fingerprint(str(tmp_path / (name + ".wav")), block=30000,
                                                      max_hashes=50000)
    assert prints["long"].hashes.size <= 50000 < frames["long"]  # bounded: a sample of the runs
    assert prints["cut"].hashes.size <= 50000
    assert candidate_offsets(prints)[("cut", "long")][0] == -200000
    steps = dict((name, file_steps(str(tmp_path / (name + ".wav")), frames[name], long=100000)) for name in prints)
    assert isinstance(steps["long"], FileSteps) and isinstance(steps["cut"], np.ndarray)
    groups, pairs = shared_audio_groups(lambda name: steps[name], prints, prints)
    assert groups == [["cut", "long"]] and pairs[0][2:] == (-200000, 16000)
    from stetho import load_audio
    whole = as_steps(load_audio(str(tmp_path / "long.wav"))[0])
    for offset in (-200000, -200001, 5):  # the streamed comparison gives the whole-array answer
        assert same_audio(steps["cut"], steps["long"], offset) == same_audio(steps["cut"], whole, offset)

"""The live service: windowing, quality gate, smoothing, settings, and end-to-end runs on CPU with onnxruntime.

The model is a tiny random-init ResNet18 (tests/test_service_support.make_model): these tests check the
plumbing (windows, decisions, outputs, signals), not accuracy; test_service_parity.py uses a trained model.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stetho import preset, synth, write_wav
from stetho.png import read_png
from stetho.segmentation import fixed_windows, peak_cut_cycles

from deploy_jetson import quality
from deploy_jetson.config import SettingsError, parse_settings, read_env_file
from deploy_jetson.service import build_parser
from deploy_jetson.smoothing import Smoother, decide
from deploy_jetson.sources import FileSource, PeakCycler, RingBuffer, Windower, make_segmenter, parse_source
from test_service_support import make_model, read_jsonl, run_service, service_cmd

IMAGENET_LINE = re.compile(r"^imagenet:  (uncertain \()?\d\d\.\d\d% class #\d+ \((extra|murmur|normal)\)\)?  \[")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A 12 s synthetic murmur recording at 4 kHz (the service resamples it to the contract's 2 kHz)."""
    path = tmp_path_factory.mktemp("audio") / "held.wav"
    write_wav(str(path), synth.heart_sound("murmur", bpm=80, duration_s=12.0, rate=4000, seed=3), 4000)
    return path


# ---- windowing ----------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 900), length=st.integers(10, 200), hop=st.integers(1, 120),
       cuts=st.lists(st.integers(1, 300), min_size=1, max_size=12), pad=st.sampled_from(["wrap", "zero", "edge"]))
def test_windower_cuts_a_stream_exactly_as_fixed_windows_cuts_the_recording(n, length, hop, cuts, pad):
    x = np.random.RandomState(n).standard_normal(n).astype(np.float32)
    w = Windower(length, hop, pad)
    w.reset("rec")
    got, pos, i = [], 0, 0
    while pos < n:  # feed the stream in arbitrary chunks
        step = cuts[i % len(cuts)]
        got += w.push(x[pos:pos + step])
        pos, i = pos + step, i + 1
    got += w.finish()
    want = fixed_windows(x, 1000, length / 1000.0, hop / 1000.0, pad) if n else []
    assert [(g.start, g.padded) for g in got] == [(s.offset, s.padded) for s in want]
    for g, s in zip(got, want):
        np.testing.assert_array_equal(g.samples, s.samples)
    assert [g.index for g in got] == list(range(len(got)))


def test_windower_drops_a_stream_shorter_than_the_contract_minimum():
    w = Windower(100, 50, "wrap", min_samples=40)
    w.reset("a")
    assert w.push(np.ones(30, np.float32)) == [] and w.finish() == []
    w.push(np.ones(60, np.float32))
    (only,) = w.finish()
    assert only.padded and only.samples.size == 100


def feed_in_blocks(cutter, x, block, stream="rec"):
    """Push ``x`` through a live cutter in ``block``-sample blocks, then finish: every piece it emits."""
    cutter.reset(stream)
    got = []
    for pos in range(0, x.size, block):
        got += cutter.push(x[pos:pos + block])
    return got + cutter.finish()


@pytest.mark.parametrize("bpm,rate,block", [(60, 2000, 200), (72, 2000, 2000), (110, 2000, 512), (66, 22050, 4410)])
def test_peak_cycler_cuts_a_steady_stream_as_peak_cut_cycles_cuts_the_recording(bpm, rate, block):
    """Live: cycles sought every 0.5 s in the last 8 s, emitted once settled. On a steady rhythm they are the
    whole recording's cycles, in order, none twice, none missing: sample for sample at the heart contract's
    2 kHz; at 22.05 kHz an envelope top a few samples wide may put a peak one sample off (the buffer's mean,
    removed first, is not the recording's), so there the cycles start where the recording's do and agree up to
    their ends."""
    x = synth.heart_sound("murmur", bpm=bpm, duration_s=30.0, rate=rate, seed=bpm).astype(np.float32)
    want = peak_cut_cycles(x, rate, 1.0)
    got = feed_in_blocks(PeakCycler(rate, rate // 2, rate), x, block)
    assert len(want) >= 30 * bpm / 60.0 - 2
    assert [g.start for g in got] == [w.offset for w in want]
    shortest = rate // 2 if rate > 2000 else rate  # every cycle here is longer than 0.5 s
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.samples[:shortest], w.samples[:shortest])
        if rate == 2000:
            np.testing.assert_array_equal(g.samples, w.samples)
    assert [g.index for g in got] == list(range(len(got)))


def test_peak_cycler_follows_a_changing_rhythm_without_repeating_or_overlapping():
    rate = 2000
    x = np.concatenate([synth.heart_sound("normal", bpm=bpm, duration_s=20.0, rate=rate, seed=1)
                        for bpm in (60, 120)]).astype(np.float32)
    got = feed_in_blocks(PeakCycler(rate, rate // 2, rate), x, 300)
    starts = np.array([g.start for g in got])
    lengths = np.diff(starts) / float(rate)
    assert np.all(lengths > 0.3)  # in order, never the same cycle twice
    assert 0.9 < np.median(lengths[:15]) < 1.1 and 0.4 < np.median(lengths[-15:]) < 0.6  # 60 then 120 bpm
    assert len(got) >= 0.9 * (20 + 40)  # ~60 beats, none lost in bulk
    # nothing in silence or in a stream with a single beat; the next stream starts afresh
    cutter = PeakCycler(rate, rate // 2, rate)
    assert feed_in_blocks(cutter, np.zeros(10 * rate, np.float32), 500) == []
    again = feed_in_blocks(cutter, x[:10 * rate], 500, stream="next")
    assert again and again[0].stream == "next" and again[0].index == 0


def test_segmenter_follows_the_contract_mode():
    heart = preset("heart")
    windower, note = make_segmenter(heart)
    assert isinstance(windower, Windower) and note is None
    cycler, note = make_segmenter(preset("vascular"))
    assert isinstance(cycler, PeakCycler) and note is None
    lung = preset("lung")  # prepare.py cuts annotated cycles where the recordings have them (ICBHI)
    lung = lung.replace(segmentation=lung.segmentation.replace(mode="cycles"))
    windower, note = make_segmenter(lung)  # live audio has none: windows of the same length, and said so
    assert isinstance(windower, Windower) and "annotated" in note and windower.length == lung.segment_samples


def test_ring_buffer_keeps_the_newest_samples_and_counts_the_dropped():
    ring = RingBuffer(10)
    ring.write(np.arange(6))
    ring.write(np.arange(6, 14))
    np.testing.assert_array_equal(ring.read(0), np.arange(4, 14))
    assert ring.dropped == 4
    assert ring.read(0.01).size == 0


def test_sources_are_parsed_and_bad_ones_named():
    assert parse_source("mic") == ("mic", None)
    assert parse_source("mic:2") == ("mic", 2)
    assert parse_source("mic:USB Audio") == ("mic", "USB Audio")
    assert parse_source("file:a/b.wav") == ("file", "a/b.wav")
    assert parse_source("stdin") == ("stdin", None)
    with pytest.raises(Exception, match="unknown source 'tcp:1'"):
        parse_source("tcp:1")


def test_file_source_replays_in_real_time_without_spinning(held_out):
    clock = {"t": 0.0}
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        clock["t"] += seconds
    source = FileSource(str(held_out), 2000, realtime=True, block_s=0.5, clock=lambda: clock["t"], sleep=sleep)
    blocks = list(source.blocks())
    assert sum(b.samples.size for b in blocks) == 24000 and blocks[-1].end
    assert abs(clock["t"] - 11.5) < 1e-9  # the last block is due 11.5 s after the first
    assert all(w >= 0 for w in waits)


# ---- quality gate and smoothing -----------------------------------------------------------------------------

def test_quality_gate_rejects_silence_clipping_thumps_and_rubbing_but_not_heart_sounds():
    contract = preset("heart")
    band = quality.contract_band(contract)
    rng = np.random.RandomState(0)
    heart = synth.heart_sound("murmur", duration_s=3.0, rate=2000, seed=1)

    def judge(x):
        return quality.assess(x, 2000, quality.QualityConfig(), band)
    assert judge(heart).quality == "ok" and judge(heart).decision is None
    assert judge(heart * 1e-4).decision == "no signal" and judge(np.zeros(6000)).quality == "silent"
    assert judge(np.clip(heart * 20, -1, 1)).quality == "clipping"
    thump = heart * 0.05
    thump[3000:3100] += 0.9 * np.hanning(100)
    assert judge(thump).quality == "handling" and judge(thump).decision == "poor contact"
    assert judge(0.2 * rng.standard_normal(6000)).quality == "rubbing"
    assert quality.assess(np.zeros(6000), 2000, quality.QualityConfig(enabled=False)).decision is None


@pytest.mark.realdata
def test_quality_gate_accepts_real_yaseen_recordings(yaseen):
    from stetho import load_audio, resample
    contract = preset("heart")
    seg = contract.segmentation
    judged = []
    for folder in sorted(os.listdir(str(yaseen))):
        for name in sorted(os.listdir(str(yaseen / folder)))[:4]:
            x, rate = load_audio(str(yaseen / folder / name))
            x = resample(x, rate, 2000)
            for piece in fixed_windows(x, 2000, seg.window_s, seg.hop_s, seg.pad):
                judged.append(quality.assess(piece.samples, 2000, band_hz=quality.contract_band(contract)).quality)
    assert len(judged) >= 20 and set(judged) == {"ok"}


def test_smoothing_mean_and_ema_and_the_uncertain_threshold():
    mean = Smoother("mean", 3)
    for p in ([1, 0], [0, 1], [0, 1]):
        out = mean.update(p)
    np.testing.assert_allclose(out, [1 / 3.0, 2 / 3.0])
    np.testing.assert_allclose(mean.update([0, 1]), [0, 1])  # the first window left the K=3 window
    ema = Smoother("ema", 3)  # alpha = 0.5
    ema.update([1, 0])
    np.testing.assert_allclose(ema.update([0, 1]), [0.5, 0.5])
    ema.reset()
    np.testing.assert_allclose(ema.update([0, 1]), [0, 1])
    assert decide([0.2, 0.8], ["a", "b"], 0.5) == ("b", 1, 0.8)
    assert decide([0.45, 0.55], ["a", "b"], 0.6)[0] == "uncertain"
    with pytest.raises(ValueError):
        Smoother("median", 3)


# ---- settings -------------------------------------------------------------------------------------------------

def test_settings_precedence_ini_then_env_file_then_environment_then_flags(tmp_path):
    ini = tmp_path / "stetho.ini"
    ini.write_text("[service]\nmodel-dir = /from/ini\nthreshold = 0.7\nsmooth = 5\nquiet = yes\n")
    env_file = tmp_path / "stetho.env"
    env_file.write_text("# /etc/default/stetho\nexport STETHO_SMOOTH=4\nSTETHO_SOURCE='file:/x y.wav'\nOTHER=1\n")
    args = parse_settings(build_parser(), ["--config", str(ini), "--env-file", str(env_file), "--smooth", "2"],
                          environ={"STETHO_THRESHOLD": "0.9", "STETHO_UNRELATED": "x", "STETHO_ARGS": "--quiet",
                                   "STETHO_HTTP": ""})  # unknown and empty variables are ignored
    assert args.model_dir == "/from/ini" and args.quiet is True
    assert args.source == "file:/x y.wav"       # env file beats the default
    assert args.threshold == 0.9                # environment beats the INI
    assert args.smooth == 2                     # the command line beats everything
    assert args.http is None
    assert read_env_file(str(env_file))["OTHER"] == "1"


def test_settings_errors_name_the_file_and_the_key(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[service]\nthreshhold = 0.7\n")
    with pytest.raises(SettingsError, match=r"bad.ini: unknown setting 'threshhold'"):
        parse_settings(build_parser(), ["--config", str(ini)], environ={})
    with pytest.raises(SettingsError, match=r"environment: smooth='many'"):
        parse_settings(build_parser(), [], environ={"STETHO_SMOOTH": "many"})
    with pytest.raises(SettingsError, match="is not one of"):
        parse_settings(build_parser(), [], environ={"STETHO_BACKEND": "cuda"})
    with pytest.raises(SettingsError, match=r"missing.ini: cannot read"):
        parse_settings(build_parser(), ["--config", str(tmp_path / "missing.ini")], environ={})


# ---- end to end -----------------------------------------------------------------------------------------------

def test_service_replays_a_file_and_writes_every_sink(model, held_out, tmp_path):
    out = tmp_path / "out"
    run = run_service("--model-dir", model, "--source", "file:%s" % held_out, "--fast", "--output", out,
                      "--archive", tmp_path / "archive", "--archive-on", "uncertain,murmur,extra,normal",
                      "--save-images", tmp_path / "images", "--smooth", "1")
    assert run.returncode == 0, run.stderr
    lines = [l for l in run.stdout.splitlines() if l.startswith("imagenet:")]
    results = read_jsonl(out / "results.jsonl")
    # 12 s at 3 s windows every 1.5 s → 7 windows, in order, one stdout line each
    assert len(lines) == len(results) == 7 and all(IMAGENET_LINE.match(l) for l in lines)
    assert [r["start_s"] for r in results] == [1.5 * i for i in range(7)]
    for r in results:
        assert r["quality"] == "ok" and r["backend"] == "onnxruntime" and r["stream"] == "held"
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4 and r["latency_ms"] > 0
        assert r["decision"] in ("uncertain", "extra", "murmur", "normal")
    overlay = read_png(str(out / "latest.png"))
    assert overlay.shape[0] == 384  # --overlay-size's default: R=32 enlarged ×9 beside its axes, the bars beside
    assert len(os.listdir(str(tmp_path / "archive"))) == 7
    assert sorted(os.listdir(str(tmp_path / "images")))[0] == "held__0000.png"
    assert "service: 7 window(s)" in run.stdout and str(out / "results.jsonl") in run.stdout


def test_service_cuts_peak_to_peak_cycles_for_a_peaks_model_as_render_and_classify_do(held_out, tmp_path):
    """A model trained on peak-cut cycles (segmentation.mode 'peaks') is fed cycles live, not windows: the
    service's cycles start where the recording's do, and its images are render.py's, pixel for pixel."""
    from deploy_jetson import classify, render
    from stetho import load_audio, resample
    model = make_model(tmp_path / "peaks", segmentation={"mode": "peaks", "hop_s": 0.5})
    audio, rate = load_audio(str(held_out))
    want = peak_cut_cycles(resample(audio, rate, 2000), 2000, 3.0)
    assert len(want) >= 14  # 12 s at 80 bpm
    run = run_service("--model-dir", model, "--source", "file:%s" % held_out, "--fast", "--output", tmp_path / "o",
                      "--save-images", tmp_path / "live", "--smooth", "1")
    assert run.returncode == 0, run.stderr
    assert "peak-to-peak cycles" in run.stderr + run.stdout
    results = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert [round(r["start_s"] * 2000) for r in results] == [w.offset for w in want]
    assert render.main(["--model-dir", str(model), str(held_out), str(tmp_path / "offline")]) == 0
    live, offline = (sorted(os.listdir(str(tmp_path / d))) for d in ("live", "offline"))
    assert live == offline and len(live) == len(want)
    for name in live:
        np.testing.assert_array_equal(read_png(str(tmp_path / "live" / name)), read_png(str(tmp_path / "offline" / name)))
    assert classify.main(["--model", str(model / "resnet18.onnx"), str(held_out), "--json", str(tmp_path / "c.json")]) == 0
    with open(str(tmp_path / "c.json")) as handle:
        assert [w["start_s"] for w in json.load(handle)["windows"]] == [r["start_s"] for r in results]


def test_service_reads_raw_pcm_from_stdin(model, tmp_path):
    audio = synth.heart_sound("normal", duration_s=4.6, rate=2000, seed=5)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    proc = subprocess.run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path, "--quiet"),
                          input=pcm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["start_s"] for r in results] == [0.0, 1.5]  # 4.6 s: windows at 0 and 1.5 s


def test_latest_overlay_goes_where_stetho_latest_says_and_results_stay_in_output(model, tmp_path):
    """The appliance keeps the overlay, rewritten every window, on a tmpfs (STETHO_LATEST=/run/stetho/latest.png in
    systemd/stetho.env) and the results on disk: the two paths are independent, and a missing folder is made."""
    audio = synth.heart_sound("normal", duration_s=4.6, rate=2000, seed=5)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    latest = tmp_path / "run" / "stetho" / "latest.png"
    proc = subprocess.run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path / "out"),
                          input=pcm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                          env=dict(os.environ, STETHO_LATEST=str(latest)))
    assert proc.returncode == 0, proc.stderr
    assert read_png(str(latest)).shape[0] == 384  # the overlay's default height
    kept = sorted(os.listdir(str(tmp_path / "out")))
    assert "latest.png" not in kept and {"results.jsonl", "exams.jsonl", "exams"} <= set(kept)
    assert len(read_jsonl(tmp_path / "out" / "results.jsonl")) == 2
    assert "latest overlay %s" % latest in proc.stdout.decode()
    # a place no folder can be made: refused at start-up, naming the flag and the path
    (tmp_path / "a-file").write_text("not a folder")
    bad = subprocess.run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path / "out",
                                     "--latest", tmp_path / "a-file" / "latest.png"),
                         input=pcm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert bad.returncode == 2
    assert "--latest %s: cannot create the folder" % (tmp_path / "a-file") in bad.stderr.decode()
    bad = subprocess.run(service_cmd("--model-dir", model, "--source", "stdin", "--output", tmp_path / "out",
                                     "--archive", tmp_path / "a-file" / "archive"),
                         input=pcm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert bad.returncode == 2
    assert "--archive %s: cannot create the folder" % (tmp_path / "a-file" / "archive") in bad.stderr.decode()
    assert len(read_jsonl(tmp_path / "out" / "results.jsonl")) == 2  # the earlier run's results untouched

def test_service_skips_a_bad_file_in_a_folder_by_name_and_goes_on(model, tmp_path):
    folder = tmp_path / "recs"
    folder.mkdir()
    write_wav(str(folder / "a.wav"), synth.heart_sound("normal", duration_s=3.0, rate=2000), 2000)
    (folder / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    write_wav(str(folder / "c.wav"), synth.heart_sound("extra", duration_s=1.2, rate=2000), 2000)
    run = run_service("--model-dir", model, "--source", "file:%s" % folder, "--fast", "--output", tmp_path / "o")
    assert run.returncode == 0 and "b.wav" in run.stderr
    results = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert [(r["stream"], r["padded"]) for r in results] == [("a", False), ("c", True)]  # c: one padded window


def test_sigterm_mid_stream_stops_within_two_seconds_with_results_flushed(model, held_out, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(service_cmd("--model-dir", model, "--source", "file:%s" % held_out, "--loop",
                                        "--output", out, "--block", "0.05"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        first = proc.stdout.readline()  # real time: the first window is complete after 3 s
        assert IMAGENET_LINE.match(first), first
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        rest, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 0 and elapsed < 2.0, (elapsed, err)
    printed = [first] + [l for l in rest.splitlines() if l.startswith("imagenet:")]
    results = read_jsonl(out / "results.jsonl")  # every line complete JSON, one per printed window
    assert len(results) == len(printed) >= 1
    assert "signal 15 received" in err and "service: %d window(s)" % len(results) in rest


def test_service_refuses_a_missing_model_and_a_labels_mismatch_by_name(model, tmp_path):
    run = run_service("--model-dir", tmp_path / "nothing", "--source", "stdin")
    assert run.returncode == 2 and "model.json" in run.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "resnet18.onnx"):
        os.symlink(str(model / name), str(broken / name))
    (broken / "labels.txt").write_text("a\nb\nc\n")
    run = run_service("--model-dir", broken, "--source", "stdin")
    assert run.returncode == 2 and "labels.txt lists ['a', 'b', 'c']" in run.stderr
    run = run_service("--source", "stdin", env=dict(os.environ, STETHO_MODEL_DIR=""))
    assert run.returncode == 2 and "--model-dir is required" in run.stderr


def test_status_page_runs_beside_the_loop(model, held_out, tmp_path):
    import urllib.request
    proc = subprocess.Popen(service_cmd("--model-dir", model, "--source", "file:%s" % held_out, "--loop", "--quiet",
                                        "--output", tmp_path, "--http", "127.0.0.1:0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"status page on http://127\.0\.0\.1:(\d+)/", line)
            port = int(found.group(1)) if found else None
        assert port, "no status page address logged"
        # the page starts before the source: poll until the replay has begun (under load it takes a moment)
        while True:
            status = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/api/status" % port, timeout=5).read())
            if status["device_status"] != "starting" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status["backend"] == "onnxruntime" and status["device_status"] == "replaying"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(1, 20), st.integers(0, 2 ** 16))
def test_smoothing_mean_is_numpys_mean_bit_for_bit(k, n_classes, n_windows, seed):
    rng = np.random.RandomState(seed)
    smoother, seen = Smoother("mean", k), []
    for _ in range(n_windows):
        p = rng.dirichlet(np.ones(n_classes)).astype(np.float32)
        seen.append(p.astype(np.float64))
        out = smoother.update(p)
        assert np.array_equal(out, np.mean(np.stack(seen[-k:]), axis=0))


def test_results_jsonl_lines_are_on_disk_as_each_window_is_emitted_and_appended_after_a_restart(tmp_path):
    """A reader following results.jsonl sees every line whole as soon as it is emitted (no buffer holds it
    back), and a restarted service appends to the file instead of replacing it."""
    from deploy_jetson.sinks import JsonlSink
    path = str(tmp_path / "results.jsonl")
    with open(path, "w") as handle:
        handle.write('{"window": -1}\n')  # a previous run's line: kept
    sink = JsonlSink(path, fsync_every=2)
    for index in range(3):
        sink.emit({"window": index, "decision": "normal", "label": "caf\u00e9"})
        with open(path) as reader:
            lines = reader.read().splitlines()
        assert [json.loads(line)["window"] for line in lines] == list(range(-1, index + 1))
    sink.close()
    sink.close()  # idempotent: the service's shutdown path may close twice
    again = JsonlSink(path)
    again.emit({"window": 3})
    again.close()
    assert [r["window"] for r in read_jsonl(tmp_path / "results.jsonl")] == [-1, 0, 1, 2, 3]
    assert json.loads(open(path).read().splitlines()[1])["label"] == "caf\u00e9"

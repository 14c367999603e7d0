#!/usr/bin/env python3
"""Live body-sound classification: source → windows → quality gate → spectrogram → network → smoothing → sinks.

    python deploy_jetson/service.py --model-dir models/heart                        # default microphone
    python deploy_jetson/service.py --model-dir models/heart --source mic:USB       # input device by name or index
    python deploy_jetson/service.py --model-dir models/heart --source file:rec.wav --fast
    arecord -f S16_LE -c1 -r 2000 -t raw | python deploy_jetson/service.py --model-dir models/heart --source stdin

Every ``hop_s`` of audio a window of ``window_s`` (the model's contract; for a
contract whose segmentation mode is 'peaks', each new peak-to-peak cycle, fitted
to ``window_s`` as training fitted it; ``end_s`` is then the end of that fitted
piece) is judged by the signal-quality gate, rendered exactly as training rendered it,
classified, smoothed over the last K windows and written out: the imagenet.py
line on stdout, ``OUTPUT/results.jsonl``, ``OUTPUT/latest.png`` (overlay), and
optionally a WAV archive of flagged windows, a jetson_utils video output and a
status page.  Settings come from flags, ``--config FILE`` (INI, [service]),
``--env-file FILE`` or STETHO_* variables (see deploy_jetson/config.py).
SIGTERM/SIGINT stop it within two seconds with every result flushed; under
systemd (Type=notify) it reports READY/STATUS/WATCHDOG.  Python 3.6 + numpy.
"""
import argparse
import logging
import os
import signal
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stetho import StethoError  # noqa: E402
from stetho.contract import render_segment_levels  # noqa: E402
from stetho.spectrogram import colour  # noqa: E402
from stetho.heap import retain_freed_memory  # noqa: E402
from deploy_jetson import quality  # noqa: E402
from deploy_jetson.backends import BACKENDS, BackendUnavailable, load_backend, load_model  # noqa: E402
from deploy_jetson.config import SettingsError, check_service_args, parse_settings  # noqa: E402
from deploy_jetson.exam import ExamSettings, ExamTracker, progress  # noqa: E402
from deploy_jetson.exam_outputs import ExamOutputs  # noqa: E402
from deploy_jetson.notify import Notifier  # noqa: E402
from stetho.decision import DecisionRule  # noqa: E402
from stetho.drift import reference_of  # noqa: E402
from deploy_jetson.overlay import (DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, OverlayFrame, exam_lines,  # noqa: E402
                                   imagenet_text, overlay_axes)
from deploy_jetson.sinks import (ConsoleSink, ImageSink, JsonlSink, OverlaySink, VideoSink,  # noqa: E402
                                 WavArchiveSink, emit_all, flagged_decisions)
from deploy_jetson.disk import MB, SinkHealth, add_disk_arguments, disk_limits  # noqa: E402
from deploy_jetson.smoothing import METHODS, Smoother, decide  # noqa: E402
from deploy_jetson.sources import SourceError, make_segmenter, open_source  # noqa: E402
from deploy_jetson.state import ServiceState  # noqa: E402

log = logging.getLogger("stetho.service")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Sources: mic[:NAME_OR_INDEX] (sounddevice at the contract's rate), file:PATH "
                                       "(a WAV or a folder; real time unless --fast), stdin (raw PCM: signed 16-bit "
                                       "little-endian mono at the model's sample rate, e.g. 2000 Hz for the heart "
                                       "preset). Every flag can also be set as STETHO_<FLAG> (e.g. "
                                       "STETHO_MODEL_DIR) or in --config/--env-file.")
    p.add_argument("--model-dir", help="model folder: resnet18.onnx, labels.txt, model.json (required)")
    p.add_argument("--source", default="mic", help="mic[:NAME_OR_INDEX] | file:PATH | stdin (default: mic)")
    p.add_argument("--output", default="runs/service", help="folder for results.jsonl and latest.png")
    p.add_argument("--latest", metavar="PATH", help="where the latest overlay PNG goes (default: OUTPUT/latest.png); "
                   "replaced every window, so on an SD card a tmpfs path such as /run/stetho/latest.png spares "
                   "the card")
    p.add_argument("--overlay-size", type=int, default=DEFAULT_SIZE, metavar="PX",
                   help="height of the overlay (latest.png, --video) in pixels, %d-%d (default %d): the network's "
                        "image enlarged by a whole factor, its time and frequency axes, the decision and one bar "
                        "per class beside it" % (MIN_SIZE, MAX_SIZE, DEFAULT_SIZE))
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend (default: auto)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: 1)")
    p.add_argument("--fast", action="store_true", help="file source: replay as fast as possible, not in real time")
    p.add_argument("--loop", action="store_true", help="file source: start again after the last file")
    p.add_argument("--max-windows", type=int, default=0, help="stop after this many windows (0: no limit)")
    p.add_argument("--smoothing", default="mean", choices=METHODS, help="mean or ema over the last K windows")
    p.add_argument("--smooth", type=int, default=3, metavar="K", help="windows to smooth over (1: off; default 3)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="smoothed top-class probability below this → 'uncertain' (default 0.5)")
    p.add_argument("--no-quality", action="store_true", help="turn the signal-quality gate off")
    # the gate's thresholds are the model's (its contract's quality section); each flag overrides one
    p.add_argument("--quality-silence-dbfs", type=float, help="RMS (dBFS) below this → 'no signal' "
                   "(default: the model's contract; heart -60)")
    p.add_argument("--quality-clip-fraction", type=float, help="fraction of samples at ≥ 0.99 full scale → "
                   "'poor contact' (default: the contract's; heart 0.02)")
    p.add_argument("--quality-handling-share", type=float,
                   help="share of window energy in one frame (heart: 100 ms, cough: 10 ms) → 'poor contact' "
                        "(default: the contract's; heart 0.75, cough 0.45)")
    p.add_argument("--quality-flatness", type=float,
                   help="in-band spectral flatness (broadband rubbing) → 'poor contact' (default: the contract's; "
                        "heart 0.45)")
    p.add_argument("--archive", help="folder for WAVs of flagged windows (off by default)")
    p.add_argument("--archive-on", help="comma-separated decisions to archive (default: every class not named "
                                        "normal/N/healthy, and uncertain)")
    p.add_argument("--save-images", metavar="DIR", help="also write every window's spectrogram PNG here "
                                                        "(<stream>__NNNN.png, as prepare.py names them)")
    p.add_argument("--video", help="jetson_utils videoOutput URI: display://0, rtp://HOST:PORT, file://out.mp4")
    add_disk_arguments(p)  # --results-max-mb, --results-keep, --archive-max-mb, --min-free-mb
    p.add_argument("--http", metavar="HOST:PORT", help="serve the live status page (deploy_jetson/status_http.py)")
    p.add_argument("--http-token", metavar="TOKEN", help="the status page then needs this token (16+ characters) on "
                   "every route: 'Authorization: Bearer TOKEN', or open /?token=TOKEN once in the browser (it then "
                   "keeps a cookie); set it whenever --http is not a loopback address")
    p.add_argument("--http-token-file", metavar="PATH", help="read --http-token from this file (mode 600), so it "
                   "need not sit in a world-readable settings file")
    p.add_argument("--http-allow-host", metavar="NAME[,NAME]", help="more names the status page answers to in the "
                   "Host header (IP addresses, localhost and this machine's name always work; others get 403, "
                   "against DNS rebinding)")
    p.add_argument("--exam-gap-s", type=float, default=4.0,
                   help="an exam (one listen at one site: one verdict) ends after this many seconds without an "
                        "accepted window (default 4)")
    p.add_argument("--exam-max-s", type=float, default=60.0,
                   help="a live exam ends after this many seconds (default 60; a file is one exam whatever its length)")
    p.add_argument("--exam-min-s", type=float, default=8.0,
                   help="accepted audio (s) an exam needs for a verdict; less is 'too short' (default 8)")
    p.add_argument("--exam-keep", type=int, default=50,
                   help="exam summary pictures kept in OUTPUT/exams/ (newest; default 50, 0: none)")
    p.add_argument("--keep-audio", metavar="DIR",
                   help="keep the raw audio of every exam with a verdict here (WAV at the model's rate): the "
                        "recordings train_host/adapt.py adapts the model to this stethoscope with")
    p.add_argument("--keep-audio-max-mb", type=float, default=1024.0,
                   help="--keep-audio: total size kept, across restarts; the oldest go first (default 1024)")
    p.add_argument("--quiet", action="store_true", help="no per-window line on stdout")
    p.add_argument("--block", type=float, default=0.1, help="audio block (s) read per loop turn (default 0.1)")
    p.add_argument("--retry-initial", type=float, default=0.5, help="first retry delay (s) for a missing device")
    p.add_argument("--retry-max", type=float, default=30.0, help="longest retry delay (s) for a missing device")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--config", help="INI file with a [service] section (keys = flag names)")
    p.add_argument("--env-file", help="/etc/default-style file of STETHO_* variables")
    return p


# ------------------------------------------------------------------------------------------------
# One window through the pipeline


class Pipeline(object):
    """quality gate → render → tensor → backend → smoothing → decision → overlay, for one window at a time."""

    def __init__(self, model, backend, quality_config, smoother, threshold, overlay=True, overlay_size=DEFAULT_SIZE):
        self.model = model
        self.contract = model.contract
        self.classes = model.classes
        self.backend = backend
        self.quality_config = quality_config
        self.band = quality.contract_band(self.contract)
        self.smoother = smoother
        self.threshold = threshold
        self.overlay = overlay
        self.overlay_size = overlay_size
        self.axes = overlay_axes(self.contract) if overlay else None
        self.exam = None  # the overlay's exam caption (overlay.exam_lines), kept current by run()

    def process(self, window):
        """(result dict, spectrogram image uint8 R×R×3, overlay or None, spectrogram levels uint8 R×R) for one
        :class:`~deploy_jetson.sources.Window`; the overlay is an :class:`~deploy_jetson.overlay.OverlayFrame`,
        drawn by the sink that needs its pixels (off this path: OverlaySink's PNG thread)."""
        rate = float(self.contract.sample_rate)
        timing = {}
        # Render first, then the gate: both read the same samples, and the gate's many small passes are
        # cheaper once rendering has brought the window into the CPU cache (every window is rendered:
        # the overlay shows the spectrogram even when the gate says 'no signal').
        t0 = time.perf_counter()
        levels = render_segment_levels(window.samples, self.contract)
        image = colour(levels, self.contract.spectrogram)
        t1 = time.perf_counter()
        verdict = quality.assess(window.samples, self.contract.sample_rate, self.quality_config, self.band)
        t2 = time.perf_counter()
        probabilities = smoothed = None
        index = confidence = None
        if verdict.decision is None:
            tensor = self.backend.prepare(image, levels)
            t3 = time.perf_counter()
            probabilities = self.backend.infer(tensor)
            t4 = time.perf_counter()
            timing.update(tensor=t3 - t2, infer=t4 - t3)
            smoothed = self.smoother.update(probabilities)
            decision, index, confidence = decide(smoothed, self.classes, self.threshold)
            t4 = time.perf_counter()
        else:
            self.smoother.reset()  # never average a diagnosis across lost contact
            decision = verdict.decision
            t4 = time.perf_counter()
        overlay = None
        if self.overlay:
            if index is None:
                lines = [decision]  # 'no signal' / 'poor contact'
            elif decision == "uncertain":
                lines = ["uncertain", imagenet_text(confidence, self.classes[index])]
            else:
                lines = [imagenet_text(confidence, self.classes[index])]
            overlay = OverlayFrame(image, lines, smoothed, self.classes, index, self.axes, self.overlay_size,
                                   self.exam)
        t5 = time.perf_counter()
        timing.update(render=t1 - t0, quality=t2 - t1, overlay=t5 - t4)
        result = {
            "time": round(time.time(), 3),
            "stream": window.stream,
            "window": window.index,
            "start_s": round(window.start / rate, 4),
            "end_s": round(window.start / rate + self.contract.segmentation.window_s, 4),
            # where the audio the window holds ends (a padded short stream's, a peak-cut cycle's own end)
            "audio_end_s": round((window.start + (window.length or window.samples.size)) / rate, 4),
            "padded": bool(window.padded),
            "probabilities": _named(self.classes, probabilities),
            "smoothed": _named(self.classes, smoothed),
            "decision": decision,
            "class_index": index,
            "label": self.classes[index] if index is not None else None,
            "confidence": round(confidence, 6) if confidence is not None else None,
            "quality": verdict.quality,
            "quality_metrics": verdict.metrics,
            "latency_ms": round(1000.0 * (t5 - t0), 3),
            "timing_ms": dict((k, round(1000.0 * v, 3)) for k, v in timing.items()),
            "backend": self.backend.name,
        }
        return result, image, overlay, levels


def _named(classes, values):
    if values is None:
        return None
    if not isinstance(values, list):
        values = values.tolist()  # Python floats, as float() of each element gives
    return dict(zip(classes, values))


# ------------------------------------------------------------------------------------------------
# Wiring


def _make_folder(path, flag):
    """Create the folder ``path`` that ``flag`` names (with its parents) unless it exists; a clear error if not."""
    if not os.path.isdir(path):
        try:
            os.makedirs(path)
        except OSError as error:
            raise SettingsError("%s %s: cannot create the folder (%s)" % (flag, path, error.strerror or error))


def make_sinks(args, model, state):
    """The sinks the flags ask for; returns (sinks, overlay sink or None, paths for the summary)."""
    latest = args.latest or os.path.join(args.output, "latest.png")
    # every folder first, so a bad one is refused before any sink has opened a file or started a thread
    for folder, flag in ((args.output, "--output"), (os.path.dirname(os.path.abspath(latest)), "--latest"),
                         (args.archive, "--archive"), (args.save_images, "--save-images")):
        if folder:
            _make_folder(folder, flag)
    jsonl = os.path.join(args.output, "results.jsonl")
    health, limits = SinkHealth(state), disk_limits(args)  # a full disk is reported, never fatal
    sinks = [JsonlSink(jsonl, max_bytes=limits["results_max_bytes"], keep=limits["results_keep"], health=health)]
    overlay = OverlaySink(latest, state, health=health)  # after the --output lock: a second service stops above
    sinks.append(overlay)
    if not args.quiet:
        sinks.insert(0, ConsoleSink())
    if args.archive:
        decisions = ([d.strip() for d in args.archive_on.split(",") if d.strip()] if args.archive_on
                     else flagged_decisions(model.classes))
        sinks.append(WavArchiveSink(args.archive, model.contract.sample_rate, decisions, limits["archive_max_bytes"],
                                    limits["min_free_bytes"], health))
    if args.save_images:
        sinks.append(ImageSink(args.save_images, model.contract.palette, limits["min_free_bytes"], health))
    if args.video:
        sinks.append(VideoSink(args.video))
    return sinks, overlay, {"results": jsonl, "overlay": overlay.path, "archive": args.archive}


def start_http(spec, state, args=None, model=None):
    """Start the status page (issue 6's deploy_jetson/status_http.py) on HOST:PORT; returns the server.

    ``args``: the --http-token, --http-token-file and --http-allow-host settings; ``model``: its card's
    ``dataset.synthetic`` (true) makes the page show a banner.
    """
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingsError("--http %r: expected HOST:PORT (e.g. 127.0.0.1:8080)" % spec)
    try:
        from deploy_jetson.status_http import start_status_server
    except ImportError as error:
        if "status_http" not in str(error):
            raise
        raise SettingsError("--http needs deploy_jetson/status_http.py (the status page), which is not installed in "
                            "this checkout (%s)" % error)
    from deploy_jetson.status_http import load_token, parse_allowed_hosts
    try:
        token = load_token(getattr(args, "http_token", None), getattr(args, "http_token_file", None))
        allowed = parse_allowed_hosts(getattr(args, "http_allow_host", None))
    except ValueError as error:
        raise SettingsError(str(error))
    dataset = getattr(getattr(model, "card", None), "dataset", None)
    state.set_info(synthetic=isinstance(dataset, dict) and dataset.get("synthetic") is True)
    return start_status_server(host or "127.0.0.1", int(port), state, token=token, allowed_hosts=allowed)


def install_signal_handlers(stop, end_exam=None):
    """SIGTERM and SIGINT set ``stop``; SIGUSR1 sets ``end_exam`` (``systemctl kill -s USR1 stetho``: end the exam
    in progress now); the loop notices within one audio block."""
    def handler(signum, frame):
        if not stop.is_set():
            log.info("signal %d received: stopping", signum)
        stop.signalled = signum
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    if end_exam is not None:
        signal.signal(signal.SIGUSR1, lambda signum, frame: end_exam.set())


def status_line(state):
    snap = state.snapshot()
    last = snap["last"] or {}
    text = "%s %s; %d windows" % (snap["device_status"], snap["device"], snap["windows"])
    if last:
        text += "; last: %s (%s)" % (last.get("decision"), last.get("quality"))
    if snap["dropped_frames"]:
        text += "; %d frames dropped" % snap["dropped_frames"]
    exam = snap.get("exam")
    if exam:
        text += "; exam %d: %.1f of %.0f s" % (exam["exam"], exam["accepted_s"], exam["min_s"])
    elif snap.get("exams"):
        text += "; last exam: %s" % snap["exams"][0].get("verdict")
    return text


# ------------------------------------------------------------------------------------------------
# The loop


def describe_cut(seg):
    """How the live audio is cut, in words: '3.00 s windows every 1.50 s' or 'peak-to-peak cycles as 1.50 s'."""
    if seg.mode == "peaks":
        return "peak-to-peak cycles as %.2f s pieces, sought every %.2f s" % (seg.window_s, seg.hop_s)
    return "%.2f s windows every %.2f s" % (seg.window_s, seg.hop_s)


def run(source, windower, pipeline, sinks, overlay_sink, state, notifier, stop, max_windows=0, exams=None,
        end_exam=None):
    """Feed blocks through windowing and the pipeline to the sinks until the source ends or ``stop`` is set.

    ``exams``: a :class:`deploy_jetson.exam.ExamTracker` that groups the windows into exams (None: no exams);
    ``end_exam``: an Event (SIGUSR1) that ends the exam in progress.
    """
    blocks = source.blocks(stop)
    health = SinkHealth(state)
    received = {}  # stream → samples received: its stream time, which the exam gap is measured in
    rate = float(pipeline.contract.sample_rate)
    shown = None  # the last window's overlay
    try:
        for block in blocks:
            notifier.watchdog()
            notifier.status(status_line(state))
            if stop.is_set():
                break
            if block.stream is not None and block.stream != windower.stream:
                if exams is not None and windower.stream is not None:
                    exams.end_stream(windower.stream, "stream ended")  # a reconnected microphone: a new exam
                windower.reset(block.stream)  # a new recording or microphone session
                pipeline.smoother.reset()
            if block.end and windower.untouched():  # the whole stream in one block: cut as a recording is
                windows = windower.whole(block.samples)
            else:
                windows = windower.push(block.samples)
                if block.end:
                    windows += windower.finish()
            for window in windows:
                result, image, overlay, levels = pipeline.process(window)
                emit_all(sinks, health, result, window, image, overlay, levels)  # a failing sink is reported
                shown = overlay
                state.record(result, overlay_sink.last_png if overlay_sink is not None else None)
                if exams is not None:
                    exams.window(result, levels, window)
                notifier.watchdog()
                if stop.is_set() or (max_windows and state.windows >= max_windows):
                    stop.set()
                    return
            if exams is not None:
                if block.stream is not None and exams.live:
                    received[block.stream] = received.get(block.stream, 0) + len(block.samples)
                    exams.advance(block.stream, received[block.stream] / rate)
                if end_exam is not None and end_exam.is_set():
                    end_exam.clear()
                    if exams.end("requested") is None:
                        log.info("SIGUSR1: no exam in progress")
                if block.end and block.stream is not None:
                    exams.end_stream(block.stream, "stream ended" if exams.live else "end of file")
                    received.pop(block.stream, None)
                current = progress(exams.exam, exams.settings, exams.rule, exams.classes)
                state.set_exam(current)
                caption = exam_lines(current, state.exams[-1] if state.exams else None)
                if caption != pipeline.exam:  # the next window's overlay shows it; an exam's verdict shows at once
                    pipeline.exam = caption
                    if current is None and shown is not None and overlay_sink is not None:
                        overlay_sink.emit(None, overlay=shown.with_exam(caption))
                state.set_drift(exams.running_drift())
    finally:
        blocks.close()  # releases the audio device now, not at garbage collection


def main(argv=None):
    parser = build_parser()
    try:
        args = parse_settings(parser, argv)
        check_service_args(args)
        if not MIN_SIZE <= args.overlay_size <= MAX_SIZE:
            raise SettingsError("--overlay-size %d: must be %d..%d pixels (the overlay's height)"
                                % (args.overlay_size, MIN_SIZE, MAX_SIZE))
    except SettingsError as error:
        parser.exit(2, "%s: error: %s\n" % (parser.prog, error))  # one line, no usage
    if not args.model_dir:
        parser.error("--model-dir is required (or STETHO_MODEL_DIR, or model-dir in --config)")
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    end_exam = threading.Event()
    install_signal_handlers(stop, end_exam)
    notifier = Notifier()
    server = None
    sinks = []
    log.debug("heap: %s", retain_freed_memory())  # every window frees ~1 MB of arrays: reuse, don't page-fault
    try:
        model = load_model(args.model_dir)
        contract = model.contract
        state = ServiceState(model.name, model.classes)
        backend = load_backend(args.backend, model, args.threads)
        state.set_backend(backend.name, backend.reason)
        log.info("model %s: %d classes %s, contract %s (%d Hz, %s, %d×%d); backend %s",
                 model.onnx_path, len(model.classes), ",".join(model.classes), contract.name, contract.sample_rate,
                 describe_cut(contract.segmentation), contract.size, contract.size, backend.describe())
        source = open_source(args.source, contract, fast=args.fast, loop=args.loop, state=state, block_s=args.block,
                             retry_initial=args.retry_initial, retry_max=args.retry_max)
        sinks, overlay_sink, paths = make_sinks(args, model, state)
        if args.http:
            server = start_http(args.http, state, args, model)
        quality_config = quality.QualityConfig.from_contract(
            contract, enabled=not args.no_quality, silence_dbfs=args.quality_silence_dbfs,
            clip_fraction=args.quality_clip_fraction, handling_share=args.quality_handling_share,
            flatness=args.quality_flatness)
        log.debug("%r", quality_config)
        pipeline = Pipeline(model, backend, quality_config, Smoother(args.smoothing, args.smooth), args.threshold,
                            overlay_size=args.overlay_size)
        windower, note = make_segmenter(contract)
        if note:
            log.warning("%s", note)
        exams = make_exams(args, model, backend, state)
    except (StethoError, SourceError, SettingsError, BackendUnavailable, OSError) as error:
        log.error("%s", error)
        notifier.stopping("failed: %s" % error)
        for sink in sinks:
            sink.close()
        return 2
    notifier.ready("%s; backend %s; source %s" % (model.name, backend.name, source.description))
    started = time.monotonic()
    try:
        run(source, windower, pipeline, sinks, overlay_sink, state, notifier, stop, args.max_windows, exams, end_exam)
    except (StethoError, SourceError) as error:
        log.error("%s", error)
        return 1
    finally:
        exams.end("shutdown", interrupted=True)  # an exam still open is cut short: its line says so
        notifier.stopping("stopping after %d windows" % state.windows)
        for sink in sinks:
            sink.close()
        if server is not None:
            server.shutdown()
        backend.close()
        notifier.close()
    summary(state, source, paths, time.monotonic() - started)
    logging.shutdown()
    # 1 only when a file source produced nothing (every file unreadable); a requested stop is a success
    status = 0 if state.windows or getattr(stop, "signalled", None) or not args.source.startswith("file") else 1
    if getattr(source, "stuck", False):
        # an audio thread blocked in the driver would hang the interpreter's exit (PortAudio's atexit
        # terminate waits for it); everything is flushed and closed, so leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def make_exams(args, model, backend, state):
    """The exam tracker for this run: the model's decision rule, exams.jsonl and pictures in --output."""
    try:
        settings = ExamSettings(args.exam_gap_s, args.exam_max_s, args.exam_min_s)
    except ValueError as error:
        raise SettingsError(str(error))
    if args.exam_keep < 0:
        raise SettingsError("--exam-keep must be 0 or more, not %d" % args.exam_keep)
    rule = DecisionRule(model.card.decision, model.classes, os.path.join(model.model_dir, "model.json"))
    if args.keep_audio_max_mb is None or not args.keep_audio_max_mb > 0:
        raise SettingsError("--keep-audio-max-mb must be a positive number of megabytes")
    if args.keep_audio:
        _make_folder(args.keep_audio, "--keep-audio")
    outputs = ExamOutputs(args.output, args.exam_keep, model.contract.palette, rule, model.classes, state,
                          quiet=args.quiet, keep_audio=args.keep_audio, rate=model.contract.sample_rate,
                          keep_audio_max_bytes=int(args.keep_audio_max_mb * MB),
                          min_free_bytes=disk_limits(args)["min_free_bytes"])
    live = not args.source.startswith("file")
    log.info("exams: one verdict per %s, rule %s; at least %.0f s of accepted audio%s",
             "listen (ends after %.0f s without contact, at %.0f s)" % (settings.gap_s, settings.max_s) if live
             else "file", rule.describe(), settings.min_s, "" if rule.stored else
             " (model.json stores no operating point: argmax)")
    drift = reference_of(model.card)
    if drift is None:
        log.info("drift check: off (model.json stores no input statistics; re-export the model to add them)")
    return ExamTracker(settings, rule, model.classes, live, outputs,
                       context={"model": model.name, "model_sha256": model.card.onnx_sha256,
                                "backend": backend.name},
                       drift=drift, rate=model.contract.sample_rate,
                       keep_audio_s=settings.max_s * 10 if args.keep_audio else 0.0)


def peak_rss_mb():
    """This process's peak resident memory (MB): VmHWM (Linux), else getrusage's ru_maxrss."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (IOError, OSError, ValueError):
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summary(state, source, paths, elapsed):
    snap = state.snapshot()
    decisions = ", ".join("%s×%d" % (k, v) for k, v in sorted(state.decisions.items(), key=lambda kv: -kv[1]))
    mean_ms = state.latency_ms_sum / state.windows if state.windows else 0.0
    print("service: %d window(s) from %s in %.2f s; decisions: %s; mean latency %.1f ms; backend %s; peak RSS %.0f MB"
          % (snap["windows"], source.description, elapsed, decisions or "none", mean_ms, snap["backend"],
             peak_rss_mb()))
    print("service: results %s, latest overlay %s%s" % (paths["results"], paths["overlay"],
                                                         ", archive %s" % paths["archive"] if paths["archive"] else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

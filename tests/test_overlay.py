"""The overlay: imagenet.py's text in the embedded bitmap font; the network's image, exactly, enlarged beside its
time and frequency axes; the decision, one bar per class and the exam beside it, never over it."""
import os

import numpy as np
import pytest

from deploy_jetson.overlay import (DEFAULT_SIZE, GLYPH_H, GLYPH_W, GLYPHS, MUTED, TEXT, OverlayFrame, as_image,
                                   draw_overlay, draw_text, exam_lines, image_box, imagenet_text, overlay_axes,
                                   text_mask)
from stetho import preset


def test_imagenet_text_is_imagenet_py_format():
    assert imagenet_text(0.9731, "normal") == "97.31% normal"
    assert imagenet_text(0.05, "MR") == "05.00% MR"


def test_font_covers_printable_ascii_with_distinct_glyphs():
    assert GLYPHS.shape == (95, GLYPH_H, GLYPH_W)
    assert not GLYPHS[0].any()                                   # space
    shapes = set(GLYPHS[i].tobytes() for i in range(1, 95))
    assert len(shapes) == 94                                     # every visible character differs
    one = text_mask("1")
    assert one[:, 2].sum() == 7 and one[7].sum() == 0            # '1': a full-height stem, no descender
    assert text_mask("g")[7].any()                               # 'g' has a descender
    assert text_mask("%ab", scale=3).shape == (GLYPH_H * 3, 3 * (GLYPH_W + 1) * 3)
    np.testing.assert_array_equal(text_mask("\u00e9"), text_mask("?"))  # outside ASCII: '?'


def test_text_lands_top_left_in_white_on_a_dark_box():
    canvas = np.full((40, 100, 3), 200, np.uint8)
    height = draw_text(canvas, "97.31% normal", 5, 5)
    assert height == GLYPH_H + 2
    box = canvas[5:5 + height, 5:5 + 13 * (GLYPH_W + 1) + 2]
    assert (box == 255).all(axis=2).sum() == text_mask("97.31% normal").sum()  # every lit font pixel, white
    assert (canvas[0:5] == 200).all() and (canvas[:, 95:] == 200).all()         # nothing outside the box


def test_latest_png_is_written_off_the_loop_and_ends_with_the_newest_overlay(tmp_path):
    from stetho.png import read_png
    from deploy_jetson.sinks import OverlaySink
    sink = OverlaySink(str(tmp_path / "latest.png"))
    frames = [np.full((64, 64, 3), value, np.uint8) for value in range(40)]
    for frame in frames:  # faster than PNGs can be written: stale ones are skipped, never queued
        sink.emit({}, overlay=frame)
    sink.flush()
    assert (read_png(str(tmp_path / "latest.png")) == 39).all() and 1 <= sink.written <= 40
    sink.emit({}, overlay=frames[5])
    sink.close()  # close writes what is pending
    assert (read_png(str(tmp_path / "latest.png")) == 5).all() and sink.last_png is not None
    assert not (tmp_path / "latest.png.part").exists()


def test_latest_png_hand_over_loses_no_newest_overlay_under_any_interleaving(tmp_path):
    """emit() from the loop races the writer thread: whatever the timing, flush() returns once the newest
    overlay is on disk (well before its timeout), and the file then holds exactly that overlay."""
    import random
    import time
    from stetho.png import read_png
    from deploy_jetson.sinks import OverlaySink
    sink = OverlaySink(str(tmp_path / "latest.png"))
    rng = random.Random(0)
    frames = [np.full((16, 16, 3), value, np.uint8) for value in range(256)]
    for value in range(300):
        sink.emit({}, overlay=frames[value % 256])
        if rng.random() < 0.3:
            time.sleep(rng.choice([0.0, 1e-5, 1e-4, 1e-3]))
        if rng.random() < 0.1:
            started = time.monotonic()
            sink.flush(timeout=5.0)
            assert time.monotonic() - started < 2.0
            assert (read_png(str(tmp_path / "latest.png")) == value % 256).all()
    sink.close()
    assert (read_png(str(tmp_path / "latest.png")) == 299 % 256).all()
    assert 1 <= sink.written <= 300


@pytest.mark.parametrize("color, alpha", [((40, 40, 40), 180 / 255.0), ((255, 255, 255), 0.5), ((0, 7, 250), 0.1)])
def test_blending_through_the_table_is_the_float32_arithmetic(color, alpha):
    from deploy_jetson.overlay import _blend_box, blend_table
    values = np.arange(256, dtype=np.float32)
    for channel in range(3):
        expected = np.round(values * (1.0 - alpha) + np.float32(color[channel]) * alpha).astype(np.uint8)
        assert np.array_equal(blend_table(color, alpha)[channel], expected)
    canvas = np.random.RandomState(0).randint(0, 256, size=(40, 50, 3)).astype(np.uint8)
    expected = canvas.copy()
    region = expected[5:30, 10:45].astype(np.float32) * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
    expected[5:30, 10:45] = np.round(region).astype(np.uint8)
    _blend_box(canvas, 5, 10, 25, 35, color, alpha)
    assert np.array_equal(canvas, expected)



# ---- the display overlay ---------------------------------------------------------------------------------------

HEART3 = ["extra", "murmur", "normal"]


def _noise(size, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(size, size, 3)).astype(np.uint8)


def find_text(canvas, text, scale, colour):
    """Top-left corners (y, x) where ``text`` is drawn in ``colour`` at ``scale``: its lit pixels exactly, its
    cell's other pixels any other colour."""
    mask = text_mask(text, scale)
    lit = (canvas == np.array(colour, np.uint8)).all(axis=2)
    fy, fx = np.argwhere(mask)[0]
    h, w = mask.shape
    hits = []
    for y, x in np.argwhere(lit):
        top, left = y - fy, x - fx
        if 0 <= top and 0 <= left and top + h <= lit.shape[0] and left + w <= lit.shape[1] \
                and np.array_equal(lit[top:top + h, left:left + w], mask):
            hits.append((int(top), int(left)))
    return hits


def _locate(canvas, image):
    """(y0, x0, k) of ``image`` in ``canvas``, found from the canvas alone: its top-left pixel is given a colour
    no other pixel of the image or the overlay's design has, so where that colour lies is where the image is."""
    ys, xs = np.nonzero((canvas == image[0, 0]).all(axis=2))
    k = int(np.sqrt(len(ys)))
    assert len(ys) == k * k and ys.max() - ys.min() == k - 1 and xs.max() - xs.min() == k - 1
    return int(ys.min()), int(xs.min()), k


@pytest.mark.parametrize("size", [32, 64, 128, 224])
def test_the_spectrogram_region_is_the_network_image_enlarged_exactly(size):
    image = _noise(size)
    image[0, 0] = (1, 2, 3)                       # a colour of the image alone (noise: every other pixel differs
    image[(image == (1, 2, 3)).all(axis=2)] = 0   # from it once its accidental twins are cleared)
    image[0, 0] = (1, 2, 3)
    axes = overlay_axes(preset("heart", size=size))
    out = draw_overlay(image, ["uncertain", "41.00% murmur"], [0.3, 0.41, 0.29], HEART3, 1, axes,
                       exam=["exam 2: 4.5 of 8 s", "so far: murmur"])
    assert out.shape[0] == DEFAULT_SIZE >= 384 and out.dtype == np.uint8
    y0, x0, k = _locate(out, image)
    assert (y0, x0, k) == image_box(image.shape, axes=axes, classes=HEART3, n_lines=2)
    np.testing.assert_array_equal(out[y0:y0 + k * size, x0:x0 + k * size],
                                  np.repeat(np.repeat(image, k, axis=0), k, axis=1))
    assert k == {32: 9, 64: 4, 128: 2, 224: 1}[size]  # the largest whole factor that fits the axes in 384 px
    assert k * size >= 224  # a person reads it at arm's length: never smaller than the largest network image


def test_overlay_size_sets_the_height_and_a_larger_image_is_never_shrunk():
    axes = overlay_axes(preset("heart", size=128))
    for size, k in ((384, 2), (512, 3), (768, 4)):
        out = draw_overlay(_noise(128), ["x"], None, HEART3, None, axes, size=size)
        assert out.shape[0] == size and image_box((128, 128), size, axes, HEART3)[2] == k
    big = draw_overlay(_noise(224), ["x"], None, HEART3, None, overlay_axes(preset("heart", size=224)), size=128)
    assert big.shape[0] > 224 and image_box((224, 224), 128, overlay_axes(preset("heart", size=224)), HEART3)[2] == 1
    with pytest.raises(ValueError):
        draw_overlay(np.zeros((8, 8), np.uint8), ["x"])


@pytest.mark.parametrize("size, classes", [(32, ["abnormal", "normal"]), (64, HEART3), (128, HEART3),
                                           (224, ["AS", "MR", "MS", "MVP", "N"])])
def test_text_bars_and_exam_lie_right_of_the_spectrogram_never_over_it(size, classes):
    axes = overlay_axes(preset("heart", size=size))
    image = _noise(size, 1)
    p = np.linspace(1, 2, len(classes))
    p /= p.sum()
    full = draw_overlay(image, ["uncertain", imagenet_text(p[-1], classes[-1])], p, classes, len(classes) - 1,
                        axes, exam=["exam 12: 7.5 of 8 s", "so far: %s" % classes[-1]])
    bare = draw_overlay(image, [], axes=axes)  # no text, no bars: the image and its axes only
    y0, x0, k = image_box(image.shape, axes=axes, classes=classes, n_lines=2)
    right = x0 + k * size
    np.testing.assert_array_equal(full[:, :right], bare[:, :right])  # nothing of it left of the image's right edge
    axis = np.flatnonzero((bare[:, right:] != bare[0, -1]).any(axis=(0, 2)))  # the last time label's right half
    padded = np.empty_like(full)
    padded[...] = full[0, -1]
    padded[:, :bare.shape[1]] = bare
    column = np.flatnonzero((full != padded).any(axis=(0, 2)))  # the text, the bars and the exam caption
    assert column.size and column.min() >= right + axis.max() + 4  # beside the image and its axis, with a gap
    for name in classes:
        hits = find_text(full, name, 2, MUTED) + find_text(full, name, 2, TEXT)
        assert [x for _, x in hits] and min(x for _, x in hits) > right  # each class named in the bars panel


def test_the_decided_bar_is_drawn_to_scale():
    axes = overlay_axes(preset("heart", size=64))

    def bar_pixels(p):
        out = draw_overlay(_noise(64), ["x"], p, HEART3, 1, axes)
        from deploy_jetson.overlay import ABNORMAL_BAR
        return int((out == np.array(ABNORMAL_BAR, np.uint8)).all(axis=2).sum(axis=1).max())
    full, half = bar_pixels([0.0, 1.0, 0.0]), bar_pixels([0.5, 0.5, 0.0])
    assert full > 60 and abs(full - 2 * half) <= 1


def _label_centre_y(canvas, label, scale, x_limit):
    hits = [(y, x) for y, x in find_text(canvas, label, scale, MUTED) if x + len(label) * 6 * scale <= x_limit]
    assert len(hits) == 1, (label, hits)
    return hits[0][0] + 7 * scale / 2.0  # a digit's 7 rows


@pytest.mark.parametrize("name, size, tone_hz, label", [("heart", 128, 600.0, "600"), ("heart", 64, 200.0, "200"),
                                                         ("lung", 64, 500.0, "500"), ("cough", 64, 2000.0, "2000")])
def test_a_tone_lies_at_its_frequency_label(name, size, tone_hz, label):
    """A pure tone rendered through the contract lights one row: the axis label of its frequency (linear or mel
    rows) stands beside that row; 'Hz' above the labels."""
    from stetho.contract import render_segment_levels
    from stetho.spectrogram import colour
    contract = preset(name, size=size)
    t = np.arange(contract.segment_samples) / float(contract.sample_rate)
    levels = render_segment_levels(0.5 * np.sin(2 * np.pi * tone_hz * t), contract)
    row = int(np.argmax(levels.astype(np.float64).mean(axis=1)))
    axes = overlay_axes(contract)
    out = draw_overlay(colour(levels, contract.spectrogram), ["x"], axes=axes)
    y0, x0, k = image_box(levels.shape, axes=axes)
    s = DEFAULT_SIZE // 192
    assert abs(_label_centre_y(out, label, s, x0) - (y0 + k * row + k / 2.0)) <= k + s
    (hz_y, hz_x), = find_text(out, "Hz", s, MUTED)
    assert hz_x < x0 and hz_y + GLYPH_H * s <= y0


@pytest.mark.parametrize("name, size, click_s, label", [("heart", 128, 1.0, "1"), ("heart", 224, 2.0, "2"),
                                                         ("lung", 64, 4.0, "4")])
def test_a_click_lies_above_its_time_label(name, size, click_s, label):
    """A click lights one column: the time label of its second stands under it; 'time (s)' under the labels."""
    from stetho.contract import render_segment_levels
    from stetho.spectrogram import colour
    contract = preset(name, size=size)
    samples = np.zeros(contract.segment_samples)
    samples[int(click_s * contract.sample_rate)] = 0.9
    levels = render_segment_levels(samples, contract)
    column = int(np.argmax(levels.astype(np.float64).mean(axis=0)))
    axes = overlay_axes(contract)
    out = draw_overlay(colour(levels, contract.spectrogram), ["x"], axes=axes)
    y0, x0, k = image_box(levels.shape, axes=axes)
    s = DEFAULT_SIZE // 192
    hits = [(y, x) for y, x in find_text(out, label, s, MUTED) if y > y0 + k * size]
    assert len(hits) == 1
    centre = hits[0][1] + (len(label) * 6 - 1) * s / 2.0
    assert abs(centre - (x0 + k * column + k / 2.0)) <= k + s
    (title_y, title_x), = find_text(out, "time (s)", s, MUTED)
    assert title_y > hits[0][0] and x0 < title_x < x0 + k * size


def test_a_montage_gets_a_time_axis_per_window():
    """classify.py shows the recording's windows side by side: each R-wide tile has its own 0..window_s."""
    axes = overlay_axes(preset("heart", size=32))
    out = draw_overlay(np.concatenate([_noise(32, 1), _noise(32, 2), _noise(32, 3)], axis=1), ["x"], axes=axes)
    y0, x0, k = image_box((32, 96), axes=axes)
    below = out[y0 + k * 32:]
    s = DEFAULT_SIZE // 192
    assert len(find_text(below, "0", s, MUTED)) == 3 and len(find_text(below, "3", s, MUTED)) == 1
    assert out.shape[0] == DEFAULT_SIZE and k * 96 <= 3 * DEFAULT_SIZE


def test_the_exam_caption_and_the_imagenet_lines_are_written_large_enough_to_read():
    axes = overlay_axes(preset("heart", size=128))
    out = draw_overlay(_noise(128), ["97.31% normal"], [0.01, 0.0169, 0.9731], HEART3, 2, axes,
                       exam=exam_lines(None, {"exam": 4, "verdict": "murmur"}))
    assert len(find_text(out, "97.31% normal", 3, TEXT)) == 1  # 21 px capitals at the default size
    assert len(find_text(out, "exam 4 verdict:", 2, MUTED)) == 1 and len(find_text(out, "murmur", 2, TEXT)) == 1
    assert exam_lines({"exam": 2, "accepted_s": 4.5, "min_s": 8.0, "provisional": {"label": "N"}}) == \
        ["exam 2: 4.5 of 8 s", "so far: N"]
    assert exam_lines(None, None) == []


def test_an_overlay_frame_is_drawn_where_the_pixels_are_needed(tmp_path):
    """The window's path hands over an OverlayFrame (no drawing); the PNG thread draws it: the same pixels."""
    from stetho.png import read_png
    from deploy_jetson.sinks import OverlaySink
    axes = overlay_axes(preset("heart", size=64))
    args = (_noise(64), ["70.00% murmur"], [0.25, 0.7, 0.05], HEART3, 1, axes, 384, ["exam 1: 3.0 of 8 s"])
    frame = OverlayFrame(*args)
    sink = OverlaySink(str(tmp_path / "latest.png"))
    sink.emit({}, overlay=frame)
    sink.close()
    expected = draw_overlay(*args)
    np.testing.assert_array_equal(read_png(str(tmp_path / "latest.png")), expected)
    assert as_image(frame) is frame.draw() and as_image(expected) is expected
    other = frame.with_exam(["exam 1 verdict:", "murmur"]).draw()
    assert other.shape == expected.shape and not np.array_equal(other, expected)


def _gradient(size):
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 7 + y) % 256, (y * 3) % 256, (x * y) % 256], axis=2).astype(np.uint8)


@pytest.mark.parametrize("size, classes, probabilities, highlight, lines, digest", [
    (64, ["extra", "murmur", "normal"], [0.25, 0.7, 0.05], 1, ["70.00% murmur"],
     "7439b09e55452b67e4cf805f8e3ed02d6c9bf4d1cda4479928682272919a4c36"),
    (128, ["AS", "MR", "MS", "MVP", "N"], [0.1, 0.2, 0.3, 0.15, 0.25], 2, ["uncertain", "30.00% MS"],
     "3ac66e97508f3a5ad91cb129cd84f6d323906e82e2cbc9f3f11f4885db7c4eb9"),
    (224, ["abnormal", "normal"], [0.0, 1.0], 1, ["100.00% normal"],
     "b7a00aebb52b106e41401354a567e32a36b7adb5ffc5e3d0f84522c0ec9baff8"),
    (128, ["abnormal", "normal"], None, None, ["no signal"],
     "53d13008a2431385fa38d35d208aa660e8a30aec62d2592ee8dd32878414b4c4"),
])
def test_overlay_bytes_are_pinned(size, classes, probabilities, highlight, lines, digest):
    """Golden overlays (looked at when pinned): a faster drawing must give the very same pixels, including when
    drawn twice (the layout's static parts then come from the cache)."""
    import hashlib
    axes = overlay_axes(preset("heart", size=size))
    for _ in range(2):
        out = draw_overlay(_gradient(size), lines, probabilities, classes, highlight, axes,
                           exam=["exam 1: 4.5 of 8 s"])
        assert hashlib.sha256(out.tobytes()).hexdigest() == digest


# ---- the service's latest.png ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from test_service_support import make_model
    return make_model(tmp_path_factory.mktemp("overlay") / "tiny")


def test_the_service_writes_the_display_overlay_of_its_last_window(tiny_model, tmp_path):
    """latest.png: --overlay-size high, the last window's image (as --save-images wrote it) enlarged exactly, and,
    once the file's exam has ended, its verdict."""
    from stetho import synth, write_wav
    from stetho.png import read_png
    from deploy_jetson.backends import load_model
    from test_service_support import read_jsonl, run_service
    wav = tmp_path / "rec.wav"
    write_wav(str(wav), synth.heart_sound("murmur", duration_s=10.0, rate=2000, seed=3), 2000)
    run = run_service("--model-dir", tiny_model, "--source", "file:%s" % wav, "--fast", "--quiet", "--output",
                      tmp_path / "out", "--save-images", tmp_path / "images", "--overlay-size", "448")
    assert run.returncode == 0, run.stderr
    latest = read_png(str(tmp_path / "out" / "latest.png"))
    last = read_png(str(tmp_path / "images" / sorted(os.listdir(str(tmp_path / "images")))[-1]))
    model = load_model(str(tiny_model))
    y0, x0, k = image_box(last.shape, 448, overlay_axes(model.contract), model.classes, 2)
    assert latest.shape[0] == 448 and k == 11
    np.testing.assert_array_equal(latest[y0:y0 + 32 * k, x0:x0 + 32 * k], np.repeat(np.repeat(last, k, 0), k, 1))
    verdict = read_jsonl(tmp_path / "out" / "exams.jsonl")[-1]["verdict"]
    assert find_text(latest, "exam 1 verdict:", 448 // 192, MUTED) and find_text(latest, verdict, 448 // 192, TEXT)


@pytest.mark.parametrize("value", ["64", "5000", "big"])
def test_the_service_refuses_an_overlay_size_it_cannot_draw_in_one_line(tiny_model, tmp_path, value):
    from test_service_support import run_service
    run = run_service("--model-dir", tiny_model, "--source", "file:/nonexistent.wav", "--output", tmp_path,
                      "--overlay-size", value)
    assert run.returncode == 2 and "--overlay-size" in run.stderr and "Traceback" not in run.stderr


def test_the_video_output_gets_the_drawn_overlay():
    """--video (jetson_utils, absent here): VideoSink renders the frame's pixels, as cudaFromNumpy takes them."""
    from deploy_jetson.sinks import VideoSink

    class Utils(object):
        rendered = []

        @staticmethod
        def cudaFromNumpy(array):  # the real one takes a C-contiguous uint8 H×W×C numpy array, nothing else
            if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3
                    and array.flags["C_CONTIGUOUS"]):
                raise TypeError("cudaFromNumpy needs a C-contiguous uint8 H×W×C array, not %r" % type(array))
            return array.copy()

        class videoOutput(object):
            def __init__(self, uri):
                self.uri = uri

            def Render(self, image):
                Utils.rendered.append(image)

    frame = OverlayFrame(_noise(64), ["70.00% murmur"], [0.25, 0.7, 0.05], HEART3, 1,
                         overlay_axes(preset("heart", size=64)))
    sink = VideoSink("display://0", utils=Utils)
    sink.emit({"decision": "murmur", "latency_ms": 12.0}, overlay=frame)
    np.testing.assert_array_equal(Utils.rendered[-1], frame.draw())


def test_an_overlay_that_cannot_be_drawn_is_reported_and_the_next_one_written(tmp_path):
    """Drawing now happens on the PNG thread: a failure there is reported (status page, log) and the thread lives
    on to write the next window's overlay."""
    from stetho.png import read_png
    from deploy_jetson.disk import SinkHealth
    from deploy_jetson.sinks import OverlaySink
    health = SinkHealth()
    sink = OverlaySink(str(tmp_path / "latest.png"), health=health)
    sink.emit({}, overlay=OverlayFrame(np.zeros((8, 8), np.uint8), ["x"]))  # not H×W×3: draw_overlay refuses it
    sink.flush()
    status, message = health.status("latest.png")
    assert status == "error" and "cannot draw the overlay" in message and "H×W×3" in message
    good = OverlayFrame(_noise(32), ["x"])
    sink.emit({}, overlay=good)
    sink.close()
    np.testing.assert_array_equal(read_png(str(tmp_path / "latest.png")), good.draw())
    assert health.status("latest.png")[0] == "ok"

"""The overlay: imagenet.py's text drawn with the embedded bitmap font, probability bars, and the enlargement."""
import numpy as np
import pytest

from deploy_jetson.overlay import (GLYPH_H, GLYPH_W, GLYPHS, display_scale, draw_overlay, draw_text,
                                   imagenet_text, text_mask)


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


def test_overlay_enlarges_small_images_and_draws_one_bar_per_class():
    image = np.zeros((32, 32, 3), np.uint8)
    out = draw_overlay(image, [imagenet_text(0.75, "murmur")], [0.25, 0.75, 0.0], ["extra", "murmur", "normal"], 1)
    assert display_scale(32) == 4 and out.shape == (128, 128, 3) and image.max() == 0  # input untouched
    assert display_scale(224) == 1 and draw_overlay(np.zeros((224, 224, 3), np.uint8), ["x"]).shape[0] == 224
    assert (out[:20] == 255).all(axis=2).any()                   # the text line at the top

    def longest_white_run(img):
        white = (img[80:] == 255).all(axis=2).astype(np.int8)    # the bar panel at the bottom
        best = 0
        for row in white:
            edges = np.flatnonzero(np.diff(np.r_[0, row, 0]))
            best = max([best] + list(edges[1::2] - edges[::2]))
        return best
    full = draw_overlay(image, ["x"], [0.0, 1.0, 0.0], ["extra", "murmur", "normal"], 1)
    half = draw_overlay(image, ["x"], [0.5, 0.5, 0.0], ["extra", "murmur", "normal"], 1)
    assert longest_white_run(full) == 2 * longest_white_run(half) > 10  # the decided class's bar, to scale
    with pytest.raises(ValueError):
        draw_overlay(np.zeros((8, 8), np.uint8), ["x"])


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


def _gradient(size):
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 7 + y) % 256, (y * 3) % 256, (x * y) % 256], axis=2).astype(np.uint8)


@pytest.mark.parametrize("size, classes, probabilities, highlight, lines, digest", [
    (64, ["extra", "murmur", "normal"], [0.25, 0.7, 0.05], 1, ["70.00% murmur"],
     "db82611978d10ed7abba73cf108be7210c7f22348d2a50dd857307d6202816a3"),
    (128, ["AS", "MR", "MS", "MVP", "N"], [0.1, 0.2, 0.3, 0.15, 0.25], 2, ["uncertain", "30.00% MS"],
     "5c166086932b44585ce525874d9ae7f573996cc44ddb37136f76daf394b08ba0"),
    (224, ["abnormal", "normal"], [0.0, 1.0], 1, ["100.00% normal"],
     "5a25304ce1553a9b31218279e4c9ce219b59aa0984ce845a13815714e48095f1"),
    (128, ["abnormal", "normal"], None, None, ["no signal"],
     "16cc6f431871e35a634d4985e6d64ad7f5fcdadb5b6965a8107d5d900495839b"),
])
def test_overlay_bytes_are_pinned(size, classes, probabilities, highlight, lines, digest):
    """Golden overlays (hashes taken before the bars panel drew its fixed parts from a cached ink layer):
    a faster drawing must give the very same pixels, including when drawn twice (cache hit)."""
    import hashlib
    for _ in range(2):
        out = draw_overlay(_gradient(size), lines, probabilities, classes, highlight)
        assert hashlib.sha256(out.tobytes()).hexdigest() == digest

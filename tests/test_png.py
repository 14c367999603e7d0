"""stetho.png: RGB and indexed-colour PNGs that PIL, and so imagenet.py's loader, read as the same pixels."""
import io

import numpy as np
import pytest
from PIL import Image

from stetho import preset, render_segment, synth
from stetho.colormaps import lookup_table
from stetho.contract import render_segment_levels
from stetho.png import encode_png, read_png, write_png


def test_an_indexed_spectrogram_png_holds_the_rgb_image_for_every_reader(tmp_path):
    contract = preset("heart")
    samples = synth.heart_sound("murmur", bpm=70, duration_s=3.0, rate=contract.sample_rate, seed=4)
    levels, rgb = render_segment_levels(samples, contract), render_segment(samples, contract)
    assert levels.shape == (224, 224) and levels.dtype == np.uint8
    assert np.array_equal(contract.palette[levels], rgb)
    indexed, plain = encode_png(levels, palette=contract.palette), encode_png(rgb)
    assert len(indexed) < 0.7 * len(plain)  # 40 KB against 66 KB here
    with Image.open(io.BytesIO(indexed)) as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.convert("RGB")), rgb)
    write_png(str(tmp_path / "a.png"), levels, palette=contract.palette)
    assert np.array_equal(read_png(str(tmp_path / "a.png")), rgb)


def test_rgb_and_gray_round_trip():
    rgb = np.random.RandomState(0).randint(0, 256, (7, 5, 3)).astype(np.uint8)
    with Image.open(io.BytesIO(encode_png(rgb))) as image:
        assert image.mode == "RGB" and np.array_equal(np.array(image), rgb)
    gray = rgb[:, :, 0]
    with Image.open(io.BytesIO(encode_png(gray))) as image:
        assert image.mode == "L" and np.array_equal(np.array(image), gray)


@pytest.mark.parametrize("image, palette, message", [
    (np.zeros((4, 4, 3), np.uint8), lookup_table("gray"), "needs uint8 H×W indices"),
    (np.zeros((4, 4), np.uint8), np.zeros((300, 3), np.uint8), "N ≤ 256"),
    (np.full((4, 4), 9, np.uint8), np.zeros((8, 3), np.uint8), "index 9 is outside the 8-colour palette"),
    (np.zeros((4, 4), np.float32), lookup_table("gray"), "needs uint8 H×W indices"),
])
def test_bad_indexed_input_is_refused_clearly(image, palette, message):
    with pytest.raises(ValueError, match=message):
        encode_png(image, palette=palette)


def _png(width, height, rows, color_type=0):
    """A PNG declaring width×height whose image data holds ``rows`` bytes of (filter 0) rows."""
    import struct
    import zlib
    from stetho.png import _chunk, _SIGNATURE
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 9))
            + _chunk(b"IEND", b""))


def test_a_png_declaring_20000_by_20000_is_refused_before_it_is_decoded(tmp_path):
    """Issue 28: a 1.1 MB PNG declaring 20000×20000 decoded to 3.7 GB. Now: a clear error, nothing allocated."""
    import tracemalloc
    from stetho.png import PngError
    path = tmp_path / "huge.png"
    path.write_bytes(_png(20000, 20000, b"\x00" * (20001 * 20000 // 4)))  # a quarter of the rows: ~100 MB raw
    assert path.stat().st_size < 1200000
    tracemalloc.start()
    try:
        with pytest.raises(PngError) as caught:
            read_png(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(caught.value) and "20000×20000" in str(caught.value), caught.value
    assert peak < 8 * 2 ** 20, peak  # the file itself, not its pixels


def test_image_data_that_inflates_past_its_header_is_not_inflated(tmp_path):
    """A zlib stream far longer than the declared 16×16 image is decompressed only as far as the image needs."""
    import tracemalloc
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(16, 16, b"\x00" * (200 * 2 ** 20)))  # 200 MB of zeros in ~200 kB
    tracemalloc.start()
    try:
        image = read_png(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (16, 16, 3) and not image.any()
    assert peak < 8 * 2 ** 20, peak


@pytest.mark.parametrize("blob, message", [
    (lambda: _png(0, 5, b""), "empty image"),
    (lambda: _png(5000, 5000, b""), "5000×5000 pixels"),
])
def test_bad_png_headers_are_refused_by_name(tmp_path, blob, message):
    from stetho.png import PngError
    path = tmp_path / "bad.png"
    path.write_bytes(blob())
    with pytest.raises(PngError, match=message) as caught:
        read_png(str(path))
    assert str(path) in str(caught.value)

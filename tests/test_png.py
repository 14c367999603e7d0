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

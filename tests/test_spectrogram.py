"""The spectrogram contract: shapes, silence, NaN, orientation, encodings, and golden image hashes."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from stetho import AudioError, load_audio, preset, render, render_segment, resample, segments, write_wav
from stetho.audio_io import WAV_SUBTYPES
from stetho.colormaps import lookup_table
from stetho.contract import PRESETS, Contract, frame_hop
from stetho.png import read_png
from stetho.spectrogram import SpectrogramConfig, resize

# Golden hashes: sha256 of the concatenated uint8 pixels of every window image of a recording, heart preset,
# R=224. They change only when the contract changes on purpose, and must then be updated with the reason.
GOLDEN = {  # the preset as it is: hop 26 samples at R=224 (frame_hop: one frame per column)
    "tests/data/golden_heart_murmur.wav": (2, "360e7d6a4dcbab1ad828c40eeedf1cc8d7825b71b51ba1872b5831912780f5ec"),
    "yaseen2018/N_New/New_N_001.wav": (1, "9f59ac64dc4a21bb0d1f0818d7a0c798264e7be92ee0f72b9bffa82b197af32d"),
    "yaseen2018/AS_New/New_AS_001.wav": (1, "2b853301b62fd5a6fa659def50ac206336be9b90d900d1a5678bfbba64dc0972"),
}
# The same recordings with the 10 ms hop (20 samples) that every preset used before frame_hop: models made then
# carry hop_length 20 in their model.json, and must keep getting the very images they were trained on.
GOLDEN_10MS_HOP = {
    "tests/data/golden_heart_murmur.wav": (2, "97a92dbc237ea55911cae84c27007bd626067c55ec88928a8a4ac025242d5ae4"),
    "yaseen2018/N_New/New_N_001.wav": (1, "1725b7bee669212a7eaf0863a80163b91045a7a15c45e5f16305c7948587202e"),
    "yaseen2018/AS_New/New_AS_001.wav": (1, "ad40e8064ffa14bedb5dc32fddc21c225ad1f31fe08f21bac6f556025c3a24dc"),
}


def _heart_10ms_hop():
    contract = preset("heart")
    return contract.replace(spectrogram=contract.spectrogram.replace(hop_length=20))


def _hash_recording(path, contract):
    samples, rate = load_audio(path)
    pieces = segments(resample(samples, rate, contract.sample_rate), contract)
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(render_segment(piece.samples, contract).tobytes())
    return len(pieces), digest.hexdigest()


def test_golden_synthetic_wav(repo):
    name = "tests/data/golden_heart_murmur.wav"
    assert _hash_recording(repo / name, preset("heart")) == GOLDEN[name]
    assert _hash_recording(repo / name, _heart_10ms_hop()) == GOLDEN_10MS_HOP[name]


@pytest.mark.parametrize("name", ["yaseen2018/N_New/New_N_001.wav", "yaseen2018/AS_New/New_AS_001.wav"])
def test_golden_real_yaseen_wav(shared_data, name):
    assert _hash_recording(shared_data / name, preset("heart")) == GOLDEN[name]
    assert _hash_recording(shared_data / name, _heart_10ms_hop()) == GOLDEN_10MS_HOP[name]


def test_golden_through_the_device_render_cli(repo, tmp_path):
    """The device-side tool (deploy_jetson/render.py, PNG on disk) gives the same pixels."""
    name = "tests/data/golden_heart_murmur.wav"
    subprocess.run([sys.executable, str(repo / "deploy_jetson" / "render.py"), "--preset", "heart",
                    str(repo / name), str(tmp_path)], check=True, stdout=subprocess.PIPE)
    pngs = sorted(tmp_path.glob("*.png"))
    digest = hashlib.sha256()
    for png in pngs:
        digest.update(read_png(png).tobytes())
    assert (len(pngs), digest.hexdigest()) == GOLDEN[name]
    assert [p.name for p in pngs] == ["golden_heart_murmur__0000.png", "golden_heart_murmur__0001.png"]


SMALL = SpectrogramConfig(sample_rate=2000, n_fft=64, hop_length=16, size=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 4000), elements=st.floats(-1e6, 1e6)))
def test_any_finite_input_gives_an_r_by_r_uint8_image(x):
    image = render(x, SMALL)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), arrays(np.float32, st.integers(1, 3000), elements=st.floats(-1, 1, width=32)))
def test_any_recording_gives_fixed_size_segments_and_images(name, x):
    contract = preset(name, size=32)
    pieces = segments(x, contract) if contract.segmentation.mode != "peaks" else []
    for piece in pieces:
        assert piece.samples.size == contract.segment_samples
        assert render_segment(piece.samples, contract).shape == (32, 32, 3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_silence_gives_the_floor_colour(name):
    contract = preset(name, size=48)
    image = render_segment(np.zeros(contract.segment_samples, dtype=np.float32), contract)
    floor = lookup_table(contract.spectrogram.colormap)[0]
    assert (image == floor).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_a_clear_error(bad):
    x = np.zeros(500)
    x[123] = bad
    with pytest.raises(AudioError, match="NaN or Inf"):
        render(x, SMALL)


def test_low_frequencies_are_at_the_bottom():
    config = SpectrogramConfig(sample_rate=2000, n_fft=128, hop_length=16, colormap="gray", size=64)
    t = np.arange(4000) / 2000.0
    low = render(np.sin(2 * np.pi * 50 * t), config)[:, :, 0].astype(float)
    high = render(np.sin(2 * np.pi * 900 * t), config)[:, :, 0].astype(float)
    assert np.argmax(low.mean(axis=1)) > 56      # bright row near the bottom
    assert np.argmax(high.mean(axis=1)) < 8      # bright row near the top


def test_gain_does_not_change_the_image_under_max_normalisation():
    x = np.random.RandomState(1).randn(6000)
    assert np.array_equal(render(x, SMALL), render(x * 37.5, SMALL))


def test_all_wav_encodings_of_one_signal_give_the_same_image(tmp_path):
    contract = preset("heart", size=64)
    codes = np.random.RandomState(7).randint(-128, 128, size=contract.segment_samples)
    signal = codes / 128.0   # exactly representable in every encoding, 8-bit included
    images = []
    for subtype in WAV_SUBTYPES:
        path = tmp_path / ("s_%s.wav" % subtype)
        write_wav(path, signal, contract.sample_rate, subtype)
        samples, _ = load_audio(path)
        images.append(render_segment(samples, contract))
    for image in images[1:]:
        assert np.array_equal(image, images[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.integers(2, 300), st.integers(1, 200), st.integers(1, 200))
def test_resize_shape_and_range(h_in, w_in, h_out, w_out):
    m = np.random.RandomState(h_in * w_in).rand(h_in, w_in)
    out = resize(m, h_out, w_out)
    assert out.shape == (h_out, w_out)
    assert out.min() >= m.min() - 1e-12 and out.max() <= m.max() + 1e-12


def test_area_downsampling_preserves_the_mean():
    m = np.random.RandomState(0).rand(129, 301)
    assert resize(m, 37, 64).mean() == pytest.approx(m.mean(), rel=1e-12)
    assert np.array_equal(resize(m, 129, 301), m)


def test_contract_round_trips_through_dict():
    for name in PRESETS:
        contract = preset(name)
        assert Contract.from_dict(contract.to_dict()) == contract


# ---- the fast render path equals the readable reference, bit for bit ----------------------------------------

def _reference_resize_axis(values, n_out, axis):
    """The resize of the module doc, written plainly (no caches, no in-place steps)."""
    values = np.moveaxis(values, axis, 0)
    n_in = values.shape[0]
    if n_in == n_out:
        return np.moveaxis(values.copy(), 0, axis)
    column = (-1,) + (1,) * (values.ndim - 1)
    if n_out < n_in:                              # area average: differences of the cumulative integral
        scale = n_in / float(n_out)
        edges = np.arange(n_out + 1) * scale
        whole = np.minimum(np.floor(edges).astype(np.int64), n_in)
        coefficient = np.where(whole < n_in, 1.0, 0.0) * (edges - whole)
        cumulative = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0)])
        integral = cumulative[whole] + coefficient.reshape(column) * values[np.minimum(whole, n_in - 1)]
        out = (integral[1:] - integral[:-1]) / scale
    else:                                         # linear interpolation, half-pixel centres
        position = np.clip((np.arange(n_out) + 0.5) * (n_in / float(n_out)) - 0.5, 0.0, n_in - 1.0)
        left = np.floor(position).astype(np.int64)
        right = np.minimum(left + 1, n_in - 1)
        weight = position - left
        out = values[left] * (1.0 - weight).reshape(column) + values[right] * weight.reshape(column)
    return np.moveaxis(out, 0, axis)


def _reference_render(samples, config):
    """render() written the plain way, independent of the module's fast path: all frames in one rfft,
    frequency-major power → dB → resize (time, then frequency) → quantise → colour."""
    from stetho import spectrogram as sp
    win_length = config.win_length or config.n_fft
    window = np.zeros(config.n_fft)
    start = (config.n_fft - win_length) // 2
    window[start:start + win_length] = sp.window_function(config.window, win_length)
    half = config.n_fft // 2
    n_frames = 1 + samples.size // config.hop_length
    padded = np.zeros(max((n_frames - 1) * config.hop_length + config.n_fft, samples.size + 2 * half))
    padded[half:half + samples.size] = samples
    frames = np.stack([padded[i * config.hop_length:i * config.hop_length + config.n_fft] for i in range(n_frames)])
    spectrum = np.fft.rfft(frames * window, n=config.n_fft, axis=1).T
    power = sp.frequency_axis(spectrum.real ** 2 + spectrum.imag ** 2, config)
    if power.max() <= sp.AMIN:
        index = np.zeros((config.size, config.size), dtype=np.uint8)
    else:
        db = 10.0 * np.log10(np.maximum(power, sp.AMIN))
        if config.equalize == "median":
            db = db - np.median(db, axis=1)[:, None]   # each frequency row minus its median over time
        db = np.clip(db - db.max(), -config.top_db, 0.0)
        db = _reference_resize_axis(_reference_resize_axis(db, config.size, 1), config.size, 0)
        index = np.clip(np.round((db + config.top_db) / config.top_db * 255.0), 0, 255).astype(np.uint8)[::-1]
    return np.take(lookup_table(config.colormap), index, axis=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(64, 4000), n_fft=st.sampled_from([32, 64, 256]), hop=st.integers(4, 64),
       size=st.sampled_from([8, 17, 64, 128, 224]), scale=st.sampled_from(["linear", "mel"]),
       fmin=st.sampled_from([0.0, 25.0, 100.0]), fmax=st.sampled_from([None, 800.0]),
       seed=st.integers(0, 2 ** 16), equalize=st.sampled_from(["none", "median"]))
def test_fast_render_equals_the_reference_path(n, n_fft, hop, size, scale, fmin, fmax, seed, equalize):
    config = SpectrogramConfig(sample_rate=2000, n_fft=n_fft, hop_length=hop, scale=scale, n_mels=16, fmin=fmin,
                               fmax=fmax, size=size, equalize=equalize)
    x = np.random.RandomState(seed).randn(n) * np.random.RandomState(seed + 1).rand(n)
    assert np.array_equal(render(x, config), _reference_render(x, config))


def test_stft_blocks_do_not_change_the_numbers(monkeypatch):
    from stetho import spectrogram as sp
    x = np.random.RandomState(3).randn(6000)
    whole = sp.stft_power(x, 256, 20)
    monkeypatch.setattr(sp, "STFT_BLOCK_BYTES", 16 * 256 * 7)  # 7 frames at a time, a ragged last block
    assert np.array_equal(sp.stft_power(x, 256, 20), whole)
    assert np.array_equal(sp.stft_frames_power(x, 256, 20, n_bins=103), whole[:103].T)
    assert whole.shape == (129, 301)


# ---- equalize='median': a fixed spectral colouring drops out -----------------------------------------------

def test_median_equalisation_removes_a_fixed_colouring_and_keeps_events():
    from stetho import spectrogram as sp
    rng = np.random.RandomState(5)
    power = rng.exponential(1e-3, size=(103, 301))
    power[20:30, 100:120] *= 1e3                                  # an event: 30 dB for 0.2 s in some bands
    colouring = 10.0 ** (rng.uniform(-20, 20, size=(103, 1)) / 10.0)  # a stethoscope's EQ: ±20 dB per band
    flat = SpectrogramConfig(sample_rate=2000, n_fft=256, hop_length=20, fmax=800.0, equalize="median")
    plain = flat.replace(equalize="none")
    equalised = sp.to_db(power, flat)
    np.testing.assert_allclose(sp.to_db(power * colouring, flat), equalised, atol=1e-9)
    assert np.abs(sp.to_db(power * colouring, plain) - sp.to_db(power, plain)).max() > 10   # without it: not
    assert equalised[20:30, 100:120].mean() > equalised[40:60, 100:120].mean() + 20         # the event stays
    # the frame-major layout of the render path gives the same numbers
    assert np.array_equal(sp.to_db(power.T, flat, time_axis=0), equalised.T)


def test_equalize_is_left_out_of_stored_contracts_at_its_default():
    """Contracts saved before the field existed keep their dicts (and prepare.json hashes); a new one says it."""
    contract = preset("heart")
    assert "equalize" not in contract.to_dict()["spectrogram"]
    assert Contract.from_dict(contract.to_dict()).spectrogram.equalize == "none"
    equalised = contract.replace(spectrogram=contract.spectrogram.replace(equalize="median"))
    assert equalised.to_dict()["spectrogram"]["equalize"] == "median"
    assert Contract.from_dict(equalised.to_dict()) == equalised != contract


@pytest.mark.parametrize("changes, message", [
    (dict(equalize="mean"), "equalize must be one of"),
    (dict(equalize="median", normalization="fixed"), "equalize='median' needs normalization='max'"),
])
def test_bad_equalize_settings_are_refused_by_name(changes, message):
    from stetho import ConfigError
    with pytest.raises(ConfigError, match=message):
        SpectrogramConfig(**changes)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.integers(8, 1024), st.floats(0.2, 12.0))
def test_frame_hop_gives_about_one_frame_per_column_and_half_frame_overlap(name, size, window_s):
    """The preset's hop: never finer than its own, at least as many frames as columns, frames overlap ≥ 50 %."""
    contract = preset(name, size=size, window_s=window_s)
    spec, base = contract.spectrogram, preset(name).spectrogram
    n_frames = 1 + contract.segment_samples // spec.hop_length
    assert spec.size == size and contract.segmentation.window_s == window_s
    assert isinstance(spec.hop_length, int) and spec.hop_length >= 1
    assert spec.hop_length >= preset(name, size=1024).spectrogram.hop_length  # the preset's finest hop
    assert spec.hop_length <= max(spec.n_fft // 2, preset(name, size=1024).spectrogram.hop_length)
    if spec.hop_length > preset(name, size=1024).spectrogram.hop_length and spec.hop_length < spec.n_fft // 2:
        assert size + 1 <= n_frames < 2 * (size + 1)  # one frame per column, give or take the rounding
    assert (spec.n_fft, spec.scale, spec.fmax) == (base.n_fft, base.scale, base.fmax)  # nothing else moves


def test_frame_hop_of_the_heart_preset():
    """The figures the heart preset documents (3 s at 2 kHz, n_fft 256): 10 ms at R ≥ 300, coarser below."""
    assert [preset("heart", size=r).spectrogram.hop_length for r in (32, 64, 128, 224, 300, 512)] == \
        [128, 93, 46, 26, 20, 20]
    assert preset("heart").spectrogram.hop_length == 26  # R=224 by default
    assert preset("heart", size=128).with_size(224).spectrogram.hop_length == 46  # with_size moves R alone
    assert frame_hop(20, 6000, 128, 256) == 46 and frame_hop(20, 6000.4, 128, 256) == 46


def test_colour_looks_levels_up_in_the_palette_and_refuses_levels_outside_it():
    """uint8 levels take the fast path (no bounds check: it cannot fail); wider integers are still checked."""
    from stetho.spectrogram import SpectrogramConfig, colour
    config = SpectrogramConfig(colormap="magma")
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(colour(levels, config), lookup_table("magma")[levels])
    np.testing.assert_array_equal(colour(levels.astype(np.int64), config), lookup_table("magma")[levels])
    with pytest.raises(IndexError):
        colour(np.array([[0, 256]]), config)


@settings(max_examples=150, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.one_of(st.just(0.0), st.floats(1e-14, 1e6))),
       st.sampled_from([("max", "none"), ("max", "median"), ("fixed", "none")]), st.floats(-30.0, 30.0),
       st.sampled_from([20.0, 80.0]))
def test_decibels_are_the_textbook_clip_of_the_log_power(power, mode, ref_db, top_db):
    """to_db's in-place steps give np.clip(10·log10-as-ln(max(P, 1e-10)) − top, −top_db, 0) bit for bit (with
    normalization='max', x − max(x) ≤ 0 already, so only the floor is clipped)."""
    from stetho import spectrogram as spec
    config = spec.SpectrogramConfig(normalization=mode[0], equalize=mode[1], ref_db=ref_db, top_db=top_db)
    db = np.log(np.maximum(power, spec.AMIN)) * spec.DB_PER_NEPER
    if mode[1] == "median":
        db = db - np.median(db, axis=-1, keepdims=True)
    expected = np.clip(db - (db.max() if mode[0] == "max" else ref_db), -top_db, 0.0)
    got = spec.to_db(power.copy(), config, overwrite=True)
    assert np.array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))  # not even a zero's sign differs

"""Audio I/O: every WAV encoding decodes to the same float signal; bad files get errors naming them."""
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from stetho import AudioError, load_audio, read_wav, write_wav
from stetho.audio_io import WAV_SUBTYPES, resample


def _signal_exact_in_8_bit(n=2000, seed=0):
    """A signal every WAV encoding represents exactly: multiples of 1/128 in [-1, 127/128]."""
    codes = np.random.RandomState(seed).randint(-128, 128, size=n)
    return codes / 128.0


@pytest.mark.parametrize("subtype", WAV_SUBTYPES)
def test_every_encoding_round_trips_exactly(tmp_path, subtype):
    signal = _signal_exact_in_8_bit()
    path = tmp_path / ("x_%s.wav" % subtype)
    write_wav(path, signal, 4000, subtype)
    decoded, rate = read_wav(path)
    assert rate == 4000 and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, signal.astype(np.float32))


def test_stereo_is_averaged(tmp_path):
    left, right = np.full(100, 0.5), np.full(100, -0.25)
    pcm = (np.stack([left, right], axis=1) * 32768).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 2, 8000, 8000 * 4, 4, 16)
    blob = (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(pcm)) + pcm)
    path = tmp_path / "stereo.wav"
    path.write_bytes(blob)
    samples, rate = read_wav(path)
    assert rate == 8000
    np.testing.assert_allclose(samples, 0.125)


def test_extensible_float_header_is_read(tmp_path):
    data = np.linspace(-0.5, 0.5, 64).astype("<f4").tobytes()
    guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 4000, 16000, 4, 32) + struct.pack("<HHI", 22, 32, 4) + guid
    blob = (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    path = tmp_path / "ext.wav"
    path.write_bytes(blob)
    samples, _ = read_wav(path)
    np.testing.assert_allclose(samples, np.linspace(-0.5, 0.5, 64), atol=1e-7)


def _bad_files(tmp_path):
    good = tmp_path / "good.wav"
    write_wav(good, np.zeros(1000), 4000)
    blob = good.read_bytes()
    cases = {
        "empty.wav": (b"", "empty"),
        "text.wav": (b"this is not audio at all, just text\n" * 5, "not a WAV"),
        "truncated.wav": (blob[:-300], "truncated"),
        "nodata.wav": (blob[:36], "no 'data' chunk"),
        "halfframe.wav": (blob[:40] + struct.pack("<I", 3) + b"\x01\x02\x03", "whole number"),
        "zero_samples.wav": (blob[:40] + struct.pack("<I", 0), "no samples"),
    }
    nan = np.array([0.0, np.nan, 0.5], dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 4000, 16000, 4, 32)
    cases["nan.wav"] = (b"RIFF" + struct.pack("<I", 36 + len(nan)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                        + b"data" + struct.pack("<I", len(nan)) + nan, "NaN")
    adpcm = struct.pack("<HHIIHH", 2, 1, 4000, 4000, 1, 4)
    cases["adpcm.wav"] = (b"RIFF" + struct.pack("<I", 40) + b"WAVEfmt " + struct.pack("<I", 16) + adpcm
                          + b"data" + struct.pack("<I", 4) + b"\x00" * 4, "unsupported")
    return cases


def test_bad_files_raise_errors_naming_the_file_and_problem(tmp_path):
    for name, (content, problem) in _bad_files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AudioError) as caught:
            read_wav(path)
        assert name in str(caught.value) and problem in str(caught.value), str(caught.value)


def test_load_audio_names_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_load_audio_reads_flac_through_soundfile(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    signal = _signal_exact_in_8_bit(500)
    soundfile.write(str(tmp_path / "x.flac"), signal, 8000, subtype="PCM_16")
    samples, rate = load_audio(tmp_path / "x.flac")
    assert rate == 8000
    np.testing.assert_allclose(samples, signal, atol=1e-6)


def test_real_wavs_of_every_depth_in_icbhi_sample(shared_data):
    folder = shared_data / "icbhi2017_sample" / "audio_and_txt_files"
    wavs = sorted(folder.glob("*.wav"))
    assert len(wavs) == 10
    for wav in wavs:
        samples, rate = read_wav(wav)
        assert rate in (4000, 44100) and samples.size > rate and np.abs(samples).max() <= 1.0


def test_resample_keeps_a_tone_and_length():
    rate, target = 8000, 2000
    t = np.arange(rate * 2) / float(rate)
    tone = np.sin(2 * np.pi * 100 * t).astype(np.float32)
    out = resample(tone, rate, target)
    assert out.size == 2 * target
    expected = np.sin(2 * np.pi * 100 * np.arange(out.size) / float(target))
    np.testing.assert_allclose(out[100:-100], expected[100:-100], atol=2e-3)


def test_numpy_fallback_resampler_is_close_to_soxr():
    from stetho.audio_io import _resample_sinc
    rate = 8000
    t = np.arange(rate) / float(rate)
    tone = (np.sin(2 * np.pi * 150 * t) + 0.3 * np.sin(2 * np.pi * 600 * t)).astype(np.float32)
    fallback = _resample_sinc(tone, rate, 2000)
    reference = resample(tone, rate, 2000)
    assert fallback.size == reference.size
    np.testing.assert_allclose(fallback[50:-50], reference[50:-50], atol=0.02)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from(["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]))
def test_any_signal_round_trips_within_quantisation(tmp_path_factory, values, subtype):
    path = tmp_path_factory.mktemp("rt") / "x.wav"
    write_wav(path, values, 2000, subtype)
    decoded, _ = read_wav(path)
    step = {"PCM_16": 2 ** -15, "PCM_24": 2 ** -23, "PCM_32": 2 ** -31}.get(subtype, 1e-7)
    np.testing.assert_allclose(decoded, np.clip(values, -1, 1 - step), atol=step)

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


# ---- implausible rates are refused before anything is decoded (issue 28, item 4) ----------------------------

def _wav_header_rate(path, rate, seconds_at_8k=12.5):
    """A 16-bit mono WAV of noise whose header claims ``rate`` Hz (the 200 kB file of the issue at 1 Hz)."""
    pcm = (np.random.RandomState(0).randn(int(8000 * seconds_at_8k)) * 3000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", len(pcm)) + pcm)
    return path


@pytest.mark.parametrize("rate", [1, 999, 384001, 4000000])
def test_a_header_with_an_implausible_rate_is_refused_naming_the_file_and_the_rate(tmp_path, rate):
    """Before: a 200 kB WAV claiming 1 Hz was upsampled 2000× to the heart contract's 2 kHz (3.3 GB, minutes)."""
    from stetho.audio_io import load_resampled, open_audio
    path = _wav_header_rate(tmp_path / ("claims_%d_hz.wav" % rate), rate)
    assert 150000 < path.stat().st_size < 250000
    for reader in (read_wav, load_audio, open_audio, lambda p: load_resampled(p, 2000)):
        with pytest.raises(AudioError) as caught:
            reader(str(path))
        message = str(caught.value)
        assert str(path) in message and "%d Hz" % rate in message and "implausible" in message, message
        assert "\n" not in message


def test_the_plausible_range_ends_are_accepted(tmp_path):
    for rate in (1000, 384000):
        samples, got = read_wav(_wav_header_rate(tmp_path / ("r%d.wav" % rate), rate, seconds_at_8k=0.1))
        assert got == rate and samples.size == 800


# ---- streaming: the same samples as reading whole, and the one path prepare.py and the service share ---------

def _reference_sinc(samples, orig_rate, target_rate, half_width=32, beta=8.6):
    """The whole-array sinc resampler as it was before streaming (kept verbatim as the reference)."""
    x = samples.astype(np.float64)
    n_out = int(round(len(x) * float(target_rate) / orig_rate))
    ratio = float(target_rate) / orig_rate
    cutoff = min(1.0, ratio) * 0.95
    width = int(np.ceil(half_width / min(1.0, ratio)))
    out = np.empty(n_out, dtype=np.float64)
    offsets = np.arange(-width, width + 1)
    block = 4096
    for start in range(0, n_out, block):
        t = np.arange(start, min(n_out, start + block)) / ratio
        base = np.floor(t).astype(np.int64)
        idx = base[:, None] + offsets[None, :]
        dist = t[:, None] - idx
        taper = np.i0(beta * np.sqrt(np.clip(1.0 - (dist / (width + 1.0)) ** 2, 0.0, 1.0))) / np.i0(beta)
        kernel = cutoff * np.sinc(cutoff * dist) * taper
        valid = (idx >= 0) & (idx < len(x))
        values = np.where(valid, x[np.clip(idx, 0, len(x) - 1)], 0.0)
        out[start:start + len(t)] = (values * kernel).sum(axis=1)
    return out.astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([(8000, 2000), (44100, 2000), (4000, 2000), (22050, 4000), (2000, 8000), (3000, 2000)]),
       st.integers(1, 6000), st.lists(st.integers(1, 2500), min_size=1, max_size=12), st.integers(0, 2 ** 16))
def test_the_streamed_sinc_resampler_is_the_whole_array_one_bit_for_bit(rates, n, cuts, seed):
    from stetho.audio_io import SincResampler, _resample_sinc
    x = (np.random.RandomState(seed).randn(n) * 0.3).astype(np.float32)
    want = _reference_sinc(x, *rates)
    resampler, parts, pos = SincResampler(*rates), [], 0
    for cut in cuts * (n // max(1, sum(cuts)) + 1):
        parts.append(resampler.push(x[pos:pos + cut]))
        pos += cut
        if pos >= n:
            break
    parts.append(resampler.finish())
    got = np.concatenate(parts)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(_resample_sinc(x, *rates), want)


def _real_files(shared_data):
    yaseen = sorted((shared_data / "yaseen2018").glob("*/*.wav"))[::150]
    icbhi = sorted((shared_data / "icbhi2017_sample" / "audio_and_txt_files").glob("*.wav"))[:3]  # 44.1 and 4 kHz
    return yaseen + icbhi


@pytest.mark.parametrize("soxr_installed", [True, False])
def test_streamed_decoding_and_resampling_equal_the_whole_file_path_on_real_recordings(shared_data, monkeypatch,
                                                                                        soxr_installed):
    """prepare.py and the service read files through load_resampled / ResampledFile: block by block they give
    the very samples of resample(load_audio(...)) — with soxr (workstation) and with the sinc fallback (Nano)."""
    from stetho import audio_io, resampling
    if soxr_installed:
        pytest.importorskip("soxr")
    else:
        monkeypatch.setattr(resampling, "_optional", lambda name: None)  # no soxr: the Nano's resampler
    files = _real_files(shared_data)
    assert len(files) >= 6
    for path in files[: 8 if soxr_installed else 3]:
        whole, rate = load_audio(str(path))
        want = resample(whole, rate, 2000)
        for block in (1000, 4096, 1 << 16):
            got, source_rate, frames = audio_io.load_resampled(str(path), 2000, block_frames=block)
            assert (source_rate, frames) == (rate, whole.size)
            assert got.dtype == np.float32 and np.array_equal(got, want), (path, block)


# ---- every format the README lists (issue 29, item 5) --------------------------------------------------------

def _tones(rate, seconds=2.0):
    t = np.arange(int(rate * seconds)) / float(rate)
    return 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 555 * t) * np.sin(2 * np.pi * 1.3 * t)


def _write_m4a(path, signal, rate):
    av = pytest.importorskip("av")
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        pcm = signal.astype(np.float32)
        for start in range(0, pcm.size, 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# format → (how to write it, largest sample error after decoding, extra samples the codec may add at the end)
FORMATS = {
    "wav": (lambda p, x, r: write_wav(p, x, r), 2 ** -15, 0),
    "flac": (lambda p, x, r: __import__("soundfile").write(str(p), x, r, subtype="PCM_16"), 2 ** -15, 0),
    "aiff": (lambda p, x, r: __import__("soundfile").write(str(p), x, r, format="AIFF", subtype="PCM_16"),
             2 ** -15, 0),
    "ogg": (lambda p, x, r: __import__("soundfile").write(str(p), x, r, format="OGG", subtype="VORBIS"), 0.05, 0),
    "mp3": (lambda p, x, r: __import__("soundfile").write(str(p), x, r, format="MP3", subtype="MPEG_LAYER_III"),
            0.06, 0),
    "m4a": (_write_m4a, 0.03, 1024),
}


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_listed_format_decodes_to_the_samples_written(tmp_path, ext):
    """WAV, FLAC, AIFF exactly (16-bit); OGG Vorbis, MP3 and AAC in M4A within their codecs' error, aligned
    (no encoder delay left in), read block by block as the service and prepare.py read them."""
    pytest.importorskip("soundfile")
    from stetho.audio_io import open_audio
    write, tolerance, tail = FORMATS[ext]
    rate = 16000
    signal = _tones(rate)
    path = tmp_path / ("tones." + ext)
    write(path, signal, rate)
    samples, got_rate = load_audio(str(path))
    assert got_rate == rate and samples.dtype == np.float32
    assert signal.size <= samples.size <= signal.size + tail
    error = np.abs(samples[:signal.size] - signal)
    edge = 1024 if tolerance > 2 ** -15 else 0  # a lossy codec's first and last frame (1024 samples) ring
    assert error[edge:error.size - edge].max() <= tolerance, (ext, error.max())
    with open_audio(str(path)) as reader:
        blocks = list(reader.blocks(1000))
    assert np.array_equal(np.concatenate(blocks), samples)
    # and the service's file source replays it (the extension is one it lists)
    from deploy_jetson.sources import AUDIO_EXTENSIONS, FileSource
    assert "." + ext in AUDIO_EXTENSIONS
    source = FileSource(str(path), 2000, realtime=False)
    replayed = list(source.blocks())
    assert not source.failed and replayed[-1].end
    assert abs(sum(b.samples.size for b in replayed) - 4000) <= tail


def test_soundfile_formats_read_in_blocks_equal_soundfile_reading_them_whole(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    from stetho.audio_io import open_audio
    signal = _tones(8000, 3.0)
    for ext in ("flac", "ogg", "aiff"):
        path = tmp_path / ("x." + ext)
        FORMATS[ext][0](path, signal, 8000)
        whole, _ = soundfile.read(str(path), dtype="float64", always_2d=True)
        with open_audio(str(path)) as reader:
            samples = np.concatenate(list(reader.blocks(1000)))
        assert np.array_equal(samples, whole.mean(axis=1).astype(np.float32)), ext


def test_mp3_is_never_read_in_pieces_by_libsndfile(tmp_path, monkeypatch):
    """libsndfile 1.2 decodes an MP3 read in pieces wrongly (errors of half full scale): MP3 goes to PyAV, and
    without PyAV to libsndfile in one piece — right either way."""
    soundfile = pytest.importorskip("soundfile")
    from stetho import audio_io
    signal = _tones(8000, 3.0)
    path = tmp_path / "x.mp3"
    FORMATS["mp3"][0](path, signal, 8000)
    handle = soundfile.SoundFile(str(path))
    pieces = np.concatenate([handle.read(4096) for _ in range(6)])
    handle.close()
    if np.abs(pieces - signal).max() < 0.1:
        pytest.skip("this libsndfile streams MP3 correctly")  # the workaround is then merely unneeded
    real = audio_io._optional
    for hide in ([], ["av"]):
        monkeypatch.setattr(audio_io, "_optional", lambda name, hide=hide: None if name in hide else real(name))
        with audio_io.open_audio(str(path)) as reader:
            samples = np.concatenate(list(reader.blocks(1000)))
        assert np.abs(samples[:signal.size] - signal)[1024:-1024].max() < 0.06, hide


def test_a_file_no_reader_understands_is_named(tmp_path):
    path = tmp_path / "noise.m4a"
    path.write_bytes(np.random.RandomState(1).bytes(5000))
    with pytest.raises(AudioError, match="noise.m4a: cannot decode audio"):
        load_audio(str(path))

"""Conditioning: filters pass and stop what they should, normalisation and envelopes behave on any input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from stetho.conditioning import (ConditioningConfig, condition, design_bandpass, design_highpass, design_lowpass,
                                 fir_filter, moving_average, normalize_peak, normalize_rms, remove_dc)
from stetho.errors import ConfigError

RATE = 2000


def _tone(freq, seconds=2.0, rate=RATE):
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / float(rate))


def _gain(taps, freq):
    y = fir_filter(_tone(freq), taps)
    middle = slice(len(y) // 4, 3 * len(y) // 4)
    return np.sqrt(np.mean(y[middle] ** 2) / np.mean(_tone(freq)[middle] ** 2))


def test_lowpass_passes_below_and_stops_above():
    taps = design_lowpass(400.0, RATE, 40.0)
    assert _gain(taps, 100) == pytest.approx(1.0, abs=0.01)
    assert _gain(taps, 600) < 0.01


def test_highpass_removes_drift_and_keeps_heart_band():
    taps = design_highpass(25.0, RATE, 20.0)
    assert _gain(taps, 5) < 0.05
    assert _gain(taps, 100) == pytest.approx(1.0, abs=0.01)


def test_bandpass_keeps_the_band_only():
    taps = design_bandpass(25.0, 800.0, RATE, 20.0)
    assert _gain(taps, 5) < 0.05
    assert _gain(taps, 200) == pytest.approx(1.0, abs=0.01)
    assert _gain(taps, 950) < 0.01


def test_filter_has_zero_delay():
    x = np.zeros(2001)
    x[1000] = 1.0
    y = fir_filter(x, design_lowpass(200.0, RATE, 50.0))
    assert int(np.argmax(y)) == 1000


def test_bad_cutoff_is_refused():
    with pytest.raises(ConfigError, match="cut-off"):
        design_lowpass(1500.0, RATE, 20.0)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 3000), elements=st.floats(-1e3, 1e3)))
def test_condition_keeps_length_and_is_finite_on_any_input(x):
    y = condition(x, RATE, ConditioningConfig(highpass_hz=25.0, lowpass_hz=800.0))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert np.abs(y).max() <= 0.9 + 1e-9


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 500), elements=st.floats(-1e3, 1e3)), st.floats(0.01, 2.0))
def test_normalisation_hits_its_target_unless_silent(x, target):
    peak = normalize_peak(x, target)
    rms = normalize_rms(x, target)
    if np.abs(x).max() > 1e-9:
        assert np.abs(peak).max() == pytest.approx(target, rel=1e-9)
        assert np.sqrt(np.mean(rms ** 2)) == pytest.approx(target, rel=1e-6)
    else:
        assert np.array_equal(peak, x)


@settings(max_examples=40, deadline=None)
@given(st.floats(-10, 10), st.integers(1, 400), st.integers(1, 50))
def test_moving_average_of_a_constant_is_that_constant(value, n, width):
    np.testing.assert_allclose(moving_average(np.full(n, value), width), value, atol=1e-9)


def test_remove_dc_gives_zero_mean():
    assert abs(remove_dc(np.arange(10.0) + 7).mean()) < 1e-12


def test_the_cached_filter_spectrum_is_keyed_by_the_taps_values():
    from stetho.conditioning import design_bandpass, fir_filter
    x = np.random.RandomState(0).randn(6000)
    narrow, wide = design_bandpass(25.0, 400.0, 2000, 20.0), design_bandpass(25.0, 800.0, 2000, 20.0)
    assert narrow.size == wide.size  # same length → same FFT size: only the values tell them apart
    direct = [np.convolve(np.pad(x, 330, mode="reflect", reflect_type="odd"), t, mode="valid") for t in (narrow, wide)]
    for _ in range(2):  # second round: from the cache
        for taps, expected in zip((narrow, wide), direct):
            assert np.allclose(fir_filter(x, taps), expected, atol=1e-9)

    # an array changed in place keeps its identity but must not keep its old spectrum
    taps = narrow.copy()
    assert np.allclose(fir_filter(x, taps), direct[0], atol=1e-9)
    taps[:] = wide
    assert np.allclose(fir_filter(x, taps), direct[1], atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(5500, 9000), elements=st.floats(-1, 1)), st.sampled_from([25.0, 50.0]),
       st.sampled_from([400.0, 800.0]))
def test_fft_filtering_is_the_textbook_fft_convolution_bit_for_bit(x, low, high):
    """fir_filter's FFT path (transform buffer filled in place, size from integer bit lengths, cached taps
    spectrum) gives the numbers of the plain formulation: rfft of the odd-reflected signal zero-padded to the
    next power of two, times rfft of the taps, back with irfft."""
    from stetho.conditioning import design_bandpass, fir_filter
    taps = design_bandpass(low, high, RATE, 20.0)
    taps.setflags(write=False)  # as filter_taps hands them out (cached by identity)
    half = taps.size // 2
    padded = np.pad(x, half, mode="reflect", reflect_type="odd")
    assert padded.size * taps.size > 4000000  # long enough for the FFT path
    nfft = 1 << int(np.ceil(np.log2(padded.size + taps.size - 1)))
    expected = np.fft.irfft(np.fft.rfft(padded, nfft) * np.fft.rfft(taps, nfft), nfft)[taps.size - 1:][:x.size]
    for _ in range(2):  # the second call finds the spectrum in the cache
        assert np.array_equal(fir_filter(x, taps), expected)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 7000), elements=st.floats(-1e3, 1e3)),
       st.sampled_from(["peak", "rms", "none"]), st.booleans(), st.sampled_from([None, 25.0]),
       st.sampled_from([None, 800.0]))
def test_condition_is_exactly_its_steps_composed(x, normalize, dc, highpass, lowpass):
    """condition() works in place on its own copy: the numbers of the public functions, bit for bit."""
    from stetho.conditioning import filter_taps
    config = ConditioningConfig(remove_dc=dc, highpass_hz=highpass, lowpass_hz=lowpass, normalize=normalize)
    original = x.copy()
    y = remove_dc(x) if dc else x.copy()
    taps = filter_taps(config, RATE)
    if taps is not None:
        y = fir_filter(y, taps)
    y = normalize_peak(y, config.target) if normalize == "peak" else (
        normalize_rms(y, config.target) if normalize == "rms" else y)
    assert np.array_equal(condition(x, RATE, config), y)
    assert np.array_equal(x, original)   # the caller's samples are untouched


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(2, 40), elements=st.floats(-1, 1)), st.integers(0, 100))
def test_reflect_padding_is_numpys_odd_reflection(x, width):
    """fir_filter's edge extension: numpy's odd reflection, also when the pad is longer than the signal."""
    from stetho.conditioning import _reflect_pad
    padded = _reflect_pad(x, width)
    assert np.array_equal(padded, np.pad(x, width, mode="reflect", reflect_type="odd"))

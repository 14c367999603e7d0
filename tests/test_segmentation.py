"""Segmentation: fixed windows, annotated cycles, and peak-cut cycles on synthetic hearts of known rate."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from stetho import synth
from stetho.segmentation import (annotated_cycles, estimate_period, envelope, find_peaks, fit_length,
                                 fixed_windows, peak_cut_cycles)


@pytest.mark.parametrize("bpm", [45, 60, 72, 90, 110, 130, 150])
@pytest.mark.parametrize("kind", synth.HEART_KINDS)
def test_peak_cut_finds_one_cycle_between_each_pair_of_beats(bpm, kind):
    for seed in range(3):
        audio, beats = synth.heart_sound(kind, bpm=bpm, duration_s=12.0, rate=2000, seed=seed, return_beats=True)
        cycles = peak_cut_cycles(audio, 2000, 1.0)
        assert len(cycles) == len(beats) - 1, (bpm, kind, seed)
        starts = np.array([c.offset for c in cycles]) / 2000.0
        np.testing.assert_allclose(starts, beats[:-1], atol=0.06)


def test_peak_cut_on_vascular_rate_audio():
    audio, beats = synth.heart_sound("normal", bpm=66, duration_s=8.0, rate=22050, seed=3, return_beats=True)
    cycles = peak_cut_cycles(audio, 22050, 1.0)
    assert len(cycles) == len(beats) - 1
    assert all(c.samples.size == 22050 for c in cycles)


def test_period_estimate_matches_heart_rate():
    audio = synth.heart_sound("normal", bpm=75, duration_s=10.0, rate=2000, seed=1)
    env = envelope(audio, 2000, 0.05)
    assert estimate_period(env, 2000) == pytest.approx(0.8, abs=0.04)


def test_silence_has_no_cycles():
    assert peak_cut_cycles(np.zeros(20000), 2000, 1.0) == []


def test_find_peaks_keeps_the_tallest_within_distance():
    env = np.zeros(100)
    env[[10, 14, 50]] = [1.0, 2.0, 1.5]
    assert list(find_peaks(env, 10, 0.5)) == [14, 50]


def test_fixed_windows_are_whole_and_evenly_spaced():
    x = np.arange(10000, dtype=np.float32)
    windows = fixed_windows(x, 1000, 3.0, 1.5)
    assert [w.offset for w in windows] == [0, 1500, 3000, 4500, 6000]
    assert all(w.samples.size == 3000 and not w.padded for w in windows)
    np.testing.assert_array_equal(windows[1].samples, x[1500:4500])


def test_short_recording_gives_one_wrapped_window():
    windows = fixed_windows(np.array([1, 2, 3], dtype=np.float32), 2, 3.0, 1.0)
    assert len(windows) == 1 and windows[0].padded
    np.testing.assert_array_equal(windows[0].samples, [1, 2, 3, 1, 2, 3])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 500), st.integers(1, 300), st.sampled_from(["wrap", "zero", "edge"]))
def test_fit_length_always_gives_the_length(n, length, pad):
    out, padded = fit_length(np.ones(n), length, pad)
    assert out.size == length and padded == (n < length)


def test_annotated_cycles_clip_to_the_recording():
    x = np.arange(100, dtype=np.float32)
    cycles = annotated_cycles(x, 10, [(0.0, 2.0), (9.0, 12.0), (11.0, 12.0)], 1.0, pad="zero")
    assert [c.offset for c in cycles] == [0, 90]
    np.testing.assert_array_equal(cycles[1].samples, x[90:100])


def test_unannotated_audio_is_cut_as_trained_or_into_windows_with_a_note():
    from stetho.segmentation import SegmentationConfig, segment_unannotated
    audio = synth.heart_sound("normal", bpm=72, duration_s=10.0, rate=2000, seed=2)
    peaks, note = segment_unannotated(audio, 2000, SegmentationConfig(mode="peaks", window_s=1.0))
    assert note is None and [p.offset for p in peaks] == [c.offset for c in peak_cut_cycles(audio, 2000, 1.0)]
    whole, note = segment_unannotated(audio, 2000, SegmentationConfig(mode="whole", window_s=3.0))
    assert note is None and len(whole) == 1
    cycles, note = segment_unannotated(audio, 2000, SegmentationConfig(mode="cycles", window_s=3.0, hop_s=1.5))
    assert "annotated cycles" in note and [c.offset for c in cycles] == [0, 3000, 6000, 9000, 12000]

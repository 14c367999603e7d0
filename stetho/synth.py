"""Synthetic heart and lung sounds for the demo and unit tests. NOT clinical data.

They have the gross structure of real sounds (S1/S2 timing, a systolic murmur
band, an S3; breathing noise, wheeze tones, crackle transients) so that
pipelines can be exercised end to end without real recordings.  Accuracy on
them says nothing about accuracy on patients.

All generators are deterministic for a given ``seed`` (numpy RandomState,
whose stream is stable across numpy versions) and return float32 mono with
peak 0.8.
"""
import os

import numpy as np

from .audio_io import write_wav
from .conditioning import design_bandpass, fir_filter

HEART_KINDS = ("normal", "murmur", "extra")
LUNG_KINDS = ("normal", "wheeze", "crackle")


def _tone_burst(rate, freq_hz, duration_s, rng):
    t = np.arange(int(duration_s * rate)) / float(rate)
    envelope = np.exp(-0.5 * ((t - duration_s / 2) / (duration_s / 6)) ** 2)
    return envelope * np.sin(2 * np.pi * freq_hz * t + rng.uniform(0, 2 * np.pi))


def _band_noise(n, rate, low_hz, high_hz, rng):
    noise = rng.standard_normal(n)
    high_hz = min(high_hz, 0.45 * rate)
    shaped = fir_filter(noise, design_bandpass(low_hz, high_hz, rate, max(10.0, low_hz / 2.0)))
    return shaped / (np.abs(shaped).max() + 1e-12)


def _add(signal, burst, start):
    start = int(start)
    if start >= signal.size or start + burst.size <= 0:
        return
    lo = max(0, -start)
    hi = min(burst.size, signal.size - start)
    signal[start + lo:start + hi] += burst[lo:hi]


def systole_s(bpm):
    """S1→S2 interval (s) for a heart rate, roughly 0.35·sqrt(cycle length)."""
    return 0.35 * np.sqrt(60.0 / bpm)


def heart_sound(kind="normal", bpm=72.0, duration_s=5.0, rate=2000, seed=0, noise=0.02, return_beats=False):
    """A synthetic phonocardiogram.

    kind: 'normal' (S1 + S2), 'murmur' (plus a crescendo–decrescendo systolic
    murmur, 150–400 Hz noise between S1 and S2) or 'extra' (plus an S3, a
    low 35 Hz thud 150 ms after S2).  bpm: heart rate (each beat jitters ±3%);
    the first S1 falls at a random phase in the first cycle.  noise: white
    background level.  Returns float32 (duration_s·rate,), peak 0.8, and with
    ``return_beats`` also the S1 times in seconds.
    """
    if kind not in HEART_KINDS:
        raise ValueError("kind must be one of %s" % (HEART_KINDS,))
    rng = np.random.RandomState(seed)
    n = int(round(duration_s * rate))
    x = np.zeros(n)
    period = 60.0 / bpm
    systole = systole_s(bpm)
    beat = rng.uniform(0.05, 0.5) * period
    murmur_noise = _band_noise(n, rate, 150.0, 400.0, rng) if kind == "murmur" else None
    beats = []
    while beat < duration_s:
        beats.append(beat)
        s1 = beat * rate
        s2 = (beat + systole) * rate
        _add(x, 1.0 * _tone_burst(rate, rng.uniform(45, 60), 0.10, rng), s1 - 0.05 * rate)
        _add(x, 0.7 * _tone_burst(rate, rng.uniform(70, 90), 0.08, rng), s2 - 0.04 * rate)
        if kind == "murmur":
            start, stop = int(s1 + 0.05 * rate), int(s2 - 0.04 * rate)
            if stop > start:
                shape = 1.0 - np.abs(np.linspace(-1, 1, stop - start))
                seg = murmur_noise[start:min(stop, n)] * shape[:max(0, min(stop, n) - start)]
                x[start:start + seg.size] += 0.35 * seg
        if kind == "extra":
            _add(x, 0.5 * _tone_burst(rate, 35.0, 0.07, rng), s2 + 0.15 * rate)
        beat += period * rng.uniform(0.97, 1.03)
    x += noise * rng.standard_normal(n)
    x = (0.8 * x / (np.abs(x).max() + 1e-12)).astype(np.float32)
    return (x, beats) if return_beats else x


def lung_sound(kind="normal", breaths_per_min=15.0, duration_s=8.0, rate=4000, seed=0, noise=0.01):
    """A synthetic lung sound.

    kind: 'normal' (breath noise 100–1000 Hz shaped by inspiration 40% /
    expiration 60% of each cycle), 'wheeze' (plus a 250–600 Hz tone with slow
    frequency drift during expiration) or 'crackle' (plus ~8 short damped
    transients, 5 ms at 400–1200 Hz, in each inspiration).
    Returns float32 (duration_s·rate,), peak 0.8.
    """
    if kind not in LUNG_KINDS:
        raise ValueError("kind must be one of %s" % (LUNG_KINDS,))
    rng = np.random.RandomState(seed)
    n = int(round(duration_s * rate))
    t = np.arange(n) / float(rate)
    cycle = 60.0 / breaths_per_min
    phase = ((t + rng.uniform(0, cycle)) % cycle) / cycle
    inspiring = phase < 0.4
    envelope = np.where(inspiring, np.sin(np.pi * phase / 0.4), 0.6 * np.sin(np.pi * (phase - 0.4) / 0.6))
    x = 0.5 * envelope * _band_noise(n, rate, 100.0, 1000.0, rng)
    if kind == "wheeze":
        freq = rng.uniform(250, 600) * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
        tone = np.sin(2 * np.pi * np.cumsum(freq) / rate)
        x += 0.4 * np.where(inspiring, 0.0, envelope) * tone
    if kind == "crackle":
        starts = np.flatnonzero(np.diff(inspiring.astype(np.int8)) == 1)
        starts = np.concatenate([[0] if inspiring[0] else [], starts]).astype(np.int64)
        for start in starts:
            for _ in range(8):
                at = start + int(rng.uniform(0, 0.4 * cycle) * rate)
                tc = np.arange(int(0.005 * rate)) / float(rate)
                burst = np.exp(-tc / 0.0015) * np.sin(2 * np.pi * rng.uniform(400, 1200) * tc)
                _add(x, 0.8 * burst, at)
    x += noise * rng.standard_normal(n)
    return (0.8 * x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def write_heart_corpus(dest, per_class=12, seed=0, rate=4000, duration_s=(4.0, 8.0)):
    """Write a folder dataset ``dest/<kind>/syn_<kind>_<nnn>.wav`` of synthetic heart sounds.

    Heart rate, duration and noise vary per recording; returns the list of paths.
    Written at ``rate`` (not the model's rate) so that preparation really resamples.
    """
    rng = np.random.RandomState(seed)
    paths = []
    for kind in HEART_KINDS:
        folder = os.path.join(str(dest), kind)
        if not os.path.isdir(folder):
            os.makedirs(folder)
        for index in range(per_class):
            path = os.path.join(folder, "syn_%s_%03d.wav" % (kind, index))
            audio = heart_sound(kind, bpm=rng.uniform(55, 110), duration_s=rng.uniform(*duration_s), rate=rate,
                                seed=int(rng.randint(0, 2 ** 31 - 1)), noise=rng.uniform(0.005, 0.05))
            write_wav(path, audio, rate)
            paths.append(path)
    return paths

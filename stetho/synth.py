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

# The demo's heart sounds (train_host/synthesize.py, `make demo`): the same generator with classes made to differ
# plainly in the picture the network sees (heart preset, R=64: 12.5 Hz per row, 47 ms per column).  The murmur
# is louder (0.6 of S1's amplitude: a bright 150-400 Hz band in every systole); the S3 is nearly as loud as S1
# (0.9) and as long (0.10 s), still low (40 Hz), starting 0.16 s after S2's centre (0.2 s onset to onset, a little
# later than the 0.12-0.18 s usually quoted, so that it stays apart from S2 in 47 ms columns); heart rates stay at
# rest (DEMO_BPM): above ~90 bpm diastole gets so short (0.29 s at 110 bpm) that the next S1, as low and as long,
# falls about where an S3 would, and normal recordings were then read as 'extra'.
DEMO_SOUND = {"murmur_gain": 0.6, "s3_gain": 0.9, "s3_hz": 40.0, "s3_delay_s": 0.16, "s3_s": 0.10}
DEMO_BPM = (55.0, 90.0)
# write_heart_corpus leaves this file in the corpus folder (hidden: the folder adapter skips it) and prepare.py
# records "synthetic": true in prepare.json when it finds it; training copies that into model.json, and the
# device's status page then shows its "synthetic data" banner.
CORPUS_MARKER = ".synthetic"


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


def heart_sound(kind="normal", bpm=72.0, duration_s=5.0, rate=2000, seed=0, noise=0.02, return_beats=False,
                murmur_hz=(150.0, 400.0), murmur_gain=0.35, s3_hz=35.0, s3_gain=0.5, s3_delay_s=0.15, s3_s=0.07):
    """A synthetic phonocardiogram.

    kind: 'normal' (S1 + S2), 'murmur' (plus a crescendo–decrescendo systolic
    murmur, 150–400 Hz noise between S1 and S2) or 'extra' (plus an S3, a
    low 35 Hz thud 150 ms after S2).  bpm: heart rate (each beat jitters ±3%);
    the first S1 falls at a random phase in the first cycle.  noise: white
    background level.  Returns float32 (duration_s·rate,), peak 0.8, and with
    ``return_beats`` also the S1 times in seconds.

    The murmur and the S3 can be changed (the defaults are the ones above;
    DEMO_SOUND holds the demo's): murmur_hz (low, high) band in Hz and
    murmur_gain (peak amplitude, S1 = 1); s3_hz (Hz), s3_gain (S1 = 1),
    s3_delay_s (centre of S2 to start of S3, s) and s3_s (burst length, s).
    """
    if kind not in HEART_KINDS:
        raise ValueError("kind must be one of %s" % (HEART_KINDS,))
    rng = np.random.RandomState(seed)
    n = int(round(duration_s * rate))
    x = np.zeros(n)
    period = 60.0 / bpm
    systole = systole_s(bpm)
    beat = rng.uniform(0.05, 0.5) * period
    murmur_noise = _band_noise(n, rate, murmur_hz[0], murmur_hz[1], rng) if kind == "murmur" else None
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
                x[start:start + seg.size] += murmur_gain * seg
        if kind == "extra":
            _add(x, s3_gain * _tone_burst(rate, s3_hz, s3_s, rng), s2 + s3_delay_s * rate)
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


def write_heart_corpus(dest, per_class=12, seed=0, rate=4000, duration_s=(4.0, 8.0), bpm=(55.0, 110.0), sound=None):
    """Write a folder dataset ``dest/<kind>/syn_<kind>_<nnn>.wav`` of synthetic heart sounds.

    Heart rate (uniform in ``bpm``), duration (uniform in ``duration_s``, seconds) and
    noise vary per recording; ``sound``: more heart_sound arguments for every
    recording (e.g. DEMO_SOUND).  Also writes ``dest/.synthetic`` (CORPUS_MARKER),
    which prepare.py records as ``"synthetic": true``.  Returns the list of WAV paths.
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
            audio = heart_sound(kind, bpm=rng.uniform(*bpm), duration_s=rng.uniform(*duration_s), rate=rate,
                                seed=int(rng.randint(0, 2 ** 31 - 1)), noise=rng.uniform(0.005, 0.05), **(sound or {}))
            write_wav(path, audio, rate)
            paths.append(path)
    with open(os.path.join(str(dest), CORPUS_MARKER), "w") as handle:
        handle.write("synthetic heart sounds (stetho.synth): for demos and tests only; they mean nothing "
                     "clinically\n")
    return paths

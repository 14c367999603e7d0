"""Signal-quality gate: is this window worth a diagnosis?

Runs on the raw window (before the contract's conditioning normalises it away)
and answers one of:

==========  ================  ==========================================================
quality     decision          test (the heart's values; all on the DC-removed window)
==========  ================  ==========================================================
silent      'no signal'       RMS below ``silence_dbfs`` = −60 dBFS (mic unplugged from
                              the chest piece, muted input, zeros from the driver)
clipping    'poor contact'    at least ``clip_fraction`` = 2 % of samples at or above
                              ``clip_level`` = 0.99 of full scale (gain too high,
                              chest piece knocked)
handling    'poor contact'    one 100 ms frame holds at least ``handling_share`` = 75 %
                              of the window's energy (a thump, a tap on the tubing)
rubbing     'poor contact'    spectral flatness inside the contract's pass band at least
                              ``flatness`` = 0.45 (broadband friction noise: skin, clothes
                              or hair rubbing the diaphragm drowns the body sound)
ok          (the network's)   none of the above
==========  ================  ==========================================================

The thresholds belong to the kind of sound: they are the contract's ``quality``
section (stetho.contract.QualityGateConfig, stored in model.json), set by each
preset; the table above gives the heart's, which are also the default of a
contract stored before the section existed.  :meth:`QualityConfig.from_contract`
reads them, and the service's ``--quality-*`` flags override single values
(``--no-quality`` turns the gate off).

Where the numbers come from (windows of the heart preset, 3 s at 2 kHz, and
the lung preset, 8 s at 4 kHz, on ``../shared/data``, as tests/test_quality_gate.py
measures them): real recordings reach at most −55 dBFS quietest RMS
(PhysioNet), 1.1 % clipped samples (Yaseen, resampled) and 60 % energy in one
100 ms frame (ICBHI); white noise has flatness 0.56 (e^-γ for a periodogram)
and a handling thump 96 % energy in one frame.  Every Yaseen window and every
ICBHI-sample window passes; of PhysioNet's 13973 windows 99.4 % pass, the rest
being windows of white-noise-like flatness (0.45-0.66, e.g. a0047), a few
clipped ones and thumps.  The cough preset looks for handling in 10 ms frames
(a cough's burst fills a 100 ms frame by nature); the vascular preset keeps the
heart's numbers (a bruit's flatness is 0.32-0.41).  See the preset functions
in stetho/contract.py.  They are heuristics for a stethoscope microphone, not
validated clinical criteria.
"""
import collections

import numpy as np

NO_SIGNAL = "no signal"
POOR_CONTACT = "poor contact"
QUALITY_DECISIONS = {"silent": NO_SIGNAL, "clipping": POOR_CONTACT, "handling": POOR_CONTACT,
                     "rubbing": POOR_CONTACT}

Verdict = collections.namedtuple("Verdict", "quality decision metrics")
Verdict.__doc__ = ("The gate's answer: quality ('ok', 'silent', 'clipping', 'handling', 'rubbing'), "
                   "decision (None when ok, else 'no signal' / 'poor contact'), metrics (dict of floats).")


class QualityConfig(object):
    """Thresholds of the gate (defaults: the heart's; see the module doc) and whether it is on."""

    def __init__(self, silence_dbfs=-60.0, clip_level=0.99, clip_fraction=0.02, handling_share=0.75,
                 flatness=0.45, frame_s=0.1, enabled=True):
        self.silence_dbfs = float(silence_dbfs)
        self.clip_level = float(clip_level)
        self.clip_fraction = float(clip_fraction)
        self.handling_share = float(handling_share)
        self.flatness = float(flatness)
        self.frame_s = float(frame_s)
        self.enabled = bool(enabled)

    @classmethod
    def from_contract(cls, contract, enabled=True, **overrides):
        """The contract's thresholds (its ``quality`` section), each ``overrides`` value that is not None
        replacing the contract's (the service's ``--quality-*`` flags; ConfigError when out of range)."""
        gate = contract.quality
        given = dict((k, v) for k, v in overrides.items() if v is not None)
        if given:
            gate = gate.replace(**given)
        return cls(enabled=enabled, **gate.to_dict())

    def __repr__(self):
        return "QualityConfig(%s)" % ", ".join("%s=%r" % item for item in sorted(vars(self).items()))


def measure(samples, rate, band_hz=(None, None), frame_s=0.1, clip_level=0.99):
    """Quality metrics of one raw window.

    Parameters
    ----------
    samples : float array (n,), full scale ±1
    rate : int, Hz
    band_hz : (low Hz or None, high Hz or None), the contract's pass band for the flatness
    frame_s : frame length (s) for the energy-share test

    Returns
    -------
    dict: rms_dbfs (dB re full scale), clipped (fraction of samples ≥ clip_level),
    max_frame_share (0..1), flatness (0..1, in band).
    """
    # Means are written as sum / n, and sums and extremes as the ufuncs' reductions (np.add.reduce for
    # .sum()): the same numbers as .mean(), .sum() and .max(), without their Python-level wrappers, each of
    # which costs tens of µs right after inference has flushed the CPU's caches.
    x = np.asarray(samples, dtype=np.float64).ravel()
    clipped = 0.0
    # most windows peak below the clip level: no need to count
    if x.size and max(np.maximum.reduce(x), -np.minimum.reduce(x)) >= clip_level:
        clipped = np.count_nonzero(np.abs(x) >= clip_level) / float(x.size)
    y = x - np.add.reduce(x) / x.size if x.size else x
    squared = y * y
    power = float(np.add.reduce(squared) / y.size) if y.size else 0.0
    rms_dbfs = 10.0 * np.log10(max(power, 1e-20))
    frame = max(1, int(round(frame_s * rate)))
    n_frames = y.size // frame
    if n_frames >= 2 and power > 0:
        energy = squared[:n_frames * frame].reshape(n_frames, frame).sum(axis=1)
        share = float(np.maximum.reduce(energy) / max(np.add.reduce(energy), 1e-30))
    else:
        share = 0.0
    flatness = 0.0
    if y.size >= 16 and power > 0:
        window, inside_band = _analysis(y.size, rate, band_hz)
        spectrum = np.fft.rfft(y * window)[inside_band]
        inside = spectrum.real ** 2 + spectrum.imag ** 2
        mean = np.add.reduce(inside) / inside.size if inside.size else 0.0
        if mean > 0:
            inside += 1e-30
            flatness = float(np.exp(np.add.reduce(np.log(inside, out=inside)) / inside.size) / mean)
    return {"rms_dbfs": round(float(rms_dbfs), 2), "clipped": round(clipped, 5),
            "max_frame_share": round(share, 4), "flatness": round(flatness, 4)}


_ANALYSIS = {}


def _analysis(n, rate, band_hz):
    """(Hann window, slice of the rfft bins inside the band) for n samples, cached per shape."""
    key = (n, rate, band_hz[0], band_hz[1])
    if key not in _ANALYSIS:
        freqs = np.fft.rfftfreq(n, 1.0 / rate)
        low = band_hz[0] if band_hz[0] is not None else 0.0
        high = band_hz[1] if band_hz[1] is not None else rate / 2.0
        if len(_ANALYSIS) > 16:
            _ANALYSIS.clear()
        inside = np.flatnonzero((freqs >= low) & (freqs <= high))  # contiguous: the bins rise with frequency
        _ANALYSIS[key] = (np.hanning(n), slice(inside[0], inside[-1] + 1) if inside.size else slice(0, 0))
    return _ANALYSIS[key]


def contract_band(contract):
    """The pass band (Hz) the contract's conditioning keeps: (highpass or None, lowpass or None)."""
    cond = contract.conditioning
    return cond.highpass_hz, cond.lowpass_hz


def assess(samples, rate, config=None, band_hz=(None, None)):
    """Judge one raw window: a :class:`Verdict` (quality, decision or None, metrics)."""
    config = config or QualityConfig()
    metrics = measure(samples, rate, band_hz, config.frame_s, config.clip_level)
    if not config.enabled:
        return Verdict("ok", None, metrics)
    if metrics["rms_dbfs"] < config.silence_dbfs:
        quality = "silent"
    elif metrics["clipped"] >= config.clip_fraction:
        quality = "clipping"
    elif metrics["max_frame_share"] >= config.handling_share:
        quality = "handling"
    elif metrics["flatness"] >= config.flatness:
        quality = "rubbing"
    else:
        return Verdict("ok", None, metrics)
    return Verdict(quality, QUALITY_DECISIONS[quality], metrics)

"""train_host/shared_audio.py: files cut from one recording with an overlap are found; chance matches are not."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from stetho import load_audio
from train_host.shared_audio import (MULTIPLIER, RUN_LENGTH, as_steps, candidate_offsets, fingerprint, same_audio,
                                     shared_audio_groups)


def noise(seed, n, scale=3000):
    """Audible 16-bit steps: low-passed noise, like a body sound at a few kHz."""
    x = np.random.RandomState(seed).normal(0, 1, n + 7)
    return np.round(np.convolve(x, np.ones(8) / 8, mode="valid") * scale).astype(np.int64)[:n]


def groups_of(pieces):
    return shared_audio_groups(lambda name: pieces[name], pieces)


def brute_force_fingerprint(steps, run_length=RUN_LENGTH, min_range=64):
    runs = np.lib.stride_tricks.sliding_window_view(steps, run_length)
    values = (steps + 32768).astype(np.uint64)
    hashes = np.zeros(len(runs), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(run_length):
            hashes = hashes * MULTIPLIER + values[k:k + len(runs)]
    audible = (np.ptp(runs, axis=1) >= min_range) & (np.abs(runs).max(axis=1) < 32767)
    unique, first = np.unique(hashes[audible], return_index=True)
    return unique, np.nonzero(audible)[0][first]


def test_fingerprint_hashes_every_audible_unclipped_run_once():
    steps = noise(0, 3000)
    steps[500:700] = 3          # near silence: its runs are left out
    steps[1000:1010] = 32767    # clipped: runs touching it are left out
    steps[2000:2100] = steps[2200:2300]  # a repeat inside the file: its hashes appear once, at the first place
    fp = fingerprint(steps)
    hashes, positions = brute_force_fingerprint(steps)
    assert np.array_equal(fp.hashes, hashes) and np.array_equal(fp.positions, positions)
    assert not np.any((fp.positions >= 500) & (fp.positions <= 700 - RUN_LENGTH))  # runs inside the silence
    assert not np.any((fp.positions > 1000 - RUN_LENGTH) & (fp.positions < 1010))
    assert fingerprint(steps[:RUN_LENGTH - 1]).hashes.size == 0
    with pytest.raises(ValueError, match="power of two"):
        fingerprint(steps, run_length=24)


def test_overlapping_cuts_are_one_group_with_their_offset():
    whole = noise(1, 20000)
    pieces = {"a": whole[:8000], "b": whole[6000:14000], "c": whole[14000 - RUN_LENGTH:], "other": noise(2, 9000)}
    groups, pairs = groups_of(pieces)
    assert groups == [["a", "b", "c"]]  # a|b share 2 000 samples, b|c one run of 32: joined transitively
    assert sorted(pairs) == [("a", "b", 6000, 2000), ("b", "c", 8000 - RUN_LENGTH, RUN_LENGTH)]


def test_cuts_that_only_touch_or_overlap_less_than_a_run_are_not_joined():
    whole = noise(3, 12000)
    assert groups_of({"a": whole[:6000], "b": whole[6000:]})[0] == []
    assert groups_of({"a": whole[:6000], "b": whole[6000 - RUN_LENGTH + 1:]})[0] == []


def test_a_copy_with_rounding_differences_is_the_same_audio():
    # PhysioNet's d0051 is d0018 re-rounded: 4 % of the samples differ by a step or two
    original = noise(4, 10000)
    copy = original[2000:9000].copy()
    copy[::97] += 1
    copy[50::97] -= 2
    groups, pairs = groups_of({"original": original, "copy": copy})
    assert groups == [["copy", "original"]] and pairs[0][2:] == (-2000, 7000)


def test_a_run_that_matches_by_chance_is_not_shared_audio():
    a, b = noise(5, 8000), noise(6, 8000)
    b[3000:3000 + RUN_LENGTH] = a[100:100 + RUN_LENGTH]  # one identical run, elsewhere unrelated
    assert candidate_offsets({"a": fingerprint(a), "b": fingerprint(b)}) == {("a", "b"): (100 - 3000, 1)}
    assert groups_of({"a": a, "b": b})[0] == []


def test_silence_and_clipping_that_two_files_share_do_not_join_them():
    a, b = noise(7, 8000), noise(8, 8000)
    for x in (a, b):
        x[2000:4000] = 0                          # digital silence
        x[5000:5500] = np.where(np.arange(500) % 40 < 20, 32767, -32768)  # a clipped square wave
    assert candidate_offsets({"a": fingerprint(a), "b": fingerprint(b)}) == {}


def test_same_audio_compares_the_whole_overlap():
    a = noise(9, 5000)
    assert same_audio(a, a[1000:3000], 1000) and same_audio(a[1000:3000], a, -1000)
    assert not same_audio(a, a[1000:3000], 1001)
    assert not same_audio(a, a[:RUN_LENGTH - 1], 0)  # less than one run in common
    assert not same_audio(a, a, len(a))               # no overlap at all
    silent = np.zeros(100, np.int64)
    assert same_audio(silent, silent, 0) and not same_audio(silent, silent + 1, 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10 ** 6), st.integers(RUN_LENGTH, 3000), st.integers(500, 4000), st.integers(500, 4000))
def test_any_overlap_of_a_run_or_more_is_found_and_unrelated_audio_never(seed, overlap, head, tail):
    whole = noise(seed, head + overlap + tail)
    a, b = whole[:head + overlap], whole[head:]
    groups, pairs = groups_of({"a": a, "b": b, "c": noise(seed + 1, 3000)})
    assert groups == [["a", "b"]] and pairs == [("a", "b", head, overlap)]


def test_as_steps_is_exact_for_16_bit_audio(tmp_path):
    from stetho import write_wav
    steps = noise(10, 4000)
    path = str(tmp_path / "clip.wav")
    write_wav(path, steps / 32768.0, 4000)
    samples, rate = load_audio(path)
    assert rate == 4000 and np.array_equal(as_steps(samples), steps)


def test_yaseen_clips_are_overlapping_cuts_of_longer_recordings(yaseen):
    clips = ["New_MR_%03d" % i for i in (79, 80, 81, 82)] + ["New_MVP_%03d" % i for i in (112, 114, 194, 195)]
    pieces = dict((name, as_steps(load_audio(str(yaseen / (name.split("_")[1] + "_New") / (name + ".wav")))[0]))
                  for name in clips)
    groups, pairs = groups_of(pieces)
    # MR_080 ends with the first 1.4 s of MR_081 (the pair every network and the MFCC baseline call AS);
    # MVP_194|195 share exactly one run at the cut; MVP_112|114 share a few runs by chance and stay apart
    assert ["New_MR_080", "New_MR_081"] in groups and ["New_MVP_194", "New_MVP_195"] in groups
    assert not any("New_MVP_112" in g or "New_MR_079" in g for g in groups)
    overlap = dict(((a, b), n) for a, b, _, n in pairs)
    assert overlap[("New_MR_080", "New_MR_081")] > 8000 and overlap[("New_MVP_194", "New_MVP_195")] == RUN_LENGTH


def test_the_command_lists_the_groups_of_a_folder(tmp_path):
    import json
    import subprocess
    import sys
    from stetho import write_wav
    from test_service_support import REPO
    whole = noise(11, 30000)
    (tmp_path / "clips" / "sub").mkdir(parents=True)
    write_wav(str(tmp_path / "clips" / "first.wav"), whole[:12000] / 32768.0, 4000)
    write_wav(str(tmp_path / "clips" / "sub" / "second.wav"), whole[10000:22000] / 32768.0, 4000)
    write_wav(str(tmp_path / "clips" / "other.wav"), noise(12, 9000) / 32768.0, 4000)
    (tmp_path / "clips" / "broken.wav").write_text("not audio")
    done = subprocess.run([sys.executable, "train_host/shared_audio.py", str(tmp_path / "clips"), "--json",
                           str(tmp_path / "out.json")], cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 files share audio: first.wav, sub/second.wav" in done.stdout
    assert "3 file(s) read, 2 of them share audio with another, in 1 group(s); 1 unreadable" in done.stdout
    assert "broken.wav" in done.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["pairs"] == [{"files": [str(tmp_path / "clips" / "first.wav"),
                                          str(tmp_path / "clips" / "sub" / "second.wav")],
                                "offset_samples": 10000, "overlap_samples": 2000}]

"""Find recordings that share audio: files cut from one recording with an overlap.

Datasets are often cut from longer recordings, and the cuts may overlap: in
Yaseen 2018 most clips share a stretch of samples with the clip numbered next
to them (the last 1.4 s of MR_080 are the first 1.4 s of MR_081), and in
PhysioNet 2016 d0051 is a 13.6 s stretch of d0018.  Two such files are one
recording as far as an honest split is concerned; treated as two, one can be
trained on while the other is tested, and the test measures memory.

How (all at each file's own rate, on its samples as 16-bit steps):

1. :func:`fingerprint`: a 64-bit hash of every run of ``run_length``
   consecutive samples, with where it starts.  Nearly silent runs (peak to
   peak under ``min_range`` steps) and clipped ones are left out: those repeat
   by chance.
2. :func:`candidate_offsets`: files with a hash in common, and the offset
   (position in one minus position in the other) most of their common runs
   agree on.
3. :func:`same_audio`: the candidate is confirmed when, at that offset, the
   two files agree wherever both have audio: correlation at least
   ``min_correlation`` over the whole overlap.  A cut of one recording is a
   copy of it (correlation 1, or 0.97–0.99 for Yaseen's re-processed MVP
   copies); a run that matched by chance is not (correlation near 0).
4. :func:`shared_audio_groups`: confirmed pairs joined transitively.

A copy is found when at least one of its runs is sample for sample the
original's (re-rounding a few samples leaves plenty); a cut that was
resampled, re-gained or lossily re-encoded throughout is not found.

Memory is bounded whatever a recording's length: :func:`file_fingerprint`
reads a file block by block (:class:`Fingerprinter`, the same hashes and
positions as :func:`fingerprint` of the whole), keeping at most
``MAX_HASHES`` of them (a longer recording keeps those whose hash has its top
bits zero: the same runs in every file, so a common stretch still shows); and
a long recording in a candidate pair is compared from its file, block by block
(:func:`file_steps`), not loaded whole (2 hours at 44.1 kHz is 2.5 GB of steps).
"""
import collections

import numpy as np

RUN_LENGTH = 32          # samples per hashed run: 16 ms at 2 kHz, 4 ms at 8 kHz
MIN_RANGE = 64           # peak to peak of a run in 16-bit steps (-60 dB of full scale): quieter runs are not hashed
FULL_SCALE = 32767       # a run that reaches this is clipped and not hashed
MIN_CORRELATION = 0.9    # correlation over the aligned overlap for two files to share audio
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant of the polynomial hash
MAX_HASHES = 1 << 22     # hashes kept per recording (64 MB with their positions): 95 s at 44.1 kHz, 35 min at 2 kHz
BLOCK = 1 << 18          # samples read, hashed or compared at a time (~30 MB of temporaries)
LONG = 1 << 23           # recordings with more samples are compared from their file, block by block

Fingerprint = collections.namedtuple("Fingerprint", "hashes positions")


def as_steps(samples):
    """float samples in [-1, 1] → int64 16-bit steps (exact for 16-bit sources)."""
    return np.round(np.asarray(samples, dtype=np.float64) * 32768.0).astype(np.int64)


def _doubled(values, run_length, combine):
    """``combine`` folded over every run of ``run_length`` (a power of two) values, by doubling.

    ``combine(left, right, width)`` joins the results for two adjacent runs of
    ``width`` values each.  Returns one result per run start (n - run_length + 1).
    """
    width = 1
    while width < run_length:
        values = combine(values[:-width], values[width:], width)
        width *= 2
    return values


def fingerprint(steps, run_length=RUN_LENGTH, min_range=MIN_RANGE):
    """Hashes of every audible, unclipped run of ``run_length`` samples.

    Parameters
    ----------
    steps : np.ndarray, int (n,)
        Audio as 16-bit steps (:func:`as_steps`), at the file's own rate.
    run_length : int
        Samples per run, a power of two.
    min_range : int
        Runs whose peak to peak is below this many steps are left out.

    Returns
    -------
    Fingerprint: ``hashes`` (uint64, sorted, distinct) and ``positions``
    (int64, the first sample of the first run with that hash).  Empty when
    the audio is shorter than one run or has no audible run.
    """
    if run_length < 1 or run_length & (run_length - 1):
        raise ValueError("run_length must be a power of two, not %r" % run_length)
    steps = np.asarray(steps, dtype=np.int64)
    if steps.size < run_length:
        return Fingerprint(np.zeros(0, np.uint64), np.zeros(0, np.int64))
    highest = _doubled(steps, run_length, lambda a, b, _: np.maximum(a, b))
    lowest = _doubled(steps, run_length, lambda a, b, _: np.minimum(a, b))
    audible = (highest - lowest >= min_range) & (highest < FULL_SCALE) & (lowest > -FULL_SCALE)
    with np.errstate(over="ignore"):
        # polynomial hash: h(run) = sum of value[k] * M^(run_length-1-k), mod 2^64
        hashes = _doubled((steps + 32768).astype(np.uint64), run_length,
                          lambda a, b, width: a * (MULTIPLIER ** np.uint64(width)) + b)
    positions = np.nonzero(audible)[0]
    hashes, first = np.unique(hashes[positions], return_index=True)
    return Fingerprint(hashes, positions[first].astype(np.int64))


class Fingerprinter(object):
    """:func:`fingerprint` of a recording fed block by block, in bounded memory.

    ``push`` the recording's 16-bit steps in pieces of any size, then ``finish``: the hashes and first
    positions :func:`fingerprint` gives for the whole recording, as long as there are at most
    ``max_hashes`` distinct ones.  Beyond that only hashes below 2^(64-k) are kept, k the smallest that
    keeps at most ``max_hashes``: the same rule in every recording, so runs two recordings share are kept
    (or dropped) in both, and a shared stretch of a few times 2^k runs still shows.
    """

    def __init__(self, run_length=RUN_LENGTH, min_range=MIN_RANGE, max_hashes=MAX_HASHES):
        self.run_length, self.min_range, self.max_hashes = run_length, min_range, int(max_hashes)
        self.bits = 0  # hashes kept: those whose top ``bits`` bits are zero
        self._carry = np.zeros(0, np.int64)  # the last run_length - 1 steps: runs that straddle two pushes
        self._start = 0  # position of _carry[0] in the recording
        self._parts, self._count = [], 0

    def push(self, steps):
        steps = np.concatenate([self._carry, np.asarray(steps, dtype=np.int64)])
        if steps.size >= self.run_length:
            fp = fingerprint(steps, self.run_length, self.min_range)
            hashes, positions = self._kept(fp.hashes, fp.positions + self._start)
            self._parts.append((hashes, positions))
            self._count += hashes.size
            if self._count > self.max_hashes:
                self._merge()
        keep = min(steps.size, self.run_length - 1)
        self._start += steps.size - keep
        self._carry = steps[steps.size - keep:]

    def _kept(self, hashes, positions):
        if not self.bits:
            return hashes, positions
        keep = hashes < np.uint64(1 << (64 - self.bits))
        return hashes[keep], positions[keep]

    def _merge(self):
        """One part: the earliest position of each hash, the pushes in order; fewer kept while too many."""
        hashes = np.concatenate([h for h, _ in self._parts])
        positions = np.concatenate([p for _, p in self._parts])
        hashes, first = np.unique(hashes, return_index=True)  # the first occurrence: the earliest part's
        positions = positions[first]
        while hashes.size > self.max_hashes:
            self.bits += 1
            hashes, positions = self._kept(hashes, positions)
        self._parts, self._count = [(hashes, positions)], hashes.size

    def finish(self):
        """The recording's :class:`Fingerprint` (hashes sorted and distinct, int64 first positions)."""
        if not self._parts:
            return Fingerprint(np.zeros(0, np.uint64), np.zeros(0, np.int64))
        self._merge()
        hashes, positions = self._parts[0]
        return Fingerprint(hashes, positions.astype(np.int64))


def file_fingerprint(path, block=BLOCK, max_hashes=MAX_HASHES):
    """(Fingerprint, number of samples) of an audio file at its own rate, read block by block."""
    from stetho.audio_io import open_audio
    printer, frames = Fingerprinter(max_hashes=max_hashes), 0
    with open_audio(path) as reader:
        for samples in reader.blocks(block):
            printer.push(as_steps(samples))
            frames += samples.size
    return printer.finish(), frames


class FileSteps(object):
    """A long recording's 16-bit steps, read from its file a block at a time whenever they are compared."""

    def __init__(self, path, frames, block=BLOCK):
        self.path, self.frames, self.block = path, int(frames), int(block)

    def __len__(self):
        return self.frames

    def blocks(self, start, stop):
        """The steps of samples start..stop-1, in consecutive int64 arrays."""
        from stetho.audio_io import open_audio
        with open_audio(self.path) as reader:
            position = 0
            for samples in reader.blocks(self.block):
                low, high = max(start, position), min(stop, position + samples.size)
                if high > low:
                    yield as_steps(samples[low - position:high - position])
                position += samples.size
                if position >= stop:
                    return


def file_steps(path, frames, long=LONG):
    """A recording's steps for :func:`same_audio`: the whole array, or a :class:`FileSteps` beyond ``long``
    samples (then read from the file, a block at a time, each time they are compared)."""
    if frames > long:
        return FileSteps(path, frames)
    from stetho.audio_io import load_audio
    return as_steps(load_audio(path)[0])


def candidate_offsets(fingerprints):
    """Pairs of recordings with runs in common, and the offset most of those runs agree on.

    Parameters
    ----------
    fingerprints : dict {recording id: Fingerprint}

    Returns
    -------
    dict {(id_a, id_b): (offset, runs)} with id_a < id_b: sample ``i`` of a
    would be sample ``i - offset`` of b, and ``runs`` common runs agree on it.
    (A run found in three or more recordings pairs each with the next one in
    name order; the groups join them all the same.)
    """
    names = sorted(fingerprints)
    if len(names) < 2:
        return {}
    every = np.sort(np.concatenate([fingerprints[n].hashes for n in names]))
    common = every[1:][every[1:] == every[:-1]]  # sorted, so its repeats are neighbours too
    common = common[np.concatenate(([True], common[1:] != common[:-1]))] if common.size else common
    if not common.size:
        return {}
    hashes, positions, owners = [], [], []
    for i, name in enumerate(names):
        fp = fingerprints[name]
        found = np.searchsorted(common, fp.hashes)
        keep = common[np.minimum(found, common.size - 1)] == fp.hashes
        hashes.append(fp.hashes[keep])
        positions.append(fp.positions[keep])
        owners.append(np.full(int(keep.sum()), i, np.int64))
    hashes, positions, owners = np.concatenate(hashes), np.concatenate(positions), np.concatenate(owners)
    order = np.argsort(hashes, kind="stable")  # stable: equal hashes stay in owner (name) order
    hashes, positions, owners = hashes[order], positions[order], owners[order]
    same = np.nonzero(hashes[1:] == hashes[:-1])[0]
    # one int64 key per (a, b, offset): offsets lie within ±span
    span = int(positions.max()) + 1
    keys, counts = np.unique((owners[same] * len(names) + owners[same + 1]) * (2 * span + 1)
                             + (positions[same] - positions[same + 1] + span), return_counts=True)
    best = {}
    for key, runs in zip(keys.tolist(), counts.tolist()):
        pair_index, offset = divmod(key, 2 * span + 1)
        a, b = divmod(pair_index, len(names))
        offset -= span
        pair = (names[a], names[b])
        if pair not in best or runs > best[pair][1]:
            best[pair] = (int(offset), int(runs))
    return best


def same_audio(steps_a, steps_b, offset, min_correlation=MIN_CORRELATION, run_length=RUN_LENGTH):
    """Whether a and b hold the same audio where they overlap when b is shifted by ``offset``.

    Sample ``i`` of a is set against sample ``i - offset`` of b over every
    ``i`` where both exist (at least ``run_length`` samples); their Pearson
    correlation must be at least ``min_correlation`` (when either side is
    constant there, they must be equal).
    """
    start, stop = max(0, offset), min(len(steps_a), len(steps_b) + offset)
    if stop - start < run_length:
        return False
    if not (isinstance(steps_a, np.ndarray) and isinstance(steps_b, np.ndarray)):
        return _same_audio_streamed(steps_a, steps_b, offset, start, stop, min_correlation)
    a = np.asarray(steps_a[start:stop], dtype=np.float64)
    b = np.asarray(steps_b[start - offset:stop - offset], dtype=np.float64)
    da, db = a - a.mean(), b - b.mean()
    power = np.sqrt(np.dot(da, da) * np.dot(db, db))
    if power == 0:
        return bool(np.array_equal(a, b))
    return float(np.dot(da, db) / power) >= min_correlation


def _blocks_of(steps, start, stop):
    if isinstance(steps, np.ndarray):
        return (steps[i:min(stop, i + BLOCK)] for i in range(start, stop, BLOCK))
    return steps.blocks(start, stop)


def _aligned(steps_a, steps_b, offset, start, stop):
    """Equal-length pieces (a[i], b[i - offset]) for i in start..stop-1."""
    pieces_b, held = _blocks_of(steps_b, start - offset, stop - offset), np.zeros(0, np.int64)
    for a in _blocks_of(steps_a, start, stop):
        while held.size < a.size:
            held = np.concatenate([held, next(pieces_b)])
        yield a, held[:a.size]
        held = held[a.size:]


def _same_audio_streamed(steps_a, steps_b, offset, start, stop, min_correlation):
    """:func:`same_audio` for steps read block by block (:class:`FileSteps`): two passes, means then sums."""
    total_a = total_b = 0
    for a, b in _aligned(steps_a, steps_b, offset, start, stop):
        total_a += int(a.sum())
        total_b += int(b.sum())
    mean_a, mean_b = total_a / float(stop - start), total_b / float(stop - start)
    dot = power_a = power_b = 0.0
    equal = True
    for a, b in _aligned(steps_a, steps_b, offset, start, stop):
        da, db = a - mean_a, b - mean_b
        dot += float(np.dot(da, db))
        power_a += float(np.dot(da, da))
        power_b += float(np.dot(db, db))
        equal = equal and bool(np.array_equal(a, b))
    power = np.sqrt(power_a * power_b)
    if power == 0:
        return equal
    return dot / power >= min_correlation


def connected_groups(names, links):
    """Join ``names`` along ``links`` ((a, b) pairs), transitively.

    Returns {name: sorted list of the names in its group} (a name without
    links is a group of one).
    """
    parent = dict((name, name) for name in names)

    def root(item):
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for a, b in links:
        parent[root(a)] = root(b)
    members = collections.defaultdict(list)
    for name in sorted(parent):
        members[root(name)].append(name)
    return dict((name, members[root(name)]) for name in parent)


def shared_audio_groups(steps_of, names, fingerprints=None):
    """Recordings that share audio, joined transitively.

    Parameters
    ----------
    steps_of : callable(recording id) → np.ndarray of 16-bit steps
        Reads a recording: once per recording to fingerprint it when
        ``fingerprints`` is not given, and once more for each recording in
        a candidate pair (kept in memory while the pairs are checked).
    names : iterable of recording ids
    fingerprints : dict {id: Fingerprint}, optional

    Returns
    -------
    groups : list of sorted lists of ids (two or more each), sorted by first id
    pairs : list of (id_a, id_b, offset, overlap in samples), the confirmed pairs
    """
    names = sorted(names)
    if fingerprints is None:
        fingerprints = dict((name, fingerprint(steps_of(name))) for name in names)
    pairs, read = [], {}
    for (a, b), (offset, _) in sorted(candidate_offsets(fingerprints).items()):
        for name in (a, b):
            if name not in read:
                read[name] = steps_of(name)
        steps_a, steps_b = read[a], read[b]
        if same_audio(steps_a, steps_b, offset):
            pairs.append((a, b, offset, min(len(steps_a), len(steps_b) + offset) - max(0, offset)))
    joined = connected_groups(names, [(a, b) for a, b, _, _ in pairs]).values()
    groups = sorted(dict((m[0], m) for m in joined if len(m) > 1).values(), key=lambda m: m[0])
    return groups, pairs


def main(argv=None):
    """Audit audio files for shared audio before splitting them: ``python train_host/shared_audio.py FOLDER...``."""
    import argparse
    import json
    import os
    import sys
    if __package__ in (None, ""):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tqdm import tqdm
    from stetho import AudioError
    from train_host.adapters import is_audio, sorted_walk

    parser = argparse.ArgumentParser(description="List the audio files that share audio (overlapping cuts of one "
                                     "recording, or copies): each group must stay in one split.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders (searched recursively)")
    parser.add_argument("--json", metavar="OUT", help="also write the groups and pairs to this JSON file")
    args = parser.parse_args(argv)
    files = []
    for path in args.paths:
        if os.path.isdir(path):
            for folder, names in sorted_walk(path):
                files += [os.path.join(folder, n) for n in names if is_audio(n)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            parser.error("%s: no such file or folder" % path)
    files = sorted(set(os.path.abspath(f) for f in files))
    fingerprints, frames, unreadable = {}, {}, []
    for path in tqdm(files, desc="shared audio", unit="file", disable=None):
        try:
            fingerprints[path], frames[path] = file_fingerprint(path)
        except (AudioError, MemoryError) as error:
            unreadable.append(str(error) if isinstance(error, AudioError) else "%s: out of memory" % path)
    groups, pairs = shared_audio_groups(lambda path: file_steps(path, frames[path]), fingerprints, fingerprints)
    common = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0]) if files else ""

    def short(path):
        return os.path.relpath(path, common) if common else path

    for members in groups:
        print("%d files share audio: %s" % (len(members), ", ".join(short(m) for m in members)))
    for message in unreadable:
        print("skipped: %s" % message, file=sys.stderr)
    print("shared_audio: %d file(s) read, %d of them share audio with another, in %d group(s); %d unreadable"
          % (len(fingerprints), sum(len(g) for g in groups), len(groups), len(unreadable)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"files": len(fingerprints), "groups": groups, "unreadable": unreadable,
                       "pairs": [{"files": [a, b], "offset_samples": o, "overlap_samples": n}
                                 for a, b, o, n in pairs]}, handle, indent=1)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

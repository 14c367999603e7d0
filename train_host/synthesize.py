#!/usr/bin/env python3
"""Write the built-in demo dataset: synthetic heart sounds in a class-per-folder layout.

    python train_host/synthesize.py data/demo-heart-raw --held-out data/demo-heart-heldout.wav

Classes normal / murmur / extra (S3), built to differ plainly in the spectrogram
(stetho.synth.DEMO_SOUND: a bright systolic murmur band, a loud S3 early in
diastole, resting heart rates).  SYNTHETIC: for the demo and tests only;
accuracy on it means nothing clinically, and the corpus folder carries a
``.synthetic`` marker, so prepare.json and model.json say so.  By default 60
recordings per class of 3-6 s (1-2 three-second windows each; about 260 images).
An earlier corpus in DEST is replaced; a DEST holding anything else is refused.
``--held-out`` also writes one 12 s recording (a murmur unless --held-out-kind)
that the model never sees, long enough for the service's exam verdict (8 s).
"""
import argparse
import os
import re
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stetho import synth, write_wav  # noqa: E402

HELD_OUT_S = 12.0
HELD_OUT_BPM = 80.0
HELD_OUT_SEED_OFFSET = 10007   # the held-out recording's seed: --seed plus this, never a corpus recording's


def earlier_corpus(dest):
    """The files of an earlier corpus in ``dest`` (its marker and ``<class>/syn_<class>_NNN.wav``), to be replaced;
    [] when ``dest`` is new or empty.  Raises ValueError naming a file when ``dest`` holds anything else: this
    tool never deletes what it did not write."""
    if not os.path.exists(dest):
        return []
    if not os.path.isdir(dest):
        raise ValueError("%s is a file, not a folder" % dest)
    ours = re.compile(r"^(%s)/syn_\1_\d+\.wav$" % "|".join(synth.HEART_KINDS))
    found = []
    for folder, _, files in os.walk(dest):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, dest).replace(os.sep, "/")
            if rel != synth.CORPUS_MARKER and not ours.match(rel):
                raise ValueError("%s holds %s, which is not part of a synthetic corpus: choose a new or empty folder"
                                 % (dest, path))
            found.append(path)
    return found


def held_out_recording(kind="murmur", seed=0, rate=4000):
    """The demo's held-out recording: HELD_OUT_S seconds of ``kind`` at HELD_OUT_BPM, the demo's sound profile,
    float32 at ``rate`` Hz (seed: the corpus's --seed; the recording's own seed is offset from it)."""
    return synth.heart_sound(kind, bpm=HELD_OUT_BPM, duration_s=HELD_OUT_S, rate=rate,
                             seed=seed + HELD_OUT_SEED_OFFSET, **synth.DEMO_SOUND)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="folder to create (one subfolder per class)")
    parser.add_argument("--per-class", type=int, default=60, help="recordings per class (default 60)")
    parser.add_argument("--rate", type=int, default=4000, help="sample rate of the WAVs (Hz, default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", metavar="WAV", help="also write one unseen 12 s recording here")
    parser.add_argument("--held-out-kind", choices=synth.HEART_KINDS, default="murmur",
                        help="the held-out recording's class (default murmur)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    if args.rate < 1600:
        parser.error("--rate %d Hz is too low for the heart preset's 25-800 Hz band (at least 1600)" % args.rate)
    try:
        for path in earlier_corpus(args.dest):
            os.remove(path)
        paths = synth.write_heart_corpus(args.dest, per_class=args.per_class, seed=args.seed, rate=args.rate,
                                         duration_s=(3.0, 6.0), bpm=synth.DEMO_BPM, sound=synth.DEMO_SOUND)
        print("synthesize: %d synthetic recordings (%s) in %s: demo data, they mean nothing clinically"
              % (len(paths), "/".join(synth.HEART_KINDS), args.dest))
        if args.held_out:
            folder = os.path.dirname(os.path.abspath(args.held_out))
            if not os.path.isdir(folder):
                os.makedirs(folder)
            write_wav(args.held_out, held_out_recording(args.held_out_kind, args.seed, args.rate), args.rate)
            print("synthesize: held-out %s recording (%.0f s, never in the corpus) %s"
                  % (args.held_out_kind, HELD_OUT_S, args.held_out))
    except ValueError as error:
        print("synthesize: error: %s" % error, file=sys.stderr)
        return 2
    except OSError as error:
        print("synthesize: error: cannot write %s (%s)" % (error.filename or args.dest, error.strerror or error),
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

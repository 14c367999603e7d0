#!/usr/bin/env python3
"""Write the built-in demo dataset: synthetic heart sounds in a class-per-folder layout.

    python train_host/synthesize.py data/demo-heart-raw --held-out data/demo-heart-heldout.wav

Classes normal / murmur / extra (S3).  SYNTHETIC: for the demo and tests only;
accuracy on it means nothing clinically.  ``--held-out`` also writes one
recording the model never sees (a murmur, 12 s) for the service to replay.
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stetho import synth, write_wav  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="folder to create (one subfolder per class)")
    parser.add_argument("--per-class", type=int, default=16, help="recordings per class (default 16)")
    parser.add_argument("--rate", type=int, default=4000, help="sample rate of the WAVs (Hz, default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", help="also write one unseen 12 s murmur recording here")
    args = parser.parse_args(argv)
    paths = synth.write_heart_corpus(args.dest, per_class=args.per_class, seed=args.seed, rate=args.rate)
    print("synthesize: %d synthetic recordings (%s) in %s — demo data, not clinical"
          % (len(paths), "/".join(synth.HEART_KINDS), args.dest))
    if args.held_out:
        folder = os.path.dirname(os.path.abspath(args.held_out))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        write_wav(args.held_out, synth.heart_sound("murmur", bpm=80, duration_s=12.0, rate=args.rate,
                                                   seed=args.seed + 10007), args.rate)
        print("synthesize: held-out murmur recording %s" % args.held_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

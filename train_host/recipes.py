"""The recipes: per dataset, the prepare.py and train.py settings that bench/accuracy.py validated, in one place.

    python train_host/recipes.py                 # list them, with the commands they run

``make model RECIPE=<name> DATA=<folder>`` (train_host/model.py) trains a deployable model with a recipe, and
bench/accuracy.py's protocols take their settings from the same objects (``PROTOCOL_OF``: recipe → protocol), so a
figure measured by ``python bench/accuracy.py --protocol physionet-cv5`` is a figure of the model
``make model RECIPE=physionet2016`` builds, on other splits.  Why each value: the comments above bench/accuracy.py's
PROTOCOLS and docs/results.md.  What differs between the two is only the split: the protocol cross-validates
(K folds), the model trains once on ``split`` (train / val / test by recording group; val chooses the decision
rule, test is held back and reported).

Standard library only, so a plain ``python3`` can list the recipes and check a name before a virtual environment
exists.
"""
import collections
import sys

YASEEN_MAP = "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"
# PhysioNet from scratch underfits with train.py's default regularisation: no SpecAugment masks, weight decay 0.01
PHYSIONET_TRAIN = ("--aug-time-masks", "0", "--aug-freq-masks", "0", "--wd", "0.01")
MODEL_SPLIT = "0.7,0.15,0.15"   # train / val / test fractions of the recording groups, stratified by class

Recipe = collections.namedtuple("Recipe", (
    "name",          # the RECIPE= name; models/<name> by default
    "dataset",       # the dataset's folder name under the shared data folder (bench/accuracy.py --data)
    "adapter",       # prepare.py --adapter
    "preset",        # prepare.py --preset (the contract)
    "size",          # image size R, pixels (prepare.py --size)
    "window",        # segment length, s (prepare.py --window; None: the preset's)
    "hop",           # window step, s (prepare.py --hop; None: the preset's)
    "segment",       # prepare.py --segment (None: the preset's)
    "class_map",     # prepare.py --class-map OLD=NEW,... (None: the dataset's class names)
    "split",         # prepare.py --split of the deployable model (the protocol's own is K-fold or official)
    "epochs",        # train.py --epochs
    "batch_size",    # train.py -b
    "lr",            # train.py --lr (None: train.py's default)
    "balance",       # train.py --balance
    "select_level",  # train.py --select-level
    "patience",      # train.py --patience (0: never stop early)
    "train_args",    # further train.py flags, a tuple of strings
    "note",          # printed with the result (None: nothing to add)
))

RECIPES = collections.OrderedDict((r.name, r) for r in (
    # Yaseen's clips are overlapping cuts of 379 recordings (prepare.py joins them); the last of 30 epochs beat
    # the val-chosen one in every fold (--select last).
    Recipe(name="yaseen2018", dataset="yaseen2018", adapter="folder", preset="heart", size=64, window=3.0, hop=1.5,
           segment=None, class_map=YASEEN_MAP, split=MODEL_SPLIT, epochs=30, batch_size=32, lr=None,
           balance="none", select_level="recording", patience=0, train_args=("--select", "last"),
           note="Yaseen 2018 has no patient ids: the held-back test split is by source recording (the clips that "
                "share audio joined), so one patient's other recordings may sit in training"),
    # Peak-to-peak cardiac cycles up to 1.5 s, no time roll, the site-balanced sampler, the last of 10 epochs.
    Recipe(name="physionet2016", dataset="physionet2016", adapter="physionet2016", preset="heart", size=64,
           window=1.5, hop=3.0, segment="peaks", class_map=None, split=MODEL_SPLIT, epochs=10, batch_size=32,
           lr=None, balance="site-sampler", select_level="recording", patience=0,
           train_args=PHYSIONET_TRAIN + ("--aug-shift", "0", "--select", "last"),
           note="PhysioNet 2016 has no patient ids: the held-back test split is by recording"),
    # The official split; the project's sample has audio for 10 recordings only.
    Recipe(name="icbhi2017", dataset="icbhi2017_sample", adapter="icbhi2017", preset="lung", size=64, window=None,
           hop=None, segment=None, class_map=None, split="official", epochs=2, batch_size=16, lr=None,
           balance="none", select_level="window", patience=0, train_args=(),
           note="the ICBHI 2017 sample has audio for 10 recordings only: this model checks the pipeline end to "
                "end and is no lung-sound classifier; the full database gives one"),
))

# the bench/accuracy.py protocol that validated each recipe
PROTOCOL_OF = {"yaseen2018": "yaseen-cv5", "physionet2016": "physionet-cv5", "icbhi2017": "icbhi-official"}


class RecipeError(Exception):
    """An unknown recipe name (the message is one line naming the known ones)."""


def get(name):
    """The recipe called ``name``; RecipeError naming the known ones otherwise."""
    if name not in RECIPES:
        raise RecipeError("unknown recipe %r (known: %s)" % (name, ", ".join(RECIPES)) if name else
                          "RECIPE is required: one of %s" % ", ".join(RECIPES))
    return RECIPES[name]


def extra_prepare(recipe):
    """The prepare.py flags after --split: [--segment MODE] [--class-map MAP]."""
    out = []
    if recipe.segment:
        out += ["--segment", recipe.segment]
    if recipe.class_map:
        out += ["--class-map", recipe.class_map]
    return out


def settings(recipe):
    """The recipe as a bench/accuracy.py protocol settings dict (its keys; lists, so a caller may extend them)."""
    return {"dataset": recipe.dataset, "adapter": recipe.adapter, "preset": recipe.preset, "size": recipe.size,
            "epochs": recipe.epochs, "window": recipe.window, "hop": recipe.hop, "batch_size": recipe.batch_size,
            "lr": recipe.lr, "balance": recipe.balance, "select_level": recipe.select_level,
            "patience": recipe.patience, "extra_prepare": extra_prepare(recipe),
            "train_args": list(recipe.train_args)}


def prepare_command(python, cfg, source, dest, split, seed=0, workers=2):
    """prepare.py's command line (a list, paths relative to the repository root) for a settings dict ``cfg``
    (:func:`settings`, possibly overridden) and a ``split`` (prepare.py --split)."""
    cmd = [python, "train_host/prepare.py", source, dest, "--adapter", cfg["adapter"], "--preset", cfg["preset"],
           "--size", str(cfg["size"]), "--seed", str(seed), "--workers", str(workers)]
    if cfg["window"]:
        cmd += ["--window", str(cfg["window"])]
    if cfg["hop"]:
        cmd += ["--hop", str(cfg["hop"])]
    return cmd + ["--split", split] + list(cfg["extra_prepare"])


def train_command(python, cfg, data, model_dir, seed=0, threads=None):
    """train.py's command line for a settings dict ``cfg``: from scratch unless its train_args name a weights file;
    ``threads`` None leaves train.py's default (one per core)."""
    extra = list(cfg.get("train_args", []))
    start = [] if "--weights" in extra else ["--no-pretrained"]
    cmd = [python, "train_host/train.py", data, "--model-dir", model_dir] + start + [
        "--epochs", str(cfg["epochs"]), "-b", str(cfg["batch_size"]), "--balance", cfg["balance"],
        "--select-level", cfg["select_level"], "--patience", str(cfg["patience"]), "--seed", str(seed)]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += ["--no-progress", "--force"]
    if cfg["lr"]:
        cmd += ["--lr", str(cfg["lr"])]
    return cmd + extra


def main():
    for recipe in RECIPES.values():
        cfg = settings(recipe)
        print("%s  (validated by python bench/accuracy.py --protocol %s)" % (recipe.name, PROTOCOL_OF[recipe.name]))
        print("  " + " ".join(prepare_command("python", cfg, "DATA", "data/" + recipe.name, recipe.split)))
        print("  " + " ".join(train_command("python", cfg, "data/" + recipe.name, "models/" + recipe.name)))
        if recipe.note:
            print("  note: " + recipe.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dataset adapters: turn a dataset as its users download it into recording records.

One function per layout.  Each is a generator that yields, in a deterministic
(sorted) order, either

- :class:`Recording`: one audio file to prepare, with its label, recording id,
  patient, site, annotated spans and preset split, or
- :class:`Skip`: an input that cannot be used (annotation without audio, file
  of an unsupported type, missing label...), with a short ``kind`` and a
  ``reason`` naming the file.

Adapters only read listings and small text files; audio is decoded later, in
parallel, by ``train_host/prepare.py``.  They never write anything.

Labels either belong to the whole recording (``label``; ``spans`` may still
mark annotated cycles) or to each annotated span (``label`` None and every
``Span.label`` set), as with ICBHI's per-cycle crackle/wheeze flags.
"""
import collections
import csv
import os
import re

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif")
ADAPTERS = ("folder", "physionet2016", "icbhi2017", "csv")
ICBHI_LABELS = ("cycle", "diagnosis", "binary")

Recording = collections.namedtuple("Recording", "path label recording patient site spans split")
Recording.__doc__ = """One recording to prepare.

path: audio file (absolute); label: class of the whole recording, or None when
every span carries its own; recording: id (file stem, made unique; image file
names start with it); patient: patient id or None (then the recording is its
own group, unless it shares audio with another: prepare.py joins those); site: acquisition site / device or None; spans: list of Span or
None; split: 'train'/'val'/'test' from the dataset's own split, or None.
"""

Span = collections.namedtuple("Span", "start_s end_s label")
Span.__doc__ = "An annotated piece of a recording: start and end (s), and its label (None = the recording's)."

Skip = collections.namedtuple("Skip", "path kind reason")
Skip.__doc__ = "An input left out: path, kind (short tag, e.g. 'no-audio'), reason (a sentence naming the file)."


class AdapterError(ValueError):
    """The source does not have the layout the adapter expects (names the path and what is missing)."""


def is_audio(name):
    return name.lower().endswith(AUDIO_EXTENSIONS)


def safe_id(text):
    """``text`` with every character outside [A-Za-z0-9._-] replaced by '_' (usable in any file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"


def assign_ids(candidates):
    """Unique, deterministic recording ids.

    ``candidates``: list of (stem, qualified) pairs in a fixed order, where
    ``qualified`` is a longer name (e.g. class or site + stem).  A stem used
    once is kept; colliding stems take their qualified name; any remaining
    collision gets '-2', '-3'... in order.  Returns the list of ids.
    """
    stems = [safe_id(stem) for stem, _ in candidates]
    counts = collections.Counter(stems)
    ids = [stem if counts[stem] == 1 else safe_id(qualified) for stem, (_, qualified) in zip(stems, candidates)]
    taken = set(ids)
    out, used = [], set()
    for name in ids:
        unique, number = name, 1
        while unique in used or (unique != name and unique in taken):
            number += 1
            unique = "%s-%d" % (name, number)
        used.add(unique)
        out.append(unique)
    return out


def parse_class_map(text):
    """'AS_New=AS,N_New=N' → {'AS_New': 'AS', 'N_New': 'N'}; 'OLD=' (empty) leaves class OLD out."""
    mapping = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        if "=" not in item:
            raise AdapterError("--class-map: %r is not OLD=NEW" % item)
        old, new = (side.strip() for side in item.split("=", 1))
        if not old:
            raise AdapterError("--class-map: %r has no old class name" % item)
        mapping[old] = new
    return mapping


def sorted_walk(root):
    """os.walk in sorted order, skipping hidden folders and files."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield folder, sorted(f for f in files if not f.startswith("."))


# ---------------------------------------------------------------------------------------------
# folder: SOURCE/<class>/**/<audio>

def folder(source):
    """One subfolder per class (searched recursively), any supported audio format.

    The class is the folder name (rename with ``--class-map``).  Recording id:
    the file stem, or ``<class folder>_<subpath>_<stem>`` when stems collide.
    No patient ids or sites.  Files of other types are skipped as
    'unsupported'; loose files beside the class folders as 'not-in-class-folder'.
    """
    source = os.path.abspath(source)
    if not os.path.isdir(source):
        raise AdapterError("%s: not a folder (the folder adapter wants one subfolder per class)" % source)
    top = sorted(n for n in os.listdir(source) if not n.startswith("."))
    classes = [n for n in top if os.path.isdir(os.path.join(source, n))]
    if not classes:
        raise AdapterError("%s: no class subfolders (expected SOURCE/<class>/<audio files>)" % source)
    for name in top:
        if name not in classes:
            yield Skip(os.path.join(source, name), "not-in-class-folder",
                       "%s: a file beside the class folders, not inside one" % os.path.join(source, name))
    found = []
    for label in classes:
        for folder_path, files in sorted_walk(os.path.join(source, label)):
            for file_name in files:
                path = os.path.join(folder_path, file_name)
                if not is_audio(file_name):
                    yield Skip(path, "unsupported", "%s: unsupported file type %r (audio types: %s)"
                               % (path, os.path.splitext(file_name)[1] or "(none)", " ".join(AUDIO_EXTENSIONS)))
                    continue
                stem = os.path.splitext(file_name)[0]
                qualified = os.path.splitext(os.path.relpath(path, source))[0].replace(os.sep, "_")
                found.append((path, label, stem, qualified))
    ids = assign_ids([(stem, qualified) for _, _, stem, qualified in found])
    for (path, label, _, _), recording in zip(found, ids):
        yield Recording(path, label, recording, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# physionet2016: SOURCE/training-<set>/{REFERENCE.csv, <record>.wav}

PHYSIONET_LABELS = {"-1": "normal", "1": "abnormal"}


def physionet2016(source):
    """The PhysioNet/CinC 2016 training sets.

    ``SOURCE/training-*/REFERENCE.csv`` lines ``record,label[,...]`` (1 =
    abnormal, -1 = normal) and ``<record>.wav`` beside it.  The set letter
    ('a'...'f') is the site; there are no patient ids, so each recording is
    its own group (prepare.py joins the ones that share audio: d0051 is a
    stretch of d0018).  Records without audio, audio without a REFERENCE line and
    unknown labels are skipped.
    """
    source = os.path.abspath(source)
    sets = sorted(n for n in os.listdir(source) if n.startswith("training-")
                  and os.path.isdir(os.path.join(source, n))) if os.path.isdir(source) else []
    if not sets:
        raise AdapterError("%s: no training-*/ folders (expected the PhysioNet 2016 layout "
                           "training-a/REFERENCE.csv + WAVs)" % source)
    found = []
    for set_name in sets:
        folder_path = os.path.join(source, set_name)
        site = set_name[len("training-"):]
        reference = os.path.join(folder_path, "REFERENCE.csv")
        if not os.path.isfile(reference):
            yield Skip(folder_path, "no-labels", "%s: no REFERENCE.csv; the set is left out" % folder_path)
            continue
        labels = {}
        try:
            with open(reference, newline="") as handle:
                rows = list(csv.reader(handle))
        except (OSError, ValueError) as error:
            yield Skip(reference, "no-labels", "%s: cannot read (%s); the set is left out" % (reference, error))
            continue
        for number, row in enumerate(rows, 1):
            row = [cell.strip() for cell in row]
            if not row or not row[0]:
                continue
            if len(row) < 2 or row[1] not in PHYSIONET_LABELS:
                yield Skip("%s:%d" % (reference, number), "bad-label",
                           "%s line %d: %r is not 'record,1' or 'record,-1'" % (reference, number, ",".join(row)))
                continue
            labels[row[0]] = PHYSIONET_LABELS[row[1]]
        wavs = dict((os.path.splitext(n)[0], n) for n in sorted(os.listdir(folder_path)) if is_audio(n))
        for record in sorted(labels):
            if record not in wavs:
                yield Skip(os.path.join(folder_path, record + ".wav"), "no-audio",
                           "%s: listed in REFERENCE.csv but no audio file" % os.path.join(folder_path, record + ".wav"))
                continue
            found.append((os.path.join(folder_path, wavs[record]), labels[record], record, site))
        for record in sorted(set(wavs) - set(labels)):
            path = os.path.join(folder_path, wavs[record])
            yield Skip(path, "unlabelled", "%s: not listed in %s" % (path, reference))
    ids = assign_ids([(record, "%s_%s" % (site, record)) for _, _, record, site in found])
    for (path, label, _, site), recording in zip(found, ids):
        yield Recording(path, label, recording, None, site, None, None)


# ---------------------------------------------------------------------------------------------
# icbhi2017: <name>.wav + <name>.txt, patient_diagnosis.csv, ICBHI_challenge_train_test.txt

ICBHI_NAME = re.compile(r"^(\d{3})_([0-9a-z]+)_([A-Za-z]+)_([a-z]+)_([A-Za-z0-9]+)$")
CYCLE_CLASSES = {(0, 0): "normal", (1, 0): "crackle", (0, 1): "wheeze", (1, 1): "both"}


def _find_file(source, name):
    """``name`` in ``source`` or its parent (the audio folder may be given instead of the dataset root)."""
    for folder_path in (source, os.path.dirname(source)):
        path = os.path.join(folder_path, name)
        if os.path.isfile(path):
            return path
    return None


def read_icbhi_cycles(path):
    """Annotation file → [Span(start_s, end_s, 'normal'|'crackle'|'wheeze'|'both')]. Raises AdapterError."""
    spans = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                start, end, crackle, wheeze = float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])
                label = CYCLE_CLASSES[(crackle, wheeze)]
            except (ValueError, IndexError, KeyError):
                raise AdapterError("%s line %d: %r is not 'start end crackles(0/1) wheezes(0/1)'"
                                   % (path, number, line.strip()))
            if not end > start >= 0:
                raise AdapterError("%s line %d: cycle %.3f–%.3f s is empty or negative" % (path, number, start, end))
            spans.append(Span(start, end, label))
    if not spans:
        raise AdapterError("%s: no annotated cycles" % path)
    return spans


def read_icbhi_diagnosis(path):
    """patient_diagnosis.csv (``ID,CLASS`` or headerless ``101,URTI``) → {'101': 'URTI', ...}."""
    out = {}
    with open(path, newline="") as handle:
        for row in csv.reader(handle, delimiter="\t" if path.endswith(".txt") else ","):
            row = [cell.strip() for cell in row]
            if len(row) >= 2 and row[0].isdigit():
                out[row[0]] = row[1]
    return out


def read_icbhi_split(path):
    """ICBHI_challenge_train_test.txt (``<name>\\t{train|test}``) → {name: 'train'|'test'}."""
    out = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("train", "test"):
                raise AdapterError("%s line %d: %r is not '<name> train|test'" % (path, number, line.strip()))
            out[fields[0]] = fields[1]
    return out


def _official_split(splits, name):
    """The official split of ``name``; falls back to the name without its device field, which
    the challenge renamed for a few recordings (see filename_differences.txt)."""
    if name in splits:
        return splits[name]
    prefix = name.rsplit("_", 1)[0] + "_"
    matches = sorted(value for key, value in splits.items() if key.startswith(prefix))
    return matches[0] if len(set(matches)) == 1 else None


def icbhi2017(source, labels="cycle"):
    """The ICBHI 2017 respiratory database (or a part of it).

    ``SOURCE`` is the dataset root (holding ``audio_and_txt_files/``) or that
    folder itself.  Every ``<patient>_<index>_<location>_<mode>_<device>.txt``
    annotation lists cycles ``start end crackles wheezes``; annotations
    without their ``.wav`` are skipped ('no-audio') and counted.

    ``labels``: 'cycle' (each cycle normal/crackle/wheeze/both), 'diagnosis'
    (the patient's diagnosis from patient_diagnosis.csv, for every cycle) or
    'binary' (healthy/unhealthy from the same file).  Patient: the first
    field of the name; site: the recording device (last field); split: the
    official train/test from ICBHI_challenge_train_test.txt when present.
    """
    if labels not in ICBHI_LABELS:
        raise AdapterError("icbhi2017 labels must be one of %s, not %r" % (ICBHI_LABELS, labels))
    source = os.path.abspath(source)
    audio_dir = os.path.join(source, "audio_and_txt_files")
    if not os.path.isdir(audio_dir):
        audio_dir = source
    if not os.path.isdir(audio_dir):
        raise AdapterError("%s: not a folder" % source)
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(audio_dir)
                   if n.endswith(".txt") and ICBHI_NAME.match(os.path.splitext(n)[0]))
    if not names:
        raise AdapterError("%s: no ICBHI annotation files (<patient>_<index>_<loc>_<mode>_<device>.txt)" % audio_dir)
    diagnosis = {}
    if labels != "cycle":
        path = _find_file(audio_dir, "patient_diagnosis.csv") or _find_file(source, "patient_diagnosis.csv")
        if path is None:
            raise AdapterError("%s: --labels %s needs patient_diagnosis.csv beside the audio folder" % (source, labels))
        diagnosis = read_icbhi_diagnosis(path)
    split_path = _find_file(audio_dir, "ICBHI_challenge_train_test.txt") or \
        _find_file(source, "ICBHI_challenge_train_test.txt")
    splits = read_icbhi_split(split_path) if split_path else {}
    for name in names:
        annotation = os.path.join(audio_dir, name + ".txt")
        audio = os.path.join(audio_dir, name + ".wav")
        if not os.path.isfile(audio):
            yield Skip(annotation, "no-audio", "%s: annotation without audio (%s.wav missing)" % (annotation, name))
            continue
        try:
            spans = read_icbhi_cycles(annotation)
        except AdapterError as error:
            yield Skip(annotation, "bad-annotation", str(error))
            continue
        except (OSError, ValueError) as error:  # unreadable, or not text
            yield Skip(annotation, "bad-annotation", "%s: cannot read annotation (%s)" % (annotation, error))
            continue
        patient, _, _, _, device = ICBHI_NAME.match(name).groups()
        label = None
        if labels != "cycle":
            if patient not in diagnosis:
                yield Skip(audio, "unlabelled", "%s: patient %s is not in patient_diagnosis.csv" % (audio, patient))
                continue
            label = diagnosis[patient] if labels == "diagnosis" else (
                "healthy" if diagnosis[patient].lower() == "healthy" else "unhealthy")
            spans = [Span(s.start_s, s.end_s, None) for s in spans]
        yield Recording(audio, label, safe_id(name), patient, device, spans, _official_split(splits, name))


# ---------------------------------------------------------------------------------------------
# csv: a manifest path,label[,patient][,site][,start,end][,split]

CSV_COLUMNS = ("path", "label", "patient", "site", "start", "end", "split")


def manifest(source):
    """A CSV manifest with a header row: ``path,label`` and optionally ``patient``, ``site``
    (clinic / device), ``start,end`` (seconds; one row per annotated span) and ``split`` (train/val/test).

    Paths are relative to the manifest's folder (or absolute).  Rows of the
    same path form one recording: with start/end every row is a labelled
    span; patient, site and split must then agree between its rows.  Recording id:
    the file stem, or ``<parent folder>_<stem>`` when stems collide.
    """
    source = os.path.abspath(source)
    if not os.path.isfile(source):
        raise AdapterError("%s: not a file (the csv adapter wants a manifest path,label[,...])" % source)
    base = os.path.dirname(source)
    try:
        with open(source, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, ValueError) as error:
        raise AdapterError("%s: cannot read the manifest (%s)" % (source, error))
    if not rows:
        raise AdapterError("%s: empty manifest" % source)
    header = [cell.strip().lower() for cell in rows[0]]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if "path" not in header or "label" not in header or unknown:
        raise AdapterError("%s: header %r must name path,label and optionally patient,site,start,end,split "
                           "(unknown: %s)" % (source, ",".join(rows[0]), ", ".join(unknown) or "none"))
    if ("start" in header) != ("end" in header):
        raise AdapterError("%s: start and end columns go together" % source)
    groups = collections.OrderedDict()
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        where = "%s line %d" % (source, number)
        if len(row) != len(header):
            yield Skip(where, "bad-row", "%s: %d fields, the header has %d" % (where, len(row), len(header)))
            continue
        cells = dict((name, cell.strip()) for name, cell in zip(header, row))
        if not cells["path"] or not cells["label"]:
            yield Skip(where, "bad-row", "%s: empty path or label" % where)
            continue
        span = None
        if "start" in cells:
            try:
                span = Span(float(cells["start"]), float(cells["end"]), cells["label"])
            except ValueError:
                yield Skip(where, "bad-row", "%s: start/end %r/%r are not numbers of seconds"
                           % (where, cells["start"], cells["end"]))
                continue
            if not span.end_s > span.start_s >= 0:
                yield Skip(where, "bad-row", "%s: span %.3f–%.3f s is empty or negative" % (where, span[0], span[1]))
                continue
        split = cells.get("split") or None
        if split not in (None, "train", "val", "test"):
            yield Skip(where, "bad-row", "%s: split %r is not train, val or test" % (where, split))
            continue
        path = os.path.normpath(os.path.join(base, cells["path"]))
        groups.setdefault(path, []).append((where, cells["label"], cells.get("patient") or None, span, split,
                                            cells.get("site") or None))
    found = []
    for path, items in groups.items():
        patients = set(item[2] for item in items)
        splits = set(item[4] for item in items)
        sites = set(item[5] for item in items)
        if len(patients) > 1 or len(splits) > 1 or len(sites) > 1:
            yield Skip(path, "bad-row", "%s: its rows (%s) disagree on patient, site or split"
                       % (path, ", ".join(item[0].rsplit(" ", 1)[1] for item in items)))
            continue
        if not is_audio(path):
            yield Skip(path, "unsupported", "%s: unsupported file type %r" % (path, os.path.splitext(path)[1]))
            continue
        if "start" in header:
            label, spans = None, [item[3] for item in items]
        elif len(set(item[1] for item in items)) > 1:
            yield Skip(path, "bad-row", "%s: listed with different labels and no start/end" % path)
            continue
        else:
            label, spans = items[0][1], None
        found.append((path, label, spans, items[0][2], items[0][4], items[0][5]))
    stems = [os.path.splitext(os.path.basename(item[0]))[0] for item in found]
    ids = assign_ids([(stem, "%s_%s" % (os.path.basename(os.path.dirname(item[0])), stem))
                      for stem, item in zip(stems, found)])
    for (path, label, spans, patient, split, site), recording in zip(found, ids):
        yield Recording(path, label, recording, patient, site, spans, split)


def apply_class_map(recordings, class_map):
    """Rename labels by ``class_map`` ({old: new}); new '' leaves the class out.

    Returns (recordings, skipped): a recording whose every label is left out
    becomes a Skip of kind 'excluded'.  Names in the map that match no label
    raise AdapterError (a typo must not pass silently).
    """
    if not class_map:
        return list(recordings), []
    present = set()
    for rec in recordings:
        present.update([rec.label] if rec.label is not None else [s.label for s in rec.spans])
    unknown = sorted(set(class_map) - present)
    if unknown:
        raise AdapterError("--class-map names %s, which no recording has (classes found: %s)"
                           % (", ".join(unknown), ", ".join(sorted(present))))
    kept, skipped = [], []
    for rec in recordings:
        if rec.label is not None:
            label = class_map.get(rec.label, rec.label)
            if label:
                kept.append(rec._replace(label=label))
            else:
                skipped.append(Skip(rec.path, "excluded",
                                    "%s: class %r left out by --class-map" % (rec.path, rec.label)))
            continue
        spans = [s._replace(label=class_map.get(s.label, s.label)) for s in rec.spans]
        spans = [s for s in spans if s.label]
        if spans:
            kept.append(rec._replace(spans=spans))
        else:
            skipped.append(Skip(rec.path, "excluded", "%s: every span's class left out by --class-map" % rec.path))
    return kept, skipped


def load(adapter, source, class_map=None, labels="cycle"):
    """Run adapter ``adapter`` on ``source``, then rename classes by ``class_map``.

    Returns (recordings, skipped) as lists, in the adapter's order.
    """
    if adapter == "folder":
        items = folder(source)
    elif adapter == "physionet2016":
        items = physionet2016(source)
    elif adapter == "icbhi2017":
        items = icbhi2017(source, labels)
    elif adapter == "csv":
        items = manifest(source)
    else:
        raise AdapterError("unknown adapter %r; choose one of %s" % (adapter, ", ".join(ADAPTERS)))
    recordings, skipped = [], []
    for item in items:
        (recordings if isinstance(item, Recording) else skipped).append(item)
    recordings, excluded = apply_class_map(recordings, class_map)
    return recordings, skipped + excluded

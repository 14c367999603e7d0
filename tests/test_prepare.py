"""train_host/prepare.py end to end: real datasets (skipped without ../shared/data), bad input, splits, resume."""
import collections
import json
import os
import shutil
import struct

import numpy as np
import pytest

from stetho import synth, write_wav
from stetho.png import read_png
from train_host import prepare
from train_host.splits import check_disjoint

YASEEN_MAP = "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"
SCHEMA_KEYS = {"schema_version", "contract", "preset", "adapter", "source", "classes", "size", "split", "images",
               "counts", "patients", "skipped", "created"}
IMAGE_KEYS = {"path", "split", "label", "recording", "patient", "group", "site", "source", "offset_s", "duration_s",
              "padded"}


def run(*args):
    return prepare.main([str(a) for a in args])


def snapshot(folder):
    """Every path under ``folder`` with its size and mtime (to prove nothing was written there)."""
    out = {}
    for root, dirs, files in os.walk(str(folder)):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.lstat(path)
            out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


def check_dataset(dest, size):
    """The invariants every prepared dataset must hold. Returns prepare.json."""
    data = json.load(open(os.path.join(str(dest), "prepare.json")))
    assert SCHEMA_KEYS <= set(data) and data["schema_version"] == 1 and data["size"] == size
    assert data["contract"]["spectrogram"]["size"] == size
    assert data["classes"] == sorted(data["classes"])
    with open(os.path.join(str(dest), "labels.txt"), "rb") as handle:
        assert handle.read() == ("\n".join(data["classes"]) + "\n").encode()
    on_disk = set()
    for split in ("train", "val", "test"):
        for root, _, files in os.walk(os.path.join(str(dest), split)):
            on_disk.update(os.path.relpath(os.path.join(root, f), str(dest)) for f in files)
    assert on_disk == set(i["path"] for i in data["images"])
    assert not os.path.exists(os.path.join(str(dest), prepare.WORK))
    counts = collections.defaultdict(collections.Counter)
    for image in data["images"]:
        assert set(image) == IMAGE_KEYS
        split, label, name = image["path"].split("/")
        assert (split, label) == (image["split"], image["label"]) and name.startswith(image["recording"] + "__")
        counts[split][label] += 1
    for split in ("train", "val", "test"):
        assert dict((k, v) for k, v in data["counts"][split].items() if v) == dict(counts[split])
    shared = set(data["split"].get("shared_by_official_split", []))
    check_disjoint(data["images"], ("recording", "patient", "group"),
                   allowed={"patient": shared, "group": set("patient:" + p for p in shared)})
    first = read_png(os.path.join(str(dest), data["images"][0]["path"]))
    assert first.shape == (size, size, 3) and first.dtype == np.uint8
    return data


def link_subset(src_root, names, dest_root):
    """Symlink ``names`` (paths relative to src_root) into dest_root, keeping the layout."""
    for name in names:
        target = os.path.join(str(dest_root), name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.join(str(src_root), name), target)


@pytest.fixture
def yaseen_subset(yaseen, tmp_path):
    names = ["%s_New/New_%s_%03d.wav" % (c, c, i) for c in ("AS", "MR", "MS", "MVP", "N") for i in range(1, 5)]
    link_subset(yaseen, names, tmp_path / "yaseen")
    return tmp_path / "yaseen"


def test_yaseen_subset_via_folder(yaseen_subset, tmp_path, capsys):
    before = snapshot(yaseen_subset)
    dest = tmp_path / "out"
    assert run(yaseen_subset, dest, "--preset", "heart", "--size", 32, "--class-map", YASEEN_MAP,
               "--split", "0.5,0.25,0.25", "--workers", 1) == 0
    data = check_dataset(dest, 32)
    assert data["classes"] == ["AS", "MR", "MS", "MVP", "N"]
    assert data["adapter"] == "folder" and data["preset"] == "heart" and data["source"] == str(yaseen_subset)
    # Yaseen's clips are overlapping cuts of longer recordings: AS 001-004 are one recording (001|002 share
    # 6 885 samples, 002|003 54, 003|004 7 079), MVP_002|003 another; MVP_001 and MVP_004 share audio with none
    assert data["split"]["group_by"] == "recording, recordings that share audio joined"
    assert "18 of them share audio" in data["split"]["note"] and "7 group(s)" in data["split"]["note"]
    shared = data["split"]["shared_audio"]
    assert shared["checked"] and shared["groups"] == [
        ["New_AS_001", "New_AS_002", "New_AS_003", "New_AS_004"], ["New_MR_001", "New_MR_002", "New_MR_003",
                                                                   "New_MR_004"],
        ["New_MS_001", "New_MS_002"], ["New_MS_003", "New_MS_004"], ["New_MVP_002", "New_MVP_003"],
        ["New_N_001", "New_N_002"], ["New_N_003", "New_N_004"]]
    assert {"recordings": ["New_AS_002", "New_AS_003"], "offset_samples": 20800, "overlap_samples": 54} \
        in shared["pairs"]
    group_splits = collections.defaultdict(set)
    for image in data["images"]:
        group_splits[image["group"]].add(image["split"])
    assert all(len(s) == 1 for s in group_splits.values()) and len(group_splits) == 9
    assert group_splits["audio:New_AS_001"] == group_splits["audio:New_MR_001"] == {"train"}  # a class's only group
    assert "recording:New_MVP_001" in group_splits and "recording:New_MVP_004" in group_splits
    assert data["recordings"] == {"train": 13, "val": 6, "test": 1} and sum(data["patients"].values()) == 9
    image = [i for i in data["images"] if i["recording"] == "New_AS_001"][0]
    assert image["source"] == str(yaseen_subset / "AS_New" / "New_AS_001.wav") and image["offset_s"] == 0.0
    assert 0 < image["duration_s"] <= 3.0 and image["patient"] is None
    assert snapshot(yaseen_subset) == before  # nothing written inside SOURCE
    out = capsys.readouterr().out
    assert "split check passed" in out and "NOTE" in out and "MVP" in out


def test_workers_do_not_change_the_result(yaseen_subset, tmp_path):
    a, b = tmp_path / "w1", tmp_path / "w2"
    assert run(yaseen_subset, a, "--preset", "heart", "--size", 32, "--class-map", YASEEN_MAP, "--workers", 1) == 0
    assert run(yaseen_subset, b, "--preset", "heart", "--size", 32, "--class-map", YASEEN_MAP, "--workers", 2) == 0
    da, db = json.load(open(str(a / "prepare.json"))), json.load(open(str(b / "prepare.json")))
    assert da["images"] == db["images"] and da["counts"] == db["counts"]
    for image in da["images"]:
        assert np.array_equal(read_png(str(a / image["path"])), read_png(str(b / image["path"])))
    c = tmp_path / "seed1"
    assert run(yaseen_subset, c, "--preset", "heart", "--size", 32, "--class-map", YASEEN_MAP, "--seed", 1) == 0
    assert json.load(open(str(c / "prepare.json")))["images"] != da["images"]


def test_physionet_subset(shared_data, tmp_path):
    root, src = shared_data / "physionet2016", tmp_path / "physionet"
    chosen = {"a": ["a0238", "a0405", "a0336", "a0296"], "b": ["b0033", "b0409", "b0031", "b0001"]}
    for site, records in chosen.items():
        link_subset(root, ["training-%s/%s.wav" % (site, r) for r in records], src)
        lines = [l for l in open(str(root / ("training-" + site) / "REFERENCE.csv")) if l.split(",")[0] in records]
        with open(str(src / ("training-" + site) / "REFERENCE.csv"), "w") as handle:
            handle.writelines(lines)
    dest = tmp_path / "out"
    assert run(src, dest, "--adapter", "physionet2016", "--preset", "heart", "--size", 32,
               "--split", "0.5,0.25,0.25") == 0
    data = check_dataset(dest, 32)
    assert data["classes"] == ["abnormal", "normal"]
    by_rec = collections.defaultdict(set)
    for image in data["images"]:
        by_rec[image["recording"]].add((image["split"], image["label"], image["site"]))
    assert sorted(by_rec) == sorted(chosen["a"] + chosen["b"])
    assert all(len(v) == 1 for v in by_rec.values())  # every window of a recording: one split, label, site
    assert by_rec["a0238"] == {(next(iter(by_rec["a0238"]))[0], "normal", "a")}
    assert by_rec["b0033"] == {(next(iter(by_rec["b0033"]))[0], "abnormal", "b")}
    assert len(data["images"]) > 3 * len(by_rec)  # 8-13 s recordings: several 3 s windows each
    offsets = sorted(i["offset_s"] for i in data["images"] if i["recording"] == "a0238")
    assert offsets[:3] == [0.0, 1.5, 3.0]


def test_physionet_recordings_that_share_audio_stay_in_one_split(shared_data, tmp_path, capsys):
    # d0051 is 13.6 s of d0018 (re-rounded: 96 % of the samples identical); d0007 and d0027 share one quiet
    # 16 ms run by chance and are not joined
    root, src = shared_data / "physionet2016", tmp_path / "physionet"
    records = ["d0001", "d0002", "d0003", "d0004", "d0007", "d0018", "d0027", "d0051"]
    link_subset(root, ["training-d/%s.wav" % r for r in records], src)
    with open(str(src / "training-d" / "REFERENCE.csv"), "w") as handle:
        handle.writelines(l for l in open(str(root / "training-d" / "REFERENCE.csv")) if l.split(",")[0] in records)
    for fold in range(2):
        dest = tmp_path / ("fold%d" % fold)
        assert run(src, dest, "--adapter", "physionet2016", "--preset", "heart", "--size", 32,
                   "--split", "kfold:2:%d" % fold, "--val-fraction", "0") == 0
        data = check_dataset(dest, 32)
        shared = data["split"]["shared_audio"]
        assert shared["groups"] == [["d0018", "d0051"]]
        assert shared["pairs"] == [{"recordings": ["d0018", "d0051"], "offset_samples": 2307,
                                    "overlap_samples": 27192}]
        where = dict((i["recording"], (i["split"], i["group"])) for i in data["images"])
        assert where["d0018"] == where["d0051"] and where["d0018"][1] == "audio:d0018"
        assert where["d0007"][1] == "recording:d0007" and where["d0027"][1] == "recording:d0027"
        assert "2 of them share audio with another and are joined into 1 group(s)" in capsys.readouterr().out


def test_icbhi_sample_official_split(shared_data, tmp_path, capsys):
    source = shared_data / "icbhi2017_sample"
    dest = tmp_path / "out"
    assert run(source, dest, "--adapter", "icbhi2017", "--preset", "lung", "--size", 32, "--split", "official") == 0
    data = check_dataset(dest, 32)
    assert len(data["images"]) == 97 and len(set(i["recording"] for i in data["images"])) == 10
    assert data["contract"]["segmentation"]["mode"] == "cycles" and data["labels"] == "cycle"
    assert data["classes"] == ["crackle", "normal", "wheeze"]
    no_audio = [s for s in data["skipped"] if s["kind"] == "no-audio"]
    assert len(no_audio) == 910 == len(data["skipped"])
    official = dict(line.split() for line in open(str(source / "ICBHI_challenge_train_test.txt")))
    for image in data["images"]:
        expected = ("train", "val") if official[image["recording"]] == "train" else ("test",)
        assert image["split"] in expected
    assert data["split"]["method"] == "official" and data["split"]["group_by"] == "patient"
    assert data["patients"] == {"train": 1, "val": 0, "test": 3}  # patient 103 is the only official-train one
    assert any("val is empty" in w for w in data["warnings"])
    # cycles: one image per annotated cycle, starting where the annotation starts
    cycles = [l.split() for l in open(str(source / "audio_and_txt_files" / "101_1b1_Al_sc_Meditron.txt"))]
    offsets = [i["offset_s"] for i in sorted(data["images"], key=lambda i: i["path"])
               if i["recording"] == "101_1b1_Al_sc_Meditron"]
    assert offsets == pytest.approx([float(c[0]) for c in cycles], abs=1.0 / 4000)
    assert "910 no-audio" in capsys.readouterr().out


def _spans_manifest(yaseen, tmp_path, clips):
    """A manifest of two 1 s spans per clip, two clips per patient: clips = {class: [clip number, ...]}."""
    rows = ["path,label,patient,start,end"]
    for cls, numbers in sorted(clips.items()):
        for k, i in enumerate(numbers):
            path = os.path.relpath(str(yaseen / ("%s_New" % cls) / ("New_%s_%03d.wav" % (cls, i))), str(tmp_path))
            patient = "%s-p%d" % (cls, k // 2 + 1)
            rows += ["%s,%s,%s,0.0,1.0" % (path, cls, patient), "%s,%s,%s,1.0,2.0" % (path, cls, patient)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_csv_manifest_groups_by_patient_and_cuts_spans(yaseen, tmp_path):
    # clips that share audio only within their pairs (AS 7|8, 9|10, 25|26; N 1|2, 3|4, 5|6): the patients stand
    manifest = _spans_manifest(yaseen, tmp_path, {"AS": [7, 8, 9, 10, 25, 26], "N": [1, 2, 3, 4, 5, 6]})
    dest = tmp_path / "out"
    assert run(manifest, dest, "--adapter", "csv", "--preset", "heart", "--size", 32, "--workers", 2) == 0
    data = check_dataset(dest, 32)
    assert data["contract"]["segmentation"]["mode"] == "cycles"  # start,end given: annotated spans by default
    assert len(data["images"]) == 24 and data["split"]["group_by"] == "patient"
    assert data["patients"] == {"train": 2, "val": 2, "test": 2}  # 3 patients per class
    assert set(i["group"] for i in data["images"]) == set("patient:%s-p%d" % (c, k) for c in ("AS", "N")
                                                          for k in (1, 2, 3))
    assert sorted(set(i["offset_s"] for i in data["images"])) == [0.0, 1.0]
    assert all(i["padded"] and i["duration_s"] == 1.0 for i in data["images"])  # 1 s spans fitted to 3 s


def test_patients_whose_recordings_share_audio_are_one_group(yaseen, tmp_path, capsys):
    # AS 1-6 are six cuts of one recording: filed under three patients, they are still one group and one split
    manifest = _spans_manifest(yaseen, tmp_path, {"AS": [1, 2, 3, 4, 5, 6], "N": [1, 2, 3, 4, 5, 6]})
    dest = tmp_path / "out"
    assert run(manifest, dest, "--adapter", "csv", "--preset", "heart", "--size", 32, "--workers", 1) == 0
    data = check_dataset(dest, 32)
    as_groups = set((i["group"], i["split"]) for i in data["images"] if i["label"] == "AS")
    assert as_groups == {("patient:AS-p1+AS-p2+AS-p3", "train")}  # train keeps a class's only group
    assert len(set(i["group"] for i in data["images"] if i["label"] == "N")) == 3
    assert data["split"]["shared_audio"]["groups"][0] == ["New_AS_%03d" % i for i in range(1, 7)]
    # without the search the three patients are split as filed (and AS 1-6 would leak across splits)
    capsys.readouterr()
    assert run(manifest, tmp_path / "ignored", "--adapter", "csv", "--preset", "heart", "--size", 32,
               "--shared-audio", "ignore") == 0
    ignored = json.load(open(str(tmp_path / "ignored" / "prepare.json")))
    assert ignored["split"]["shared_audio"] == {"checked": False, "groups": [], "pairs": [], "seconds": 0.0}
    assert len(set(i["split"] for i in ignored["images"] if i["label"] == "AS")) == 3


def _write_nan_wav(path, rate=2000):
    data = np.full(rate, 0.1, dtype="<f4")
    data[100] = np.nan
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data.nbytes) + data.tobytes()
    with open(str(path), "wb") as handle:
        handle.write(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.fixture
def corpus(tmp_path):
    """Two classes of three good synthetic clips each, plus one file of every kind of bad input."""
    src = tmp_path / "corpus"
    for kind in ("murmur", "normal"):
        os.makedirs(str(src / kind))
        for i in range(3):
            write_wav(str(src / kind / ("%s%d.wav" % (kind, i))),
                      synth.heart_sound(kind, bpm=70 + 5 * i, duration_s=4.0, rate=2000, seed=i), 2000)
    (src / "normal" / "empty.wav").write_bytes(b"")
    good = (src / "normal" / "normal0.wav").read_bytes()
    (src / "normal" / "truncated.wav").write_bytes(good[:len(good) // 2])
    (src / "murmur" / "text.wav").write_text("this is not audio\n")
    _write_nan_wav(src / "murmur" / "nan.wav")
    write_wav(str(src / "normal" / "short.wav"), synth.heart_sound("normal", duration_s=0.3, rate=2000), 2000)
    (src / "murmur" / "notes.txt").write_text("remember the murmurs\n")
    os.symlink(str(tmp_path / "gone.wav"), str(src / "normal" / "unreadable.wav"))
    return src


EXPECTED_BAD = {"empty.wav": "empty", "truncated.wav": "truncated", "text.wav": "corrupt", "nan.wav": "nan",
                "short.wav": "too-short", "notes.txt": "unsupported", "unreadable.wav": "unreadable"}


def test_bad_input_is_listed_and_the_run_goes_on(corpus, tmp_path, capsys):
    dest = tmp_path / "out"
    assert run(corpus, dest, "--preset", "heart", "--size", 32, "--workers", 2) == 0
    data = check_dataset(dest, 32)
    skipped = dict((os.path.basename(s["path"]), s) for s in data["skipped"])
    assert dict((name, s["kind"]) for name, s in skipped.items()) == EXPECTED_BAD
    for name, item in skipped.items():
        assert name in item["reason"]  # every reason names its file
    assert "NaN" in skipped["nan.wav"]["reason"] and "too short" in skipped["short.wav"]["reason"]
    assert sorted(set(i["recording"] for i in data["images"])) == sorted(
        "%s%d" % (k, i) for k in ("murmur", "normal") for i in range(3))
    assert "7 input(s) skipped" in capsys.readouterr().out


def test_nothing_usable_exits_nonzero(tmp_path, capsys):
    for kind in ("a", "b"):
        os.makedirs(str(tmp_path / "src" / kind))
        (tmp_path / "src" / kind / "x.wav").write_text("not audio")
    assert run(tmp_path / "src", tmp_path / "out", "--preset", "heart", "--size", 32) == 1
    assert "nothing usable" in capsys.readouterr().err
    assert not (tmp_path / "out" / "prepare.json").exists()


def test_resume_skips_finished_work_and_force_redoes(corpus, tmp_path, capsys):
    dest = tmp_path / "out"
    args = [corpus, dest, "--preset", "heart", "--size", 32, "--workers", 1]
    assert run(*args) == 0
    first = json.load(open(str(dest / "prepare.json")))
    stamps = dict((i["path"], os.stat(str(dest / i["path"])).st_mtime_ns) for i in first["images"])
    assert run(*args) == 0
    second = json.load(open(str(dest / "prepare.json")))
    assert second["work"]["reused"] == 6 and second["images"] == first["images"]
    assert dict((p, os.stat(str(dest / p)).st_mtime_ns) for p in stamps) == stamps  # not re-rendered
    # another seed: the same images, moved to their new splits without rendering
    assert run(*(args + ["--seed", 7])) == 0
    moved = check_dataset(dest, 32)
    assert moved["work"]["reused"] == 6 and len(moved["images"]) == len(first["images"])
    # another contract in the same DEST: a clear error, nothing touched; --force redoes it
    capsys.readouterr()
    assert run(*(args[:-2] + ["--size", 40])) == 2
    err = capsys.readouterr().err
    assert "different contract" in err and "R=32" in err and "R=40" in err and "--force" in err
    assert "spectrogram.size 32 → 40" in err
    # a change the one-line summary does not show is still named
    assert run(*(args + ["--set", "spectrogram.hop_length=100"])) == 2
    err = capsys.readouterr().err
    assert "spectrogram.hop_length 128 → 100" in err and "--force" in err
    assert json.load(open(str(dest / "prepare.json")))["size"] == 32
    assert run(*(args[:-2] + ["--size", 40, "--force"])) == 0
    redone = check_dataset(dest, 40)
    assert redone["work"]["reused"] == 0


def test_an_interrupted_run_resumes_from_its_staging_folder(corpus, tmp_path, monkeypatch):
    dest = tmp_path / "out"
    args = [corpus, dest, "--preset", "heart", "--size", 32, "--workers", 1]

    def crash(*_):
        raise RuntimeError("power cut")
    monkeypatch.setattr(prepare, "place", crash)
    with pytest.raises(RuntimeError):
        run(*args)
    monkeypatch.undo()
    assert not (dest / "prepare.json").exists() and (dest / prepare.WORK).is_dir()
    assert run(*args) == 0
    data = check_dataset(dest, 32)
    assert data["work"]["reused"] == 6
    fresh = tmp_path / "fresh"
    assert run(corpus, fresh, "--preset", "heart", "--size", 32) == 0
    assert json.load(open(str(fresh / "prepare.json")))["images"] == data["images"]


def _patient_manifest(yaseen, tmp_path, split_column):
    rows = ["path,label,patient" + (",split" if split_column else "")]
    for cls in ("AS", "N"):
        for i in range(1, 13):
            path = yaseen / ("%s_New" % cls) / ("New_%s_%03d.wav" % (cls, i))
            patient = "%s-p%d" % (cls, i % 2)  # two patients per class, six recordings each
            split = ",train" if i < 12 else ",test"
            rows.append("%s,%s,%s%s" % (path, cls, patient, split if split_column else ""))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_split_check_runs_on_every_run_and_fails_loudly(yaseen, tmp_path, monkeypatch, capsys):
    # a manifest whose own split puts a patient in train and test: refused, nothing moved into DEST
    manifest = _patient_manifest(yaseen, tmp_path, split_column=True)
    dest = tmp_path / "leak"
    assert run(manifest, dest, "--adapter", "csv", "--preset", "heart", "--size", 32, "--split", "official") == 3
    err = capsys.readouterr().err
    assert "split leak" in err and "patient AS-p0 in train and test" in err
    assert not (dest / "prepare.json").exists() and not (dest / "train").exists()
    # a grouping bug that forgets patients: the check, not the splitter, catches it
    manifest = _patient_manifest(yaseen, tmp_path, split_column=False)
    monkeypatch.setattr(prepare, "recording_groups",
                        lambda produced, shared: dict((rec.recording, rec.recording) for rec, _ in produced))
    assert run(manifest, tmp_path / "leak2", "--adapter", "csv", "--preset", "heart", "--size", 32) == 3
    assert "split leak" in capsys.readouterr().err


def test_the_same_sound_filed_under_two_classes_is_one_group_and_a_warning(tmp_path, capsys):
    src = tmp_path / "src"
    for kind in ("murmur", "normal"):
        os.makedirs(str(src / kind))
        for i in range(3):
            write_wav(str(src / kind / ("%s%d.wav" % (kind, i))),
                      synth.heart_sound(kind, bpm=64 + 6 * i, duration_s=4.0, rate=2000, seed=10 * i + len(kind)), 2000)
    shutil.copy(str(src / "murmur" / "murmur1.wav"), str(src / "normal" / "copy_of_murmur1.wav"))
    dest = tmp_path / "out"
    assert run(src, dest, "--preset", "heart", "--size", 32, "--split", "0.5,0.25,0.25") == 0
    data = check_dataset(dest, 32)
    assert data["split"]["shared_audio"]["groups"] == [["copy_of_murmur1", "murmur1"]]
    warning = [w for w in data["warnings"] if "share audio but are labelled differently" in w]
    assert len(warning) == 1 and str(src / "normal" / "copy_of_murmur1.wav") in warning[0]
    assert str(src / "murmur" / "murmur1.wav") in warning[0] and "WARNING these recordings share audio" in \
        capsys.readouterr().out
    assert len(set(i["split"] for i in data["images"] if i["recording"] in ("murmur1", "copy_of_murmur1"))) == 1


def test_labels_txt_rules(tmp_path, capsys):
    for kind in ("n01440764", "murmur"):
        os.makedirs(str(tmp_path / "src" / kind))
        for i in range(2):
            write_wav(str(tmp_path / "src" / kind / ("%s%d.wav" % (kind, i))),
                      synth.heart_sound("normal", duration_s=3.0, rate=2000, seed=i), 2000)
    assert run(tmp_path / "src", tmp_path / "out", "--preset", "heart", "--size", 32) == 2
    assert "synset" in capsys.readouterr().err
    assert run(tmp_path / "src", tmp_path / "out2", "--preset", "heart", "--size", 32,
               "--class-map", "n01440764=normal") == 0
    assert (tmp_path / "out2" / "labels.txt").read_bytes() == b"murmur\nnormal\n"


def test_dest_safety(corpus, tmp_path, capsys):
    assert run(corpus, corpus / "normal" / "out", "--preset", "heart", "--size", 32) == 2
    assert "inside the source" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    assert run(corpus, foreign, "--preset", "heart", "--size", 32) == 2
    assert "not a folder made by prepare.py" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "do not delete"
    assert run(corpus, tmp_path / "x", "--preset", "heart", "--segment", "cycles") == 2
    assert "needs annotated spans" in capsys.readouterr().err
    # a DEST prepared from one source is not silently replaced by another
    assert run(corpus, tmp_path / "ds", "--preset", "heart", "--size", 32) == 0
    other = tmp_path / "other"
    shutil.copytree(str(corpus), str(other), symlinks=True)
    capsys.readouterr()
    assert run(other, tmp_path / "ds", "--preset", "heart", "--size", 32) == 2
    assert "was made from source" in capsys.readouterr().err


def test_contract_overrides_are_what_prepare_json_stores(corpus, tmp_path, capsys):
    dest = tmp_path / "win"
    assert run(corpus, dest, "--preset", "heart", "--size", 24, "--window", 2, "--hop", 1) == 0
    data = check_dataset(dest, 24)
    seg = data["contract"]["segmentation"]
    assert (seg["mode"], seg["window_s"], seg["hop_s"]) == ("window", 2.0, 1.0)
    offsets = sorted(i["offset_s"] for i in data["images"] if i["recording"] == "normal0")
    assert offsets == [0.0, 1.0, 2.0]  # 4 s clip, 2 s windows every 1 s
    # peak-cut cycles: each image covers one beat, from its peak to the next
    dest = tmp_path / "peaks"
    assert run(corpus, dest, "--preset", "heart", "--size", 24, "--segment", "peaks", "--window", 1.2) == 0
    data = check_dataset(dest, 24)
    beats = sorted((i["offset_s"], i["duration_s"]) for i in data["images"] if i["recording"] == "normal0")
    assert 3 <= len(beats) <= 5  # 70 bpm for 4 s
    for (start, length), (following, _) in zip(beats, beats[1:]):
        assert length == pytest.approx(following - start, abs=1e-6) and 0.6 < length < 1.2
    assert run(corpus, tmp_path / "bad", "--preset", "heart", "--window", 0.01) == 2
    assert "window_s" in capsys.readouterr().err


def test_icbhi_official_split_that_shares_a_patient_is_kept_and_reported(tmp_path, capsys):
    """The published ICBHI split puts patients 156 and 218 in both train and test; honoured, allowed, reported."""
    audio = tmp_path / "icbhi" / "audio_and_txt_files"
    audio.mkdir(parents=True)
    names = {"156_2b3_Al_mc_AKGC417L": "test", "156_2b3_Ar_mc_AKGC417L": "train", "160_1b1_Al_sc_Meditron": "train",
             "161_1b1_Al_sc_Meditron": "train", "162_1b1_Al_sc_Meditron": "test"}
    for i, name in enumerate(sorted(names)):
        write_wav(str(audio / (name + ".wav")), synth.lung_sound("wheeze" if i % 2 else "normal", duration_s=6.0,
                                                               rate=4000, seed=i), 4000)
        (audio / (name + ".txt")).write_text("0.5\t2.5\t0\t%d\n2.5\t4.5\t0\t0\n" % (i % 2))
    (tmp_path / "icbhi" / "ICBHI_challenge_train_test.txt").write_text(
        "".join("%s\t%s\n" % item for item in sorted(names.items())))
    dest = tmp_path / "out"
    assert run(tmp_path / "icbhi", dest, "--adapter", "icbhi2017", "--preset", "lung", "--size", 24,
               "--split", "official") == 0
    data = check_dataset(dest, 24)
    assert data["split"]["shared_by_official_split"] == ["156"]
    for image in data["images"]:
        assert image["split"] in (("test",) if names[image["recording"]] == "test" else ("train", "val"))
    assert any("official split itself" in w for w in data["warnings"])
    out = capsys.readouterr().out
    assert "WARNING the dataset's official split itself" in out and "patient(s) 156 in two splits" in out
    with pytest.raises(Exception, match="patient 156 in train and test"):
        check_disjoint(data["images"])


def test_set_changes_the_contract_and_the_images_follow_it(corpus, tmp_path, capsys):
    from stetho import Contract, render_segment
    from stetho.contract import segments
    from stetho import load_audio
    dest = tmp_path / "out"
    assert run(corpus, dest, "--preset", "heart", "--size", 32, "--workers", 1, "--set", "spectrogram.top_db=50",
               "--set", "spectrogram.scale=mel", "--set", "spectrogram.n_mels=24",
               "--set", "conditioning.lowpass_hz=null", "--set", "spectrogram.equalize=median") == 0
    data = check_dataset(dest, 32)
    contract = Contract.from_dict(data["contract"])
    assert (contract.spectrogram.top_db, contract.spectrogram.scale, contract.spectrogram.n_mels) == (50, "mel", 24)
    assert contract.spectrogram.equalize == "median"
    assert contract.conditioning.lowpass_hz is None and contract.conditioning.highpass_hz == 25.0
    image = [i for i in data["images"] if i["recording"] == "murmur0"][0]
    samples, rate = load_audio(str(corpus / "murmur" / "murmur0.wav"))
    expected = render_segment(segments(samples, contract)[0].samples, contract)
    assert np.array_equal(read_png(str(dest / image["path"])), expected)
    assert not np.array_equal(expected, render_segment(segments(samples, contract)[0].samples,
                                                       contract.replace(spectrogram=contract.spectrogram.replace(
                                                           top_db=80.0))))


@pytest.mark.parametrize("setting, message", [
    ("spectrogram.topdb=50", "spectrogram has no field 'topdb'"),
    ("render.top_db=50", "SECTION one of conditioning, segmentation, spectrogram"),
    ("spectrogram.top_db", "expected SECTION.FIELD=VALUE"),
    ("spectrogram.top_db=-3", "top_db must be positive"),
    ("spectrogram.scale=log", "scale must be one of"),
])
def test_a_bad_set_is_refused_by_name_and_writes_nothing(corpus, tmp_path, capsys, setting, message):
    assert run(corpus, tmp_path / "out", "--preset", "heart", "--size", 32, "--set", setting) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "prepare.json").exists()


def test_val_fraction_zero_gives_a_kfold_without_val(corpus, tmp_path, capsys):
    dest = tmp_path / "out"
    assert run(corpus, dest, "--preset", "heart", "--size", 16, "--workers", 1, "--split", "kfold:3:0",
               "--val-fraction", 0) == 0
    data = json.loads((dest / "prepare.json").read_text())
    assert sum(data["counts"]["val"].values()) == 0 and sum(data["counts"]["test"].values()) > 0
    assert data["split"]["val_fraction_of_train"] == 0
    assert not any("val is empty" in w for w in data["warnings"])   # asked for: not a warning
    # the default keeps a val split
    assert run(corpus, tmp_path / "default", "--preset", "heart", "--size", 16, "--workers", 1,
               "--split", "kfold:3:0") == 0
    default = json.loads((tmp_path / "default" / "prepare.json").read_text())
    assert default["split"]["val_fraction_of_train"] == 0.15


@pytest.mark.parametrize("extra, message", [
    (["--split", "kfold:3:0", "--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--split", "0.7,0.15,0.15", "--val-fraction", "0"], "--val-fraction applies to --split official or kfold"),
])
def test_a_bad_val_fraction_is_refused(corpus, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        run(corpus, tmp_path / "out", "--preset", "heart", "--size", 16, *extra)
    assert stopped.value.code == 2 and message in capsys.readouterr().err

"""Dataset adapters: each on the real layout (../shared/data, skipped when absent) and on small made-up layouts."""
import collections
import os

import pytest

from train_host import adapters
from train_host.adapters import AdapterError, Span


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "w") as handle:
        handle.write(text)


def _kinds(skipped):
    return collections.Counter(s.kind for s in skipped)


# --- folder -----------------------------------------------------------------------------------

def test_folder_classes_ids_and_skips(tmp_path):
    for name in ("A/x.wav", "A/sub/y.flac", "B/x.wav", "B/z.mp3", "B/notes.txt", "B/.hidden.wav", "README.md"):
        _touch(tmp_path / name)
    recordings, skipped = adapters.load("folder", str(tmp_path))
    got = [(r.label, r.recording, os.path.relpath(r.path, str(tmp_path))) for r in recordings]
    # 'x' is in both classes: both take their class-qualified id; unique stems stay as they are
    assert got == [("A", "A_x", "A/x.wav"), ("A", "y", "A/sub/y.flac"), ("B", "B_x", "B/x.wav"), ("B", "z", "B/z.mp3")]
    assert all(r.patient is None and r.site is None and r.spans is None and r.split is None for r in recordings)
    assert _kinds(skipped) == {"unsupported": 1, "not-in-class-folder": 1}
    assert any("notes.txt" in s.reason and "unsupported file type '.txt'" in s.reason for s in skipped)


def test_class_map_renames_merges_and_drops(tmp_path):
    for name in ("AS_New/a.wav", "N_New/b.wav", "X_New/c.wav", "Y/d.wav"):
        _touch(tmp_path / name)
    recordings, skipped = adapters.load("folder", str(tmp_path),
                                        adapters.parse_class_map("AS_New=AS, N_New=N ,X_New=N,Y="))
    assert [(r.recording, r.label) for r in recordings] == [("a", "AS"), ("b", "N"), ("c", "N")]
    assert _kinds(skipped) == {"excluded": 1}
    with pytest.raises(AdapterError, match="AS_Nwe"):
        adapters.load("folder", str(tmp_path), {"AS_Nwe": "AS"})
    with pytest.raises(AdapterError, match="OLD=NEW"):
        adapters.parse_class_map("AS_New")


def test_ids_are_safe_and_unique():
    assert adapters.assign_ids([("a b", "A_a b"), ("a_b", "B_a_b"), ("c", "C_c")]) == ["A_a_b", "B_a_b", "c"]
    assert adapters.assign_ids([("x", "q"), ("x", "q")]) == ["q", "q-2"]
    assert adapters.assign_ids([("x", "q"), ("x", "q"), ("q-2", "z_q-2")]) == ["q", "q-3", "q-2"]


def test_folder_on_yaseen(yaseen):
    recordings, skipped = adapters.load("folder", str(yaseen), adapters.parse_class_map(
        "AS_New=AS,MR_New=MR,MS_New=MS,MVP_New=MVP,N_New=N"))
    assert len(recordings) == 1000 and not skipped
    assert collections.Counter(r.label for r in recordings) == dict((c, 200) for c in ("AS", "MR", "MS", "MVP", "N"))
    assert len(set(r.recording for r in recordings)) == 1000
    assert recordings[0].recording == "New_AS_001"


# --- physionet2016 ----------------------------------------------------------------------------

def test_physionet_layout(tmp_path):
    _touch(tmp_path / "training-a" / "REFERENCE.csv", "a0001,1\na0002,-1\na0003,1\na0004,0\n")
    for name in ("a0001.wav", "a0002.wav", "a0009.wav"):
        _touch(tmp_path / "training-a" / name)
    _touch(tmp_path / "training-b" / "REFERENCE.csv", "b0001,-1\n")
    _touch(tmp_path / "training-b" / "b0001.wav")
    recordings, skipped = adapters.load("physionet2016", str(tmp_path))
    assert [(r.recording, r.label, r.site, r.patient) for r in recordings] == [
        ("a0001", "abnormal", "a", None), ("a0002", "normal", "a", None), ("b0001", "normal", "b", None)]
    assert _kinds(skipped) == {"bad-label": 1, "no-audio": 1, "unlabelled": 1}
    with pytest.raises(AdapterError, match="training-"):
        adapters.load("physionet2016", str(tmp_path / "training-a"))


def test_physionet_real_counts(shared_data):
    recordings, skipped = adapters.load("physionet2016", str(shared_data / "physionet2016"))
    assert len(recordings) == 1099 and not skipped
    per_site = collections.Counter((r.site, r.label) for r in recordings)
    assert per_site[("a", "normal")] == 117 and per_site[("a", "abnormal")] == 292
    assert per_site[("c", "normal")] == 7 and per_site[("f", "abnormal")] == 34


# --- icbhi2017 --------------------------------------------------------------------------------

def test_icbhi_sample_cycles(shared_data):
    recordings, skipped = adapters.load("icbhi2017", str(shared_data / "icbhi2017_sample"))
    assert len(recordings) == 10
    assert sum(len(r.spans) for r in recordings) == 97
    assert _kinds(skipped) == {"no-audio": 910}
    assert collections.Counter(s.label for r in recordings for s in r.spans) == {"normal": 82, "wheeze": 14,
                                                                                  "crackle": 1}
    first = recordings[0]
    assert (first.recording, first.patient, first.site, first.split, first.label) == (
        "101_1b1_Al_sc_Meditron", "101", "Meditron", "test", None)
    assert first.spans[0] == Span(0.036, 0.579, "normal")
    assert [r.split for r in recordings].count("train") == 1  # 103_2b2_Ar_mc_LittC2SE


def test_icbhi_sample_diagnosis_and_binary(shared_data):
    source = str(shared_data / "icbhi2017_sample" / "audio_and_txt_files")  # the audio folder works too
    recordings, _ = adapters.load("icbhi2017", source, labels="diagnosis")
    assert dict((r.patient, r.label) for r in recordings) == {"101": "URTI", "102": "Healthy", "103": "Asthma",
                                                              "104": "COPD"}
    assert all(s.label is None for r in recordings for s in r.spans)
    recordings, _ = adapters.load("icbhi2017", source, labels="binary")
    assert collections.Counter(r.label for r in recordings) == {"unhealthy": 9, "healthy": 1}


def test_icbhi_layout_details(tmp_path):
    audio = tmp_path / "audio_and_txt_files"
    _touch(audio / "226_1b1_Pl_sc_LittC2SE.txt", "0.1\t1.2\t1\t1\n1.2\t2.5\t0\t0\n")
    _touch(audio / "226_1b1_Pl_sc_LittC2SE.wav")
    _touch(audio / "227_1b1_Al_sc_Meditron.txt", "0.1 1.2 2 0\n")
    _touch(audio / "227_1b1_Al_sc_Meditron.wav")
    _touch(tmp_path / "ICBHI_challenge_train_test.txt", "226_1b1_Pl_sc_Meditron\ttrain\r\n")
    recordings, skipped = adapters.load("icbhi2017", str(tmp_path))
    # the split file names the recording with another device (filename_differences.txt): matched without it
    assert [(r.recording, r.split, [s.label for s in r.spans]) for r in recordings] == [
        ("226_1b1_Pl_sc_LittC2SE", "train", ["both", "normal"])]
    assert _kinds(skipped) == {"bad-annotation": 1}
    with pytest.raises(AdapterError, match="patient_diagnosis.csv"):
        adapters.load("icbhi2017", str(tmp_path), labels="diagnosis")


# --- csv --------------------------------------------------------------------------------------

def test_csv_manifest(tmp_path):
    for name in ("audio/one.wav", "audio/two.wav", "other/two.wav", "audio/three.wav"):
        _touch(tmp_path / name)
    manifest = tmp_path / "lists" / "manifest.csv"
    _touch(manifest, "path,label,patient,start,end,split\n"
                     "../audio/one.wav,wheeze,p1,0.5,2.0,train\n"
                     "../audio/one.wav,normal,p1,2.0,4.0,train\n"
                     "../audio/two.wav,normal,p2,0,3,test\n"
                     "../other/two.wav,crackle,,1,2,\n"
                     "../audio/three.wav,normal,p3,2,1,val\n"
                     "../audio/three.wav,normal,p3,x,1,val\n"
                     "../audio/one.wav,normal,p9,5,6,train\n")
    recordings, skipped = adapters.load("csv", str(manifest))
    # one.wav's third row names another patient: the whole recording is refused, not half-used
    assert [(r.recording, r.patient, r.split, r.label) for r in recordings] == [
        ("audio_two", "p2", "test", None), ("other_two", None, None, None)]
    assert recordings[0].spans == [Span(0.0, 3.0, "normal")]
    assert recordings[0].path == str(tmp_path / "audio" / "two.wav")
    assert _kinds(skipped) == {"bad-row": 3}


def test_csv_manifest_without_spans(tmp_path):
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "b.ogg")
    _touch(tmp_path / "m.csv", "path,label\na.wav,x\nb.ogg,y\nc.txt,y\n")
    recordings, skipped = adapters.load("csv", str(tmp_path / "m.csv"))
    assert [(r.recording, r.label, r.spans) for r in recordings] == [("a", "x", None), ("b", "y", None)]
    assert _kinds(skipped) == {"unsupported": 1}
    _touch(tmp_path / "bad.csv", "file,label\na.wav,x\n")
    with pytest.raises(AdapterError, match="header"):
        adapters.load("csv", str(tmp_path / "bad.csv"))


def test_csv_manifest_site_column(tmp_path):
    for name in ("a.wav", "b.wav", "c.wav"):
        _touch(tmp_path / name)
    _touch(tmp_path / "m.csv", "path,label,site,start,end\n"
                               "a.wav,x,clinic1,0,1\n"
                               "a.wav,y,clinic1,1,2\n"
                               "b.wav,x,,0,1\n"
                               "c.wav,x,clinic1,0,1\n"
                               "c.wav,x,clinic2,1,2\n")
    recordings, skipped = adapters.load("csv", str(tmp_path / "m.csv"))
    assert [(r.recording, r.site) for r in recordings] == [("a", "clinic1"), ("b", None)]
    assert _kinds(skipped) == {"bad-row": 1} and "disagree on patient, site or split" in skipped[0].reason


def test_unreadable_text_files_are_skipped_or_refused_by_name(tmp_path):
    _touch(tmp_path / "p" / "training-a" / "REFERENCE.csv")
    (tmp_path / "p" / "training-a" / "REFERENCE.csv").write_bytes(b"\xff\xfe\x00garbage\x80")
    _touch(tmp_path / "p" / "training-b" / "REFERENCE.csv", "b0001,1\n")
    _touch(tmp_path / "p" / "training-b" / "b0001.wav")
    recordings, skipped = adapters.load("physionet2016", str(tmp_path / "p"))
    assert [r.recording for r in recordings] == ["b0001"]
    assert skipped[0].kind == "no-labels" and "training-a" in skipped[0].reason
    audio = tmp_path / "i"
    _touch(audio / "101_1b1_Al_sc_Meditron.wav")
    (audio / "101_1b1_Al_sc_Meditron.txt").write_bytes(b"\x80\x81 binary")
    recordings, skipped = adapters.load("icbhi2017", str(audio))
    assert not recordings and skipped[0].kind == "bad-annotation" and "101_1b1_Al_sc_Meditron.txt" in skipped[0].reason
    (tmp_path / "m.csv").write_bytes(b"path,label\n\xff\xfe")
    with pytest.raises(AdapterError, match="m.csv"):
        adapters.load("csv", str(tmp_path / "m.csv"))

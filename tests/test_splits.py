"""Grouped stratified splits and the leak check (pure functions, no data needed)."""
import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train_host.splits import (SplitLeakError, allocate, check_disjoint, dominant_label, grouped_stratified_split,
                               official_split, parse_fractions)


def test_parse_fractions():
    assert parse_fractions("0.7,0.15,0.15") == pytest.approx((0.7, 0.15, 0.15))
    assert parse_fractions("2,1,1") == pytest.approx((0.5, 0.25, 0.25))
    for bad in ("0.7,0.3", "a,b,c", "0,0.5,0.5", "0.8,-0.1,0.3"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (4, (2, 1, 1)),
                                         (10, (7, 2, 1)), (200, (140, 30, 30))])
def test_allocate_keeps_train_then_val_then_test(n, expected):
    assert allocate(n, (0.7, 0.15, 0.15)) == expected


def test_allocate_without_test_fraction():
    assert allocate(5, (0.85, 0.15, 0.0)) == (4, 1, 0)
    assert allocate(1, (0.85, 0.15, 0.0)) == (1, 0, 0)


def test_dominant_label_ties_are_alphabetical():
    assert dominant_label(collections.Counter({"wheeze": 3, "normal": 3, "crackle": 1})) == "normal"
    assert dominant_label(collections.Counter({"wheeze": 4, "normal": 3})) == "wheeze"


def _groups(sizes):
    return dict(("%s-%03d" % (label, i), label) for label, n in sizes.items() for i in range(n))


def test_split_is_stratified_seeded_and_deterministic():
    groups = _groups({"AS": 200, "MR": 200, "N": 50})
    a = grouped_stratified_split(groups, (0.7, 0.15, 0.15), seed=0)
    assert a == grouped_stratified_split(dict(reversed(list(groups.items()))), (0.7, 0.15, 0.15), seed=0)
    assert a != grouped_stratified_split(groups, (0.7, 0.15, 0.15), seed=1)
    per = collections.Counter((groups[g], s) for g, s in a.items())
    assert per[("AS", "train")] == 140 and per[("AS", "val")] == 30 and per[("AS", "test")] == 30
    assert per[("N", "train")] == 35 and per[("N", "val")] == 8 and per[("N", "test")] == 7
    # adding a class does not reshuffle the others (one RandomState per class)
    b = grouped_stratified_split(_groups({"AS": 200, "MR": 200, "N": 50, "ZZ": 9}), (0.7, 0.15, 0.15), seed=0)
    assert all(b[g] == s for g, s in a.items())


def test_val_gets_a_group_of_every_class_that_has_two():
    a = grouped_stratified_split(_groups({"rare": 2, "few": 3, "one": 1}), (0.8, 0.1, 0.1), seed=5)
    per = collections.Counter((g.split("-")[0], s) for g, s in a.items())
    assert per[("rare", "val")] == 1 and per[("rare", "train")] == 1
    assert per[("few", "train")] == per[("few", "val")] == per[("few", "test")] == 1
    assert per[("one", "train")] == 1


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text("abc", min_size=1, max_size=3), st.sampled_from(["x", "y", "z"]), min_size=1,
                       max_size=40), st.integers(0, 2 ** 31 - 1))
def test_every_group_gets_exactly_one_split(groups, seed):
    split = grouped_stratified_split(groups, (0.6, 0.2, 0.2), seed)
    assert set(split) == set(groups)
    assert set(split.values()) <= {"train", "val", "test"}
    by_class = collections.Counter(groups.values())
    for label, n in by_class.items():
        got = collections.Counter(s for g, s in split.items() if groups[g] == label)
        assert (got["train"], got["val"], got["test"]) == allocate(n, (0.6, 0.2, 0.2))


def test_official_split_keeps_test_and_takes_val_from_train_groups():
    labels = _groups({"a": 10, "b": 10})
    preset = dict((g, {"test"} if int(g[-3:]) < 4 else {"train"}) for g in labels)
    preset["a-009"] = {"train", "test"}  # the dataset itself splits this group
    out, shared = official_split(labels, preset, 0.15, seed=0)
    assert shared == ["a-009"] and "a-009" not in out
    for g, s in out.items():
        assert s == "test" if preset[g] == {"test"} else s in ("train", "val")
    assert collections.Counter(out.values())["val"] == 2  # one per class out of 5 and 6 train groups


def test_check_disjoint_passes_and_counts():
    images = [{"split": "train", "recording": "r1", "patient": "p1"},
              {"split": "train", "recording": "r2", "patient": "p1"},
              {"split": "val", "recording": "r3", "patient": None},
              {"split": "test", "recording": "r4", "patient": None}]
    assert check_disjoint(images) == {"recording": 4, "patient": 1}


def test_check_disjoint_fails_loudly_on_a_patient_or_recording_in_two_splits():
    leaky_patient = [{"split": "train", "recording": "r1", "patient": "p7"},
                     {"split": "test", "recording": "r2", "patient": "p7"}]
    with pytest.raises(SplitLeakError, match="patient p7 in train and test"):
        check_disjoint(leaky_patient)
    leaky_recording = [{"split": "val", "recording": "r1", "patient": None},
                       {"split": "train", "recording": "r1", "patient": None}]
    with pytest.raises(SplitLeakError, match="recording r1 in train and val"):
        check_disjoint(leaky_recording)
    # an overlap that the dataset's official split makes is allowed only when named
    assert check_disjoint(leaky_patient, allowed={"patient": {"p7"}}) == {"recording": 2, "patient": 1}


def test_kfold_puts_every_group_in_test_exactly_once():
    from train_host.splits import kfold_split, parse_kfold
    assert parse_kfold("kfold:5:4") == (5, 4)
    for bad in ("kfold:5:5", "kfold:1:0", "fold:5:0", "kfold:5"):
        with pytest.raises(ValueError):
            parse_kfold(bad)
    groups = _groups({"AS": 20, "N": 11})
    tested = collections.Counter()
    for fold in range(5):
        split = kfold_split(groups, 5, fold, 0.15, seed=3)
        assert set(split) == set(groups)
        per = collections.Counter((groups[g], s) for g, s in split.items())
        assert per[("AS", "test")] == 4 and per[("N", "test")] in (2, 3)
        assert per[("AS", "val")] >= 1 and per[("N", "val")] >= 1
        tested.update(g for g, s in split.items() if s == "test")
    assert tested == collections.Counter(dict((g, 1) for g in groups))

"""bench/time_rolls.py: each image classified as it is and rolled in time, as train.py's augmentation rolls it."""
import importlib.util

import numpy as np
import pytest

from stetho.tensor import imagenet_tensor
from test_service_support import REPO


def load_time_rolls():
    spec = importlib.util.spec_from_file_location("bench_time_rolls", str(REPO / "bench" / "time_rolls.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FirstColumn(object):
    """Stands in for an onnxruntime session: 'probabilities' that say which column is first in the tensor."""

    def run(self, outputs, feeds):
        tensor = feeds["input_0"]
        return [np.array([[tensor[0, 0, 0, 0], tensor[0, 1, 0, 0]]])]


def test_rolls_are_whole_column_shifts_starting_with_none():
    T = load_time_rolls()
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :, 0] = np.arange(8, dtype=np.uint8) * 30   # column c has red 30·c
    probs = T.rolled_probabilities(FirstColumn(), image, 4)
    assert probs.shape == (4, 2)
    # roll k moves the image right by 2k columns, so column 0 then holds what was column (8 - 2k) % 8
    for k in range(4):
        expected = imagenet_tensor(np.roll(image, 2 * k, axis=1), 8)[0, 0, 0, 0]
        assert probs[k, 0] == expected == imagenet_tensor(image[:, [(8 - 2 * k) % 8] * 8], 8)[0, 0, 0, 0]
    assert np.array_equal(T.rolled_probabilities(FirstColumn(), image, 1), probs[:1])


def test_no_finished_fold_is_a_clear_error(tmp_path, capsys):
    T = load_time_rolls()
    with pytest.raises(SystemExit) as stop:
        T.main(["--work", str(tmp_path), "--out", str(tmp_path / "out.json")])
    assert stop.value.code == 2 and "no finished fold" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()

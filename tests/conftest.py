"""Shared fixtures. Real recordings live in ../shared/data beside the checkout; tests needing them skip without."""
import os
import sys
from pathlib import Path

import pytest

# Before any test module imports torch: libgomp's default busy-wait makes training several times slower when
# the two CI cores are shared (train_host sets the same for its scripts; see train.py).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data, or skip the test when it is absent (a user's clone has none)."""
    if not SHARED.is_dir():
        pytest.skip("real recordings not available (%s missing)" % SHARED)
    return SHARED


@pytest.fixture(scope="session")
def yaseen(shared_data):
    path = shared_data / "yaseen2018"
    if not path.is_dir():
        pytest.skip("%s missing" % path)
    return path



"""Shared fixtures. Real recordings live in ../shared/data beside the checkout; tests needing them skip without."""
import os
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """CI has two cores; keep torch (if used) from oversubscribing them."""
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield

"""stetho.heap: glibc keeps freed memory for the next window (and leaves a user's own settings alone)."""
import os
import subprocess
import sys

import pytest

from stetho.heap import retain_freed_memory

CODE = "from stetho.heap import retain_freed_memory; print(retain_freed_memory())"


def _run(env_extra):
    env = dict(os.environ)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        env.pop(name, None)
    env.update(env_extra)
    return subprocess.check_output([sys.executable, "-c", CODE], env=env, universal_newlines=True,
                                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_is_told_to_keep_freed_memory():
    assert _run({}) == "freed memory kept up to 64 MiB, mmap above 8 MiB"


def test_the_users_malloc_environment_wins():
    assert _run({"MALLOC_TRIM_THRESHOLD_": "0"}) == "left to the environment (MALLOC_TRIM_THRESHOLD_)"


def test_without_glibc_the_defaults_stay(monkeypatch):
    import stetho.heap as heap

    def no_libc(name):
        raise OSError("no C library by that name")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(heap.ctypes, "CDLL", no_libc)
    assert retain_freed_memory() == "not glibc: allocator defaults kept"

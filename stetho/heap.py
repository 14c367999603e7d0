"""Keep freed heap memory in the process, so per-window numpy temporaries do not page-fault.

Rendering one window allocates and frees a few arrays of 0.5–1.5 MB (STFT
frames, the complex spectrum, float64 images).  glibc's defaults hand such
blocks back to the kernel as soon as they are freed (``mmap`` above a dynamic
threshold, ``trim`` of the heap top above 128 KiB), so the next window touches
fresh pages and pays a page fault per 4 KiB: measured here, 0.33 ms of a
0.6 ms STFT.  :func:`retain_freed_memory` raises both thresholds with
``mallopt`` once at start-up; the numbers computed do not change, only where
their memory comes from.  The cost is that up to ``trim_threshold`` bytes of
freed memory stay mapped (the peak RSS is unchanged: that memory was resident
at the peak anyway).

glibc only (Linux, including L4T on the Jetson); elsewhere, or when the user
set ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment,
it does nothing and says so.
"""
import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def retain_freed_memory(trim_threshold=64 << 20, mmap_threshold=8 << 20):
    """Ask glibc to keep up to ``trim_threshold`` bytes of freed heap and to ``mmap`` only blocks over
    ``mmap_threshold`` bytes (at most 32 MiB on 64-bit glibc).  Returns a short description of what was done."""
    if any(name in os.environ for name in ENVIRONMENT):
        return "left to the environment (%s)" % ", ".join(n for n in ENVIRONMENT if n in os.environ)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "not glibc: allocator defaults kept"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) != 1 or mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) != 1:
        return "mallopt refused: allocator defaults kept"
    return "freed memory kept up to %d MiB, mmap above %d MiB" % (trim_threshold >> 20, mmap_threshold >> 20)

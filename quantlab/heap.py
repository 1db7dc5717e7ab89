"""Freed arrays go back to the system, so a process's peak is what it holds, not what it once held.

glibc serves a large allocation with its own ``mmap`` (returned to the system when freed) only above
a threshold that it raises, by default, to the size of the largest block freed so far (up to 32 MB).
Work that allocates and frees many activation-sized arrays - ``auto``'s node-by-node runs, the
per-tensor passes of ``compare`` - then gets them from the heap, which fragments and does not
shrink: on an ImageNet-sized MobileNetV2, ``--method auto`` peaked at 4.5 GB while holding about
1 GB at any moment. A fixed threshold keeps those arrays on ``mmap``.

Linux with glibc only; elsewhere (musl, macOS, Windows) this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD = 1 << 20  # bytes: arrays this large and larger are mmapped, smaller ones stay on the heap

_applied: list[bool] = []


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (once; later calls are free).
    Returns whether it is in force."""
    if _applied:
        return _applied[0]
    done = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            done = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
        except (OSError, AttributeError):  # not glibc
            done = False
    _applied.append(done)
    return done

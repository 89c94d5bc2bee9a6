"""Giving the memory of big messages back to the system.

glibc's malloc raises its mmap threshold each time a big block is freed (up to 32 MiB), so after a few
large messages every later one comes from the heap, whose freed pages stay with the process: a client
sending 10-30 MiB messages left the daemon about 1.5 GB larger for good. A fixed threshold keeps big
blocks in their own mappings, returned on free. Elsewhere (macOS, Windows, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
BIG_BLOCK_BYTES = 1 << 20


def return_big_blocks() -> None:
    """Blocks of a MiB or more are mapped on their own and unmapped when freed (glibc only)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # no C library by that name, or not glibc
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, BIG_BLOCK_BYTES)
        mallopt(M_TRIM_THRESHOLD, BIG_BLOCK_BYTES)

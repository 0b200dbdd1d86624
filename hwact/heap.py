"""How the process's C heap (glibc malloc, which torch and onnxruntime allocate from) treats large blocks.

A convert allocates and frees the same ~10 MB intermediates thousands of times (the int64 temporaries of the
integer references, onnxruntime's node outputs). By default glibc gives every block above ~128 KiB its own
mmap and unmaps it when freed, so each one is paged in again: a page fault per 4 KiB. keep_freed_memory()
(the CLI calls it at start) serves blocks up to 32 MiB from one heap shared by all threads and keeps what is
freed for the next block; return_freed_memory() (the pipeline calls it after each backend) gives the free
pages back, so the next stage starts from what is live, not from the previous stage's high-water mark.

Measured once by hand (getrusage around one verification run) on zoo:vit-s16 int8-shiftgelu: an 8-batch
verification run took 4.8 million page faults and 5.6 s of kernel time by default, 0.2 million and 0.4 s
with keep_freed_memory. Both functions do nothing where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8   # glibc mallopt() parameters
LARGEST_HEAP_BLOCK = 32 * 1024 * 1024                           # glibc's cap on M_MMAP_THRESHOLD (64-bit)


@functools.cache
def _glibc():
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    return None


def keep_freed_memory() -> None:
    """Blocks up to 32 MiB from the heap, one heap for all threads (a block one thread freed, another reuses),
    and freed memory kept unless more than 128 MiB sits free at the heap's top."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK)
        libc.mallopt(M_TRIM_THRESHOLD, 4 * LARGEST_HEAP_BLOCK)
        libc.mallopt(M_ARENA_MAX, 1)


def return_freed_memory() -> None:
    """Give the heap's free pages back to the system (malloc_trim), at the end of a stage."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

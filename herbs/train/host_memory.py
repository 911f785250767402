"""Large CPU tensors from memory the process keeps, instead of fresh pages every step.

torch's CPU allocator is glibc's malloc, without a cache of its own. malloc serves every block
above its mmap threshold (32 MB at most) with a fresh mapping that the kernel zero-fills page by
page on first touch and unmaps when the block is freed, and it returns freed memory at the top of
the heap once more than its trim threshold is free. A training step on CPU frees and re-allocates
the same large activations and gradients every time: at the published widths (depths 2-2-2-2,
batch 2, 2 threads) that is 250-430k page faults and 1.0-1.8 CPU-seconds in the kernel a step
(measured with `getrusage` around three steps). Served from the heap, which keeps what is freed,
every step after the first reuses the pages of the one before: 4-14k faults, 0.1-0.2 s in the
kernel, and a step a fifth shorter (4.7-4.9 s before, 3.7-3.9 s after). The cost is that the
process keeps its peak memory, which a CPU run needs at every step anyway; a GPU run's host memory
holds checkpoints and batches instead, so `herbs train` does this for CPU runs only.

glibc only (`mallopt`); elsewhere, or where the user set any of glibc's MALLOC_* variables for the
process, malloc is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt(3) parameters and the values herbs sets
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
KEEP = {
    M_MMAP_MAX: 0,  # no block from its own mapping: all from the heap, which keeps freed pages
    M_TRIM_THRESHOLD: 2**31 - 1,  # give heap memory back only when 2 GB at its top are free
    M_TOP_PAD: 256 << 20,  # grow the heap in 256 MB steps: fewer, larger extensions
}
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def on_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Set malloc up to keep and reuse freed memory (see above); whether it was set."""
    if not on_glibc() or any(os.environ.get(v) for v in USER_SETTINGS):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(param, value) == 1 for param, value in KEEP.items())

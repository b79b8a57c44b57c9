"""Keep freed heap memory in the process instead of handing it back to the kernel (glibc).

glibc serves every allocation above its mmap threshold (at most 32 MB, `mallopt(3)`) with a
fresh `mmap` and unmaps it on `free`. A training step allocates and frees tens of MB of
temporaries (activations, gradients, the STFTs of the spectral loss) every step, so every step
the kernel maps in and zeroes fresh pages for them: on one core that was a third of the CPU time
of a simple_demucs step with `loss=l1_mrstft`, and a tenth with `loss=l1` (BENCHMARKS.md, "The
cost of `loss=l1_mrstft` per step"). With mmap off and no trimming, freed blocks stay in the heap
and the next step reuses pages that are already mapped. The cost is resident memory that does not
shrink after a peak, which a training process, whose steps all have the same shape, does not
miss (peak RSS +6 to +12 % in the same measurement).

It is the in-process form of `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` and applies to
allocations made after the call (and to processes forked after it: data-loader workers).
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

__all__ = ["keep_freed_memory"]

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_INT_MAX = 2**31 - 1
_TOP_PAD_BYTES = 64 << 20  # grow the heap in 64 MB steps: fewer brk calls for big tensors


def keep_freed_memory() -> bool:
    """Switch glibc's malloc to keep freed memory mapped; False (and nothing done) elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # every setting is tried, also after one is refused (a list, not a short-circuiting all())
    results = [
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _INT_MAX),
            (_M_TOP_PAD, _TOP_PAD_BYTES),
        )
    ]
    applied = all(result == 1 for result in results)
    if not applied:
        log.warning("glibc's mallopt refused a setting; freed memory may still be unmapped")
    return applied

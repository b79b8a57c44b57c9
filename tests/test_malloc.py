"""mss.utils.malloc.keep_freed_memory: large freed blocks are reused instead of unmapped."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocate, touch and free a 64 MB tensor ten times (the heap settles: aligned blocks leave
# fragments for a few rounds), then ten more; print the page faults of those ten.
_FAULTS = """
import resource, sys, torch
from mss.utils.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_tensors_reuse_mapped_pages():
    default, kept = _page_faults("default"), _page_faults("keep")
    # glibc maps every 64 MB block afresh: thousands of faults (fewer with huge pages)
    assert default > 300
    assert kept < default / 20, (default, kept)

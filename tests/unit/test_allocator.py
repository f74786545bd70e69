"""The lean CPU allocator policy really hands freed tensor memory back to the system (glibc only)."""
import subprocess
import sys

import pytest

from dpokit.allocator import set_cpu_malloc

# In a fresh process: free one 8 MiB tensor (glibc then raises its mmap threshold above 8 MiB), allocate forty
# 4 MiB tensors, free every other one, and report how much of the freed half is still resident.
PROBE = """
import os, sys, torch
from dpokit.allocator import set_cpu_malloc
applied = set_cpu_malloc(sys.argv[1])
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
first = torch.ones(2 * 2**20); del first
blocks = [torch.ones(2**20) for _ in range(40)]  # 40 x 4 MiB, every page touched
full = rss_mb()
del blocks[::2]
print(applied, full - rss_mb())
"""


def freed_mb(policy: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, policy], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_lean_policy_returns_freed_tensors_to_the_system_and_glibc_default_does_not():
    applied, lean = freed_mb("lean")
    kept, glibc = freed_mb("glibc")
    assert applied and not kept
    assert lean >= 0.9 * 80  # the 20 freed 4 MiB blocks left the process
    assert glibc < 0.5 * lean  # glibc's own policy keeps most of them resident (heap fragments)


def test_glibc_policy_changes_nothing():
    assert set_cpu_malloc("glibc") is False

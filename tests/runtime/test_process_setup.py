"""What every worker process sets up at start: here, that malloc keeps the memory a step frees."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A training step in miniature: 32 MiB of activations in 4 MiB blocks, written, then freed. Prints the page faults
# of 20 such steps after a first one.
STEPS = """
import resource, sys
from shapeyard.runtime.process import retain_freed_memory
if sys.argv[1] == "retain":
    retain_freed_memory()
def step():
    blocks = [bytearray(4 << 20) for _ in range(8)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's thresholds are glibc's")
def test_freed_memory_is_reused_without_page_faults() -> None:
    pages = 20 * 8 * (4 << 20) // 4096
    # by default glibc gives the freed blocks back to the kernel, and every step faults them all in again
    assert page_faults("default") > pages // 2
    assert page_faults("retain") < pages // 100

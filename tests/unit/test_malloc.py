"""glibc's malloc gives large freed blocks back to the system once the
server has tuned it (eventbus.service.tune_malloc).

Untuned, glibc raises its mmap threshold the first time a large block is
freed; later large blocks then come from the heap, which returns freed
memory only from its top: a few small blocks allocated in between pin it
all.  That is what kept a server at gigabytes after its clients left.
Measured in a child process (its own heap, its own VmRSS).
"""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.servers import REPO

PROGRAM = """
import os, sys
from eventbus.service import tune_malloc

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

tune_malloc()
x = b"a" * (1 << 20); del x   # untuned glibc raises its threshold here
start = rss_mib()
large, small = [], []
for i in range(300):
    large.append(os.urandom(16) * 65536)          # 1 MiB, like a large event
    small.append(b"p" * 2000 + bytes([i % 256]))  # long-lived, in between
peak = rss_mib()
del large
print(start, peak, rss_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_large_blocks_freed_by_the_server_go_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=str(REPO), capture_output=True,
                         text=True, check=True, timeout=60).stdout
    start, peak, after = map(int, out.split())
    assert peak - start >= 250, out  # the blocks were really there
    assert after - start < 50, out

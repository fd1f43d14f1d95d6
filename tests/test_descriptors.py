"""Tests for keda_proxy.ops._descriptors: room for many connections."""

import subprocess
import sys

import pytest

from keda_proxy.ops._descriptors import RESERVED_SLOTS

PROBE = """
import resource, sys
from keda_proxy.ops import _descriptors as descriptors

def fdsize():
    for line in open("/proc/self/status"):
        if line.startswith("FDSize:"):
            return int(line.split()[1])

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, %d))
before = fdsize()
descriptors.prepare_descriptors()
print(before, fdsize(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_limit_is_raised_and_the_table_grown_before_any_connection():
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 4096:
        pytest.skip("needs a hard open-file limit of at least 4096")
    out = subprocess.run([sys.executable, "-c", PROBE % hard], capture_output=True,
                         text=True, check=True).stdout.split()
    before, after, soft = map(int, out)
    assert soft == hard
    assert before < 4096
    # the kernel rounds the table up to a power of two
    assert after >= min(hard, RESERVED_SLOTS)

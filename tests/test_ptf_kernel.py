"""The PTF data-plane suite (ptf_tests/) run unchanged against the kernel target, in every CI
run: `tools/ptf_run.py --target kernel` makes the veths, starts hbmon-kernel-target, runs the
stock `ptf` runner and removes everything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.netns


def test_ptf_suite_passes_on_the_kernel_target() -> None:
    if os.geteuid() != 0:
        pytest.fail("the PTF run needs root (network namespace, veths, BPF)")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ptf_run.py"),
                           "--target", "kernel"], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    print(output[-4000:])
    assert proc.returncode == 0, output[-6000:]
    summary = re.search(r"PTF on kernel: (\d+) tests .*: OK", output)
    assert summary, output[-3000:]
    # the suite has 59 tests today (v2 added FutureSequence, BadNonce, BadTtl and malformed
    # kinds; BFD, issue 13, the 28 of test_bfd.py); fewer means tests were lost, not passed
    assert int(summary.group(1)) >= 59, output[-3000:]

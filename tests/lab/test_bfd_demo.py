"""`hbmon demo --bfd` (issue 13): the demo with FRR bfdd peers as BFD sessions comes up with
every session UP next to the heartbeat peers, prints where to look, and leaves nothing behind
(namespaces, links, FRR's run directories)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hbmon_topo.bfd import FRR_RUN, frr_missing
from hbmon_topo.stack import missing_for

from tests.lab.test_e2e import HBMON, lab_prefix, leftovers

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(frr_missing()), reason=f"FRR missing: {frr_missing()}"),
]


@pytest.mark.parametrize("target", ["kernel", pytest.param("bmv2", marks=pytest.mark.bmv2)])
def test_demo_bfd_once_shows_sessions_up(target: str) -> None:
    if missing_for(target):
        pytest.skip(f"the {target} target is not available here: {missing_for(target)}")
    proc = subprocess.run(
        [HBMON, "demo", "--target", target, "--bfd", "--bfd-peers", "3", "--peers", "4",
         "--once", "--api-port", "0", "--timeout", "90"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "every peer shows its expected state" in out
    for name in ("bfd01", "bfd02", "bfd03"):
        assert re.search(rf"{name} .*UP .*bfd up", out), out
    assert re.search(r"peer04 .*DOWN", out) and re.search(r"peer01 .*UP", out)
    prefix = lab_prefix(out)
    assert f"vtysh -N {prefix}-bfd01 -c 'show bfd peers'" in out
    assert "lab removed" in out
    assert leftovers(prefix) == []
    assert sorted(p.name for p in Path(FRR_RUN).glob(f"{prefix}-*")) == []

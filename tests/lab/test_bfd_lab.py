"""The FRR BFD lab on its own (hbmon_topo.bfd): two bfdd pointed at each other come Up, follow
timer changes, and go Down when one stops or the link is cut; everything goes with the lab.

This proves the lab (bfdd without zebra, vtysh per pathspace, link cutting, clean-up) before
hbmon's side is involved, so an interop failure in test_bfd_frr.py is hbmon's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hbmon_topo.bfd import (
    Bfdd,
    BfdLabError,
    BfdSessionSpec,
    FrrBfd,
    bfdd_config,
    frr_missing,
)
from hbmon_topo.model import BfdTimers, multi, star
from hbmon_topo.netns import NetnsLab, cleanup_stale

from tests.lab.test_netns import leftovers, pid_alive

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(frr_missing()), reason=f"FRR missing: {frr_missing()}"),
]

FAST = BfdTimers(100, 100, 3)


def test_config_is_frr_syntax() -> None:
    text = bfdd_config([BfdSessionSpec("198.18.0.1", "198.18.1.1", BfdTimers(50, 60, 4))])
    assert text.splitlines() == [
        "bfd", " peer 198.18.0.1 local-address 198.18.1.1", "  receive-interval 60",
        "  transmit-interval 50", "  detect-multiplier 4", " exit", "exit"]


def test_bfd_peers_in_the_generated_controller_config(tmp_path: Path) -> None:
    """The stack's config carries BFD peers as docs/bfd.md "Controller" says, and
    `hbmon serve`'s parser takes them (kind bfd, no peer_id, the timers)."""
    from hbmon.config import parse_config
    from hbmon_topo.stack import StackOptions, controller_config, expected_states

    topo = star(1, bfd_peers=2, bfd=BfdTimers(50, 60, 4))
    data = controller_config(topo, StackOptions(), grpc_addr="127.0.0.1:1",
                             ports={1: "hbx1"}, store=f"sqlite:///{tmp_path / 'db'}",
                             token_file=tmp_path / "token", api_port=0, thrift_port=None)
    assert "peer_id" not in data["peers"][1]
    config = parse_config(data, base=tmp_path)
    assert [(p.name, p.kind, p.address) for p in config.peers] == [
        ("peer01", "heartbeat", "198.18.1.1"), ("bfd01", "bfd", "198.18.1.2"),
        ("bfd02", "bfd", "198.18.1.3")]
    bfd01 = config.peers[1]
    assert (bfd01.desired_min_tx_ms, bfd01.required_min_rx_ms, bfd01.detect_mult) == (50, 60, 4)
    assert expected_states(topo) == {"peer01": {"UP"}, "bfd01": {"UP"}, "bfd02": {"UP"}}
    assert [p.name for p in topo.heartbeat_peers] == ["peer01"]
    assert BfdTimers(50, 60, 4).detect_time_ms == 240


def test_two_bfdd_come_up_follow_timers_and_detect_loss() -> None:
    topo = star(0, bfd_peers=2, bfd=FAST)
    a, b = topo.peers
    with NetnsLab(topo) as lab:
        da = Bfdd(lab, a.name, [BfdSessionSpec(b.address, a.address, FAST)])
        db = Bfdd(lab, b.name, [BfdSessionSpec(a.address, b.address, FAST)])
        da.start()
        db.start()
        rundirs = [da.rundir, db.rundir]
        assert all(d.is_dir() for d in rundirs)
        da.wait(lambda rows: rows[0]["status"] == "up", 30, "a up")
        ra = da.session(b.address)
        rb = db.wait(lambda rows: rows[0]["status"] == "up", 30, "b up")[0]
        # RFC 5880 6.8.6: each side's Your Discriminator is the other's My Discriminator
        assert ra["remote-id"] == rb["id"] and rb["remote-id"] == ra["id"]
        assert ra["remote-transmit-interval"] == 100

        # a timer change at run time reaches the other side (Poll Sequence, 6.8.3)
        spec = da.set_timers(da.sessions[0], BfdTimers(200, 150, 5))
        db.wait(lambda rows: rows[0]["remote-transmit-interval"] == 200
                and rows[0]["remote-detect-multiplier"] == 5
                and rows[0]["remote-receive-interval"] == 150, 30, "b sees a's new timers")
        assert da.session(b.address)["status"] == "up"

        # SIGTERM by PID: no AdminDown, b detects the silence (diag 1)
        pid = da.pid
        da.stop()
        assert not Path(f"/proc/{pid}").exists() or "bfdd" not in Path(
            f"/proc/{pid}/cmdline").read_text(errors="replace")
        row = db.wait(lambda rows: rows[0]["status"] == "down", 30, "b down")[0]
        assert row["diagnostic"] == "control detection time expired"

        da.start()  # with the changed timers kept
        assert "detect-multiplier 5" in (da.rundir / "bfdd.conf").read_text()
        assert spec in da.sessions
        db.wait(lambda rows: rows[0]["status"] == "up", 30, "b up again")

        # cutting a's access link: both sides detect it
        lab.set_link(a.name, up=False)
        db.wait(lambda rows: rows[0]["status"] == "down", 30, "b down after the cut")
        da.wait(lambda rows: rows[0]["status"] == "down", 30, "a down after the cut")
        lab.set_link(a.name, up=True)
        db.wait(lambda rows: rows[0]["status"] == "up", 30, "b up after the repair")
        pids = [da.pid, db.pid]
    assert not any(d.exists() for d in rundirs)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "bfdd" not in Path(
            f"/proc/{pid}/cmdline").read_text(errors="replace")


def test_frr_bfd_runs_one_bfdd_per_star_peer() -> None:
    with NetnsLab(star(1, bfd_peers=2)) as lab:
        frr = FrrBfd(lab)
        assert sorted(frr.daemons) == ["bfd01", "bfd02"]
        frr.start()
        # nobody answers at the monitor address (no data plane here): Down, listed
        rows = frr.wait_status({"bfd01": "down", "bfd02": "down"}, 30)
        assert rows["bfd01"]["peer"] == "198.18.0.1"
        assert rows["bfd02"]["local"] == "198.18.1.3"
        assert rows["bfd01"]["transmit-interval"] == 300
        frr.set_timers("bfd02", BfdTimers(500, 400, 4))
        assert frr.session("bfd02")["transmit-interval"] == 500
        assert frr.spec("bfd02").timers == BfdTimers(500, 400, 4)
        assert frr.cpu_ticks() >= 0
    with NetnsLab(multi(4)) as lab, pytest.raises(BfdLabError, match="STAR"):
        FrrBfd(lab)


_OWNER = """
import json, threading
from hbmon_topo.bfd import FrrBfd
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
lab = NetnsLab(star(0, bfd_peers=1)); lab.start()
frr = FrrBfd(lab); frr.start()
d = frr.bfdd("bfd01")
print(json.dumps({"run_id": lab.run_id, "prefix": lab.prefix, "pid": d.pid,
                  "rundir": str(d.rundir)}), flush=True)
threading.Event().wait()
"""


def test_kill_9_of_the_owner_leaves_nothing_after_cleanup() -> None:
    """The lab's owner killed with -9: `cleanup_stale` stops bfdd by PID and removes its
    /var/run/frr directory with the namespaces."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    if not line:
        owner.wait(timeout=30)
        pytest.fail(f"lab owner died: exit {owner.returncode}")
    info = json.loads(line)
    owner.kill()
    owner.wait()
    assert Path(info["rundir"]).is_dir() and pid_alive(info["pid"])
    assert info["run_id"] in cleanup_stale()
    deadline = time.monotonic() + 10
    while pid_alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(info["pid"])
    assert not Path(info["rundir"]).exists()
    assert leftovers(info["prefix"]) == []

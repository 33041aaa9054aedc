"""The stack's generated controller config is what `hbmon serve` accepts, from the topology."""

from __future__ import annotations

from pathlib import Path

import pytest
from hbmon.config import parse_config
from hbmon_topo.model import DEMO_FAULTS, Faults, demo, multi, star
from hbmon_topo.stack import StackOptions, controller_config, expected_states, missing_for


@pytest.mark.parametrize("target", ["kernel", "bmv2"])
def test_generated_config_parses_and_matches_the_topology(target: str, tmp_path: Path) -> None:
    topo = star(5, ports=2)
    data = controller_config(
        topo, StackOptions(target=target, interval_ms=50, detect_mult=4),
        grpc_addr="127.0.0.1:50001", ports={1: "hbx1", 2: "hbx2"},
        store=f"sqlite:///{tmp_path / 'db'}", token_file=tmp_path / "token", api_port=0,
        thrift_port=9099 if target == "bmv2" else None)
    config = parse_config(data, base=tmp_path)
    (switch,) = config.switches
    assert (switch.kind, switch.grpc, switch.interval_ms, switch.detect_mult) == (
        target, "127.0.0.1:50001", 50, 4)
    assert dict(switch.ports) == {1: "hbx1", 2: "hbx2"}
    assert switch.monitor.ip == topo.monitor_address == "198.18.0.1"
    assert switch.monitor.mac == topo.port(1).mac
    assert (switch.thrift_port == 9099) is (target == "bmv2")
    assert [(p.name, p.address, p.peer_id, p.mac, p.port) for p in config.peers] == [
        (s.name, s.address, s.peer_id, s.mac, s.port) for s in topo.peers]
    assert config.api.port == 0 and config.api.host == "127.0.0.1"


def test_topologies_are_consistent_data() -> None:
    topo = demo()
    assert len(topo.peers) == 16
    assert {p.name for p in topo.peers if not p.faults.healthy} == {
        f"peer{i + 1:02d}" for i in DEMO_FAULTS}
    assert len({p.address for p in topo.peers}) == 16
    big = multi(5000)
    assert big.peers[-1].address == "198.18.20.136"  # 198.18.1.1 + 4999
    with pytest.raises(ValueError, match="duplicate"):
        type(topo)(topo.name, topo.layout, topo.monitor_address, topo.ports,
                   topo.peers + topo.peers[:1])
    with pytest.raises(ValueError, match="multi"):
        star(5000)


def test_expected_states_follow_the_faults() -> None:
    topo = star(5, faults={0: Faults(mute=True), 1: Faults(loss_pct=40),
                           2: Faults(status="draining"), 3: Faults(load=30)})
    assert expected_states(topo) == {
        "peer01": {"DOWN"}, "peer02": {"DEGRADED", "DOWN"}, "peer03": {"DEGRADED"},
        "peer04": {"UP"}, "peer05": {"UP"}}


def test_missing_for_names_unknown_targets() -> None:
    assert any("tofino" in m for m in missing_for("tofino"))

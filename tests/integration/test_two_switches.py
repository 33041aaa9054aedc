"""A two-switch fabric under one `hbmon serve` (issue 12), all parts real: two namespace
labs with responders, each behind its own `hbmon-kernel-target` (switches s1 and s2), one
controller with a SQLite store.

The labs are built alike (same addresses, MACs and peer ids), so peer03 of lab 2 is the
same machine as peer03 of lab 1 re-cabled to switch s2. s1 monitors its lab's three peers,
s2 two of its own. Moving "mover" (lab 1's peer03) with PATCH /api/v1/peers/mover
{"switch": "s2"}:

- both switches' peers are UP on their own switch first (each target only fans out to
  and answers for its own peers);
- s1's tables and fan-out group lose the peer (P4Runtime 1.4 section 9.1 Write DELETE of
  the table entries, MODIFY of the multicast group), s2's gain it on a slot of s2's own
  (section 9.1 INSERT), and s2's other entries are untouched;
- the slot on s2 is fresh: s2-peer02 is removed first, so the mover gets its slot (the
  lowest free index), and the slot's counters start from 0, not from what s2-peer02 had
  counted there;
- the peer goes UP on s2 (its health row names s2), and its history shows the move: a
  peer_updated event with {"switch": "s2"} in its changes, then UNKNOWN -> UP.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from controller.test_integration import wait_for
from hbmon.dataplane import targets
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import P4INFO, free_tcp_port, missing_for

from integration.test_failover import programmed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from product_lab import CellReader, serve  # bench/ is not a package

pytestmark = pytest.mark.netns

SETTLE = 60.0
TOKEN = "two-switches-token"
MIN_RX = 20  # answers the mover gives on s1 before it moves (1 s of 50 ms rounds)


@dataclass
class Fabric:
    labs: dict[str, NetnsLab]
    grpc: dict[str, str]
    http: httpx.Client

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def health(self, name: str) -> dict[str, Any]:
        row: dict[str, Any] = self.get(f"/api/v1/peers/{name}/health")
        return row

    def states(self) -> dict[str, tuple[str, str]]:
        """Peer -> (switch, state) as the controller reports them."""
        return {r["name"]: (r["switch"], r["state"])
                for r in self.get("/api/v1/health/peers")["peers"]}


def _peers(lab: NetnsLab, switch: str, names: list[str]) -> list[dict[str, Any]]:
    return [{**p.to_peer_dict(switch), "name": f"{switch}-{p.name}"}
            for p in lab.topology.peers if p.name in names]


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    missing = missing_for("kernel")
    assert not missing, missing
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    labs: dict[str, NetnsLab] = {}
    procs: list[targets.TargetProcess] = []
    try:
        grpc: dict[str, str] = {}
        switches: list[dict[str, Any]] = []
        for sw in ("s1", "s2"):
            lab = NetnsLab(star(3, name=f"two{sw}"))  # alike: same addresses, MACs, ids
            labs[sw] = lab
            lab.start()
            lab.start_responders()
            grpc[sw] = f"127.0.0.1:{free_tcp_port()}"
            procs.append(targets.start_target("kernel", lab.port_map, grpc_addr=grpc[sw],
                                              output_path=tmp_path / f"target-{sw}.log",
                                              wait=60.0))
            switches.append({"name": sw, "kind": "kernel", "grpc": grpc[sw], "device_id": 1,
                             "p4info": str(P4INFO),
                             "ports": {int(k): v for k, v in lab.port_map.items()},
                             "monitor": {"mac": lab.topology.ports[0].mac,
                                         "ip": lab.topology.monitor_address}})
        peers = _peers(labs["s1"], "s1", ["peer01", "peer02"]) \
            + _peers(labs["s2"], "s2", ["peer01", "peer02"])
        mover = labs["s1"].topology.peer("peer03").to_peer_dict("s1")
        peers.append({**mover, "name": "mover"})
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n")
        os.chmod(token, 0o600)
        port = free_tcp_port()
        config = {"interval_ms": 50, "detect_mult": 3, "poll_interval_ms": 100,
                  "store": f"sqlite:///{tmp_path / 'hbmon.db'}",
                  "api": {"host": "127.0.0.1", "port": port, "token_file": str(token)},
                  "switches": switches, "peers": peers}
        with serve(config, tmp_path), \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            def ready() -> bool:
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False
            wait_for(ready, SETTLE, "hbmon serve ready on both switches")
            yield Fabric(labs, grpc, http)
    finally:
        for proc in procs:
            proc.stop()
        for lab in labs.values():
            lab.stop()


def test_move_a_peer_between_switches(fabric: Fabric) -> None:
    want = {"s1-peer01": ("s1", "UP"), "s1-peer02": ("s1", "UP"), "mover": ("s1", "UP"),
            "s2-peer01": ("s2", "UP"), "s2-peer02": ("s2", "UP")}
    wait_for(lambda: fabric.states() == want and fabric.health("mover")["rx_count"] >= MIN_RX,
             SETTLE, f"every peer UP on its switch: {want}")
    inventory = {p["name"]: p for p in fabric.get("/api/v1/peers")["peers"]}
    old_index = inventory["mover"]["index"]
    addr_id = (int.from_bytes(bytes(int(x) for x in inventory["mover"]["address"].split(".")),
                              "big"), inventory["mover"]["peer_id"])
    s1_indexes = {inventory[n]["index"] for n in ("s1-peer01", "s1-peer02")}
    s2_indexes = {inventory[n]["index"] for n in ("s2-peer01", "s2-peer02")}
    assert programmed(fabric.grpc["s1"])[0] >= {(*addr_id, old_index)}

    # s2-peer02 leaves a slot on s2 that has counted answers
    freed = inventory["s2-peer02"]["index"]
    freed_rx = fabric.health("s2-peer02")["rx_count"]
    assert freed_rx >= MIN_RX
    assert fabric.http.delete("/api/v1/peers/s2-peer02").status_code == 204
    del want["s2-peer02"]
    s2_indexes.discard(freed)
    s2_before = programmed(fabric.grpc["s2"])

    r = fabric.http.patch("/api/v1/peers/mover", json={"switch": "s2"})
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["switch"] == "s2" and moved["index"] == freed, moved
    new_index = moved["index"]
    # read on s2 at once (backup reads, no mastership): the slot was reset when it was
    # programmed, so it counts this move's few answers, not s2-peer02's
    cells = CellReader(fabric.grpc["s2"], ["hb_rx_count"])
    try:
        assert cells.read("hb_rx_count", new_index) < freed_rx
    finally:
        cells.close()

    # s1 forgot it: its entries and its fan-out replica are gone, the others stay
    peers1, requests1, fanout1 = programmed(fabric.grpc["s1"])
    assert {i for _, _, i in peers1} == requests1 == fanout1 == s1_indexes
    assert all((a, p) != addr_id for a, p, _ in peers1)
    # s2 has it on its own slot, next to what it had
    peers2, requests2, fanout2 = programmed(fabric.grpc["s2"])
    assert peers2 == s2_before[0] | {(*addr_id, new_index)}
    assert requests2 == fanout2 == s2_indexes | {new_index}

    # the peer answers s2 and is UP there (its health row reads s2 now)
    want["mover"] = ("s2", "UP")
    wait_for(lambda: fabric.states() == want and fabric.health("mover")["rx_count"] > 0,
             SETTLE, "mover UP on s2")
    assert fabric.health("mover")["switch"] == "s2"

    # the history of the move: peer_updated (switch s2), then a new life UNKNOWN -> UP
    events = fabric.get("/api/v1/peers/mover/history?limit=1000")["events"][::-1]
    kinds = [(e["kind"], e.get("new_state")) for e in events]
    at = next(i for i, e in enumerate(events) if e["kind"] == "peer_updated")
    assert events[at]["details"]["changes"].get("switch") == "s2", events[at]
    after = [(e["old_state"], e["new_state"]) for e in events[at + 1:]
             if e["kind"] == "transition"]
    assert after and after[-1][1] == "UP", kinds
    assert after[0][0] == "UNKNOWN", kinds
    assert all(e["switch"] == "s2" for e in events[at:] if e["kind"] == "transition"), events

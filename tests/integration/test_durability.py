"""Nothing lost across kill -9 of the real product (issue 10): `hbmon serve` (controller,
REST API, SQLite store) driving `hbmon-kernel-target` in a namespace lab with responders.

- A slot a removed peer left is reset before another peer uses it, even when the process
  dies right after the removal's commit and again right after the new peer's commit (the
  test-only hook HBMON_TEST_CRASH_AT makes `hbmon serve` SIGKILL itself at that point).
- SIGKILL while a client adds peers in a loop: after the restart every acknowledged write
  is there and programmed, no index is used twice, and a write that got no answer is
  either fully there (inventory and target) or fully absent.

The HTTP layer alone over the store is covered by tests/api/test_api_persistence.py.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from controller.test_integration import Target, read_state, wait_for
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import Stack, StackOptions

pytestmark = pytest.mark.netns

HBMON = str(Path(sys.executable).with_name("hbmon"))
SETTLE = 60.0


class Product:
    """The lab's Stack, whose `hbmon serve` this test kills and restarts (same config and
    store); the one running is always `stack.serve`, so Stack.stop() stops it by PID."""

    def __init__(self, stack: Stack, target: Target) -> None:
        self.stack, self.target = stack, target
        self.auth = {"Authorization": f"Bearer {stack.token}"}

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.stack.serve is not None
        return self.stack.serve

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.url, timeout=10.0, headers=self.auth)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def start(self, crash_at: str | None = None) -> None:
        """A new `hbmon serve` on the same config and store, ready (set up and polled)."""
        assert self.stack.serve is None or self.stack.serve.poll() is not None
        env = {k: v for k, v in os.environ.items() if k != "HBMON_TEST_CRASH_AT"}
        if crash_at:
            env["HBMON_TEST_CRASH_AT"] = crash_at
        with open(self.stack.workdir / "serve.log", "ab") as log:
            self.stack.serve = subprocess.Popen(
                [HBMON, "serve", "--config", str(self.stack.config_path)], env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with self.client() as http:
            def ready() -> bool:
                assert self.proc.poll() is None, self.stack.log_tail("serve.log")
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False
            wait_for(ready, SETTLE, "hbmon serve ready")

    def died_by_its_hook(self) -> None:
        assert self.proc.wait(30) == -signal.SIGKILL, self.stack.log_tail("serve.log")

    def inventory(self) -> dict[str, dict[str, Any]]:
        with self.client() as http:
            r = http.get("/api/v1/peers", params={"limit": 10_000})
            assert r.status_code == 200, r.text
            return {p["name"]: p for p in r.json()["peers"]}

    def programmed(self) -> tuple[set[tuple[int, int, int]], set[int], set[int]]:
        """(src_addr, peer_id, index) of HbIngress.peers, peer_requests indexes and the
        fan-out group's replica instances, read by a backup P4Runtime client."""
        entries, groups = read_state(self.target)
        peers = {(int(e.match["src_addr"]), int(e.match["peer_id"]),  # type: ignore[arg-type]
                  int(e.params["index"])) for e in entries if e.table == "HbIngress.peers"}
        requests = {int(e.match["index"]) for e in entries  # type: ignore[arg-type]
                    if e.table == "HbEgress.peer_requests"}
        fanout = {r.instance for g in groups if g.id == 1 for r in g.replicas}
        return peers, requests, fanout


@pytest.fixture(scope="module")
def product() -> Iterator[Product]:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    topology = star(4)
    lab = NetnsLab(topology)
    stack: Stack | None = None
    try:
        lab.start()
        lab.start_responders()
        stack = Stack(lab, StackOptions(api_port=0, interval_ms=50, poll_interval_ms=100))
        stack.start()
        yield Product(stack, Target("kernel", lab, topology, stack.target, stack.grpc_addr,
                                    None))
    finally:
        if stack is not None:
            stack.stop()
        lab.stop()


def _slot(product: Product, name: str) -> dict[str, Any]:
    with product.client() as http:
        r = http.get(f"/api/v1/peers/{name}/health")
        assert r.status_code == 200, r.text
        slot: dict[str, Any] = r.json()  # the health row carries the slot's counters
        return slot


def _spec(name: str, host: int, peer_id: int) -> dict[str, Any]:
    """A peer on port 1 at 198.18.1.<host> that no responder answers for (hosts >= 100)."""
    return {"name": name, "address": str(ipaddress.IPv4Address("198.18.1.0") + host),
            "peer_id": peer_id, "mac": f"02:48:42:00:{host >> 8:02x}:{host & 0xFF:02x}",
            "port": 1, "switch": "s1"}


def test_slot_reset_survives_kill_9_after_the_commits(product: Product) -> None:
    wait_for(lambda: _slot(product, "peer04")["rx_count"] > 10, SETTLE, "peer04 answering")
    index = product.inventory()["peer04"]["index"]
    # 1. die right after the removal's commit: nothing unprogrammed, no slot reset
    product.kill()
    product.start(crash_at="after_remove_commit")
    with product.client() as http, pytest.raises(httpx.TransportError):
        http.delete("/api/v1/peers/peer04")
    product.died_by_its_hook()
    # 2. the removal stood; the restarted controller reconciled peer04's entries away.
    # Then die right after a new peer's commit, before it is programmed.
    product.start(crash_at="after_add_commit")
    assert "peer04" not in product.inventory()
    peers, requests, fanout = product.programmed()
    assert index not in {i for _, _, i in peers} | requests | fanout
    with product.client() as http, pytest.raises(httpx.TransportError):
        http.post("/api/v1/peers", json=_spec("silent", 150, 7150))
    product.died_by_its_hook()
    # 3. the new peer got peer04's index; its counters start from 0, not from peer04's
    product.start()
    [silent] = [p for p in product.inventory().values() if p["name"] == "silent"]
    assert silent["index"] == index
    slot = _slot(product, "silent")
    assert (slot["rx_count"], slot["last_seq"], slot["rtt_max_us"]) == (0, 0, 0), slot
    peers, requests, fanout = product.programmed()
    assert (0xC6120196, 7150, index) in peers and index in requests and index in fanout
    with product.client() as http:  # give the lab back as it was
        assert http.delete("/api/v1/peers/silent").status_code == 204
        r = http.post("/api/v1/peers", json=product.target.topology.peer("peer04")
                      .to_peer_dict("s1"))
        assert r.status_code == 201, r.text


def test_kill_9_while_adding_peers_loses_no_acknowledged_write(product: Product) -> None:
    acked: list[str] = []
    unanswered: list[str] = []
    refused: list[tuple[str, int]] = []
    stop = threading.Event()

    def writer() -> None:
        with product.client() as http:
            for i in range(1000):
                if stop.is_set():
                    return
                name = f"w{i:03d}"
                try:
                    r = http.post("/api/v1/peers", json=_spec(name, 100 + i, 5000 + i))
                except httpx.TransportError:
                    unanswered.append(name)
                    return  # the server is gone: later writes would not even connect
                if r.status_code == 201:
                    acked.append(name)
                else:
                    refused.append((name, r.status_code))

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    try:
        wait_for(lambda: len(acked) >= 20 or not thread.is_alive(), SETTLE, "20 writes")
        product.kill()  # while the writer keeps posting
        thread.join(30)
    finally:
        stop.set()
        thread.join(30)
    assert len(acked) >= 20 and not refused, (acked, refused)
    product.start()
    inventory = product.inventory()
    # every acknowledged write is there; one without an answer is there or not, whole
    assert set(acked) <= set(inventory), sorted(set(acked) - set(inventory))
    written = {n for n in inventory if n.startswith("w")}
    assert written <= set(acked) | set(unanswered)
    # no index twice, and the target holds exactly the inventory
    indexes = [p["index"] for p in inventory.values()]
    assert len(indexes) == len(set(indexes))
    want = {(int(ipaddress.IPv4Address(p["address"])), p["peer_id"], p["index"])
            for p in inventory.values()}
    peers, requests, fanout = product.programmed()
    assert peers == want
    assert requests == fanout == set(indexes)
    with product.client() as http:  # give the lab back as it was
        for name in written:
            assert http.delete(f"/api/v1/peers/{name}").status_code == 204

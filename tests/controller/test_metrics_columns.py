"""/metrics from the health engine's arrays is the same text as from one PeerHealth per peer.

A `Fabric` that is never started (pure logic: its engine is fed a poll's columns by hand)
with peers in every state, odd label values (quotes, backslashes, newlines) and two
switches. The array path (`Fabric.peer_columns`) and the generic path (any `HbmonService`,
through `all_health`) must render the same exposition, byte for byte, apart from the
collect-time line.
"""

from __future__ import annotations

import numpy as np
from hbmon.api.metrics import ServiceMetrics
from hbmon.controller.fabric import Fabric
from hbmon.model import SLOT_FIELDS, Health, Peer
from hbmon.protocol import PeerStatus, PlaneState
from hbmon.store.sql import open_store

from .test_fabric import P4INFO, make_config


class _Generic:
    """The fabric without `peer_columns`: what ServiceMetrics sees of any other service."""

    def __init__(self, fabric: Fabric) -> None:
        self._fabric = fabric

    def __getattr__(self, name: str) -> object:
        if name == "peer_columns":
            raise AttributeError(name)
        return getattr(self._fabric, name)


def _text(metrics: ServiceMetrics) -> str:
    return "".join(line + "\n" for line in metrics.text().splitlines()
                   if not line.startswith("hbmon_scrape_collect_seconds "))


def test_metrics_from_columns_match_metrics_from_health() -> None:
    config = make_config(1, switches=[
        {"name": "s1", "grpc": "127.0.0.1:1", "p4info": str(P4INFO)},
        {"name": "s2", "grpc": "127.0.0.1:2", "p4info": str(P4INFO)}])
    fabric = Fabric(config, open_store("sqlite://:memory:"), None)
    groups = ["web", 'quo"te', "back\\slash", "new\nline", None]
    fabric.add_peers([
        Peer(name=f"p{i}", address=f"198.18.1.{i}", peer_id=i, mac="02:00:00:00:01:01",
             port=1, switch=f"s{1 + i % 2}", group=groups[i % len(groups)],
             admin_down=i == 7)
        for i in range(1, 13)])
    rng = np.random.default_rng(5)
    for k in range(1, 4):
        for switch, driver in fabric.drivers.items():
            members = fabric._poll_members(switch)
            n = len(members.names)
            cols = rng.integers(0, 1 << 20, (len(SLOT_FIELDS), n)).astype(np.uint64)
            cols[SLOT_FIELDS.index("rx_count")] = 10 * k
            cols[SLOT_FIELDS.index("tx_count")] = 10 * k + np.arange(n) * (k > 2)
            cols[SLOT_FIELDS.index("miss_count")] = np.arange(n) % 6
            cols[SLOT_FIELDS.index("state")] = PlaneState.UP
            cols[SLOT_FIELDS.index("rtt_ewma_us")] = np.where(np.arange(n) % 4, 300, 80_000)
            cols[SLOT_FIELDS.index("peer_status")] = np.where(
                np.arange(n) % 3 == 1, int(PeerStatus.DEGRADED), 0)
            fabric._observe(driver, members, SLOT_FIELDS, cols)
    states = {h.state for h in fabric.all_health()}
    assert {Health.UP, Health.DEGRADED, Health.DOWN, Health.ADMIN_DOWN} <= states
    fabric.add_peers([Peer(name="late", address="198.18.2.1", peer_id=99,
                           mac="02:00:00:00:01:01", port=1, switch="s1")])  # UNKNOWN
    by_columns = ServiceMetrics(fabric)
    generic = ServiceMetrics(_Generic(fabric))  # type: ignore[arg-type]
    text = _text(by_columns)
    assert text == _text(generic)
    assert 'hbmon_peer_state{peer="late",switch="s1",group="",state="UNKNOWN"} 1\n' in text
    assert 'group="quo\\"te"' in text and 'group="new\\nline"' in text
    # cached labels follow inventory changes
    fabric.update_peer("p1", {"group": "moved"})
    fabric.remove_peers(["p2"])
    text = _text(by_columns)
    assert text == _text(generic)
    assert 'peer="p1",switch="s2",group="moved"' in text and 'peer="p2"' not in text

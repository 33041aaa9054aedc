"""GET /api/v1/peers over the real controller object (`hbmon.controller.fabric.Fabric`, not started:
the listing needs no data plane), served by the real app on a real uvicorn server.

The listing serializes each peer's inventory fields once per Peer object and only the state
columns per request; these tests pin that the bytes are what the documented row shape gives
(docs: a peer's fields, then state, since, reason) after every kind of change: a PATCH, an
admin-down, a removal, an addition, a state transition.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from api_fakes import make_peers
from hbmon.api.app import create_app
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.server import ApiServer
from hbmon.api.settings import ApiSettings
from hbmon.config import parse_config
from hbmon.controller.fabric import Fabric
from hbmon.store.events import EventBus
from hbmon.store.sql import open_store

TOKEN = "listing-token-123456"


@pytest.fixture()
def fabric_api(tmp_path: Path) -> Iterator[tuple[Fabric, httpx.Client]]:
    store = open_store(f"sqlite:///{tmp_path / 'hbmon.db'}")
    peers = make_peers(300, switch="leaf-1", groups=3)
    for i, p in enumerate(peers):
        p.index = i
    store.add_peers(peers)
    bus = EventBus(store)
    fabric = Fabric(parse_config({"switches": [{"name": "leaf-1", "grpc": "127.0.0.1:1"}]}),
                    store, bus)
    app = create_app(fabric, store, bus, ApiSettings(port=0, token=TOKEN), ControllerMetrics())
    server = ApiServer(app, "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield fabric, client
    finally:
        server.stop()
        store.close()


def expected(fabric: Fabric, **filters: str) -> bytes:
    """The documented shape, built the slow way from copies of every peer and health."""
    health = {h.name: h for h in fabric.all_health()}
    rows = []
    for p in fabric.list_peers():
        if "group" in filters and p.group != filters["group"]:
            continue
        h = health[p.name]
        if "state" in filters and str(h.state) != filters["state"]:
            continue
        rows.append({**p.to_dict(), "state": str(h.state), "since": h.since,
                     "reason": h.reason})
    return orjson.dumps({"total": len(rows), "peers": rows})


def listing(client: httpx.Client, **params: str) -> bytes:
    r = client.get("/api/v1/peers", params=params)
    assert r.status_code == 200, r.text
    return r.content


def test_listing_bytes_follow_every_change(fabric_api: tuple[Fabric, httpx.Client]) -> None:
    fabric, client = fabric_api
    assert listing(client) == expected(fabric)
    assert listing(client, group="rack-1") == expected(fabric, group="rack-1")

    r = client.patch("/api/v1/peers/peer-0007", json={"group": "moved", "labels": {"a": "b"}})
    assert r.status_code == 200, r.text
    body = listing(client)
    assert body == expected(fabric)
    row = next(p for p in orjson.loads(body)["peers"] if p["name"] == "peer-0007")
    assert (row["group"], row["labels"]) == ("moved", {"a": "b"})

    r = client.patch("/api/v1/peers/peer-0009", json={"admin_down": True})
    assert r.status_code == 200, r.text
    body = listing(client)
    assert body == expected(fabric)
    row = next(p for p in orjson.loads(body)["peers"] if p["name"] == "peer-0009")
    assert row["state"] == "ADMIN_DOWN" and row["admin_down"] is True
    assert listing(client, state="ADMIN_DOWN") == expected(fabric, state="ADMIN_DOWN")

    r = client.post("/api/v1/peers/bulk-delete", json={"names": ["peer-0001", "peer-0002"]})
    assert r.status_code == 200, r.text
    new = make_peers(1, switch="leaf-1", prefix="zz")[0].to_dict()
    new.update(address="198.19.9.9", peer_id=99_999, index=None)
    r = client.post("/api/v1/peers", json={k: v for k, v in new.items() if k != "index"})
    assert r.status_code == 201, r.text
    body = listing(client)
    assert body == expected(fabric)
    names = [p["name"] for p in orjson.loads(body)["peers"]]
    assert "peer-0001" not in names and names[-1] == "zz-0000"
    assert orjson.loads(body)["total"] == 299


def test_listing_pages_and_filters_count_all_matches(
        fabric_api: tuple[Fabric, httpx.Client]) -> None:
    _, client = fabric_api
    page = orjson.loads(listing(client, limit="10", offset="295"))
    assert page["total"] == 300 and [p["name"] for p in page["peers"]] == [
        f"peer-{i:04d}" for i in range(295, 300)]
    found = orjson.loads(listing(client, q="PEER-012"))
    assert [p["name"] for p in found["peers"]] == [f"peer-{i:04d}" for i in range(120, 130)]
    assert orjson.loads(listing(client, switch="nope")) == {"total": 0, "peers": []}

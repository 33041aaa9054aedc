"""Adds answer when they are programmed (issue 10, docs/ha.md): 201 with `programmed_at`
once the switch's leader has programmed them, 202 with `programmed_at: null` when it has
not within `ha.program_wait_s`. Over the real product (tests/api/real_product.py): the 201
is the real controller's answer; for the 202 the real controller's `wait_programmed` is
replaced by one that never sees the programming (the HTTP contract for that outcome; a
leader that really does not program in time runs in tests/integration/test_failover.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from real_product import Product

PEER = {"name": "web1", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:00:01",
        "port": 1}


def test_programmed_add_is_201_with_the_time(api: Product) -> None:
    with api.client() as c:
        before = time.time()
        r = c.post("/api/v1/peers", json=PEER)
        assert r.status_code == 201, r.text
        at = r.json()["programmed_at"]
        assert before <= at <= time.time()
        # programmed indeed: the target holds the peer's request entry
        assert api.targets["default"].datapath.peer_requests_get(r.json()["index"])
        bulk = c.post("/api/v1/peers/bulk", json={"peers": [
            {**PEER, "name": "web2", "address": "198.18.1.2", "peer_id": 2}]})
        assert bulk.status_code == 201 and bulk.json()["programmed_at"] >= at


def test_an_add_not_programmed_in_time_is_202_and_committed(api: Product) -> None:
    asked: list[Sequence[str]] = []

    def not_yet(names: Sequence[str]) -> None:
        asked.append(list(names))
        return None

    api.service.wait_programmed = not_yet  # type: ignore[method-assign]
    with api.client() as c:
        r = c.post("/api/v1/peers", json=PEER)
        assert r.status_code == 202, r.text
        assert r.json()["programmed_at"] is None and r.json()["name"] == "web1"
        assert r.headers["Location"] == "/api/v1/peers/web1"
        assert c.get("/api/v1/peers/web1").status_code == 200  # committed all the same
        bulk = c.post("/api/v1/peers/bulk", json={"peers": [
            {**PEER, "name": "web2", "address": "198.18.1.2", "peer_id": 2},
            {**PEER, "name": "web3", "address": "198.18.1.3", "peer_id": 3}]})
        assert bulk.status_code == 202 and bulk.json()["programmed_at"] is None
    assert asked == [["web1"], ["web2", "web3"]]


def test_the_openapi_document_has_both_answers(api: Product) -> None:
    with api.client() as c:
        doc = c.get("/openapi.json").json()
    for path in ("/api/v1/peers", "/api/v1/peers/bulk"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"201", "202"} <= set(responses), (path, sorted(responses))
    props = doc["components"]["schemas"]["PeerOut"]["properties"]
    assert "programmed_at" in props
    assert "programmed_at" in doc["components"]["schemas"]["AddedList"]["required"]

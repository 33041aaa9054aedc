"""The REST API of the real product (tests/api/real_product.py: the controller, bus and API
as `hbmon serve` assembles them, a real SQLite store, the kernel target's P4Runtime device
on its in-memory data plane per switch, simulated peers answering it).

Only the listing cache's max_age test runs over FakeService: it needs a state change that
comes without any event, which the real controller never makes."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import httpx
import pytest
from api_fakes import make_peers
from api_harness import ServerFactory
from hbmon.model import EventKind, Health
from real_product import Product, ProductFactory, wait_until


def body(name: str = "web-1", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "address": "198.18.5.1", "peer_id": 501,
                           "mac": "02:00:00:00:05:01", "port": 3}
    out.update(kw)
    return out


def detail(r: httpx.Response) -> dict[str, Any]:
    d: dict[str, Any] = r.json()["detail"]
    return d


def test_add_get_list_remove(client: httpx.Client, api: Product) -> None:
    assert client.get("/api/v1/peers").json() == {"total": 0, "peers": []}
    r = client.post("/api/v1/peers", json=body(group="web", labels={"tier": "1"}))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/api/v1/peers/web-1"
    created = r.json()
    assert created["index"] == 0 and created["group"] == "web"
    got = client.get("/api/v1/peers/web-1").json()
    assert got["address"] == "198.18.5.1" and got["labels"] == {"tier": "1"}
    assert got["state"] == "UNKNOWN" and got["health"]["rx_count"] == 0
    assert [p["name"] for p in client.get("/api/v1/peers").json()["peers"]] == ["web-1"]
    assert api.store.get_peer("web-1").group == "web"  # persisted
    assert client.delete("/api/v1/peers/web-1").status_code == 204
    r = client.get("/api/v1/peers/web-1")
    assert r.status_code == 404 and detail(r)["field"] == "peer"
    assert client.delete("/api/v1/peers/web-1").status_code == 404
    assert api.store.list_peers() == []


@pytest.mark.parametrize(("change", "field"), [
    ({"address": "1.2.3"}, "address"),
    ({"address": "224.0.0.1"}, "address"),
    ({"peer_id": 0}, "peer_id"),
    ({"peer_id": "abc"}, "peer_id"),
    ({"mac": "02:00"}, "mac"),
    ({"port": 511}, "port"),
    ({"name": "bad name!"}, "name"),
    ({"detect_mult": 0}, "detect_mult"),
    ({"labels": {"a": 1}}, "labels.a"),
    ({"surprise": 1}, "surprise"),
    ({"switch": "no-such-switch"}, "switch"),
])
def test_invalid_peer_is_422_naming_the_field(
    client: httpx.Client, api: Product, change: dict[str, Any], field: str,
) -> None:
    r = client.post("/api/v1/peers", json=body(**change))
    assert r.status_code == 422, r.text
    assert detail(r)["field"] == field
    assert detail(r)["message"]
    assert api.store.list_peers() == []


def test_missing_field_and_bad_json(client: httpx.Client) -> None:
    b = body()
    del b["peer_id"]  # required (mac is not: absent, it is resolved from the next hop)
    r = client.post("/api/v1/peers", json=b)
    assert r.status_code == 422 and detail(r)["field"] == "peer_id"
    r = client.post("/api/v1/peers", content=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and detail(r)["field"] == "body"


def test_conflicts_are_409(client: httpx.Client) -> None:
    assert client.post("/api/v1/peers", json=body()).status_code == 201
    for change, field in (({}, "name"), ({"name": "b"}, "address"),
                          ({"name": "b", "address": "198.18.5.2"}, "peer_id")):
        r = client.post("/api/v1/peers", json=body(**change))
        assert r.status_code == 409, r.text
        assert detail(r)["field"] == field
    # same address on another switch is fine
    r = client.post("/api/v1/peers", json=body("b", switch="leaf-2"))
    assert r.status_code == 201


def test_switch_refusal_is_503_and_nothing_added(client: httpx.Client, api: Product) -> None:
    # the data plane refuses the peer's entry (a full table: P4Runtime 1.4 section 12.3,
    # RESOURCE_EXHAUSTED in the Write's per-update error)
    dp = api.targets["default"].datapath
    dp.refusals["peers_set"] = lambda *args: True
    try:
        r = client.post("/api/v1/peers", json=body())
    finally:
        del dp.refusals["peers_set"]
    assert r.status_code == 503, r.text
    assert detail(r)["field"] == "switch" and "RESOURCE_EXHAUSTED" in detail(r)["message"]
    assert client.get("/api/v1/peers/web-1").status_code == 404
    assert api.store.list_peers() == []
    assert dp.peers_items() == [] and dp.peer_requests_get(0) is None  # nothing half-done
    assert client.post("/api/v1/peers", json=body()).status_code == 201


def test_bulk_add_all_or_nothing(client: httpx.Client, api: Product) -> None:
    peers = [p.to_dict() for p in make_peers(20)]
    peers[13]["address"] = "not-an-ip"
    r = client.post("/api/v1/peers/bulk", json={"peers": peers})
    assert r.status_code == 422 and detail(r)["field"] == "peers[13].address"
    assert client.get("/api/v1/peers").json()["total"] == 0

    peers[13]["address"] = "198.18.100.1"
    peers[19]["peer_id"] = peers[0]["peer_id"]  # clash inside the request
    r = client.post("/api/v1/peers/bulk", json={"peers": peers})
    # the controller names the batch's peer that clashes
    assert r.status_code == 409 and detail(r)["field"] == "peers[19].peer_id", r.text
    assert client.get("/api/v1/peers").json()["total"] == 0
    assert api.store.list_peers() == []

    peers[19]["peer_id"] = 10_000
    r = client.post("/api/v1/peers/bulk", json={"peers": peers})
    assert r.status_code == 201, r.text
    assert r.json()["total"] == 20
    assert sorted(p["index"] for p in r.json()["peers"]) == list(range(20))

    # a clash with what exists: nothing of the second batch lands
    more = [{**p.to_dict(), "address": f"198.18.200.{i + 1}", "peer_id": 20_000 + i}
            for i, p in enumerate(make_peers(5, prefix="more"))]
    more[4]["address"] = peers[2]["address"]
    r = client.post("/api/v1/peers/bulk", json={"peers": more})
    assert r.status_code == 409 and detail(r)["field"] == "peers[4].address", r.text
    assert client.get("/api/v1/peers").json()["total"] == 20
    assert len(api.store.list_peers()) == 20
    r = client.post("/api/v1/peers/bulk", json={"peers": []})
    assert r.status_code == 422 and detail(r)["field"] == "peers"


def test_bulk_delete_all_or_nothing(client: httpx.Client) -> None:
    client.post("/api/v1/peers/bulk", json={"peers": [p.to_dict() for p in make_peers(6)]})
    r = client.post("/api/v1/peers/bulk-delete", json={"names": ["peer-0001", "ghost"]})
    assert r.status_code == 404 and "ghost" in detail(r)["message"]
    assert client.get("/api/v1/peers").json()["total"] == 6
    r = client.post("/api/v1/peers/bulk-delete", json={"names": ["peer-0001", "peer-0002"]})
    assert r.status_code == 200 and r.json() == {"removed": ["peer-0001", "peer-0002"]}
    assert client.get("/api/v1/peers").json()["total"] == 4
    r = client.post("/api/v1/peers/bulk-delete", json={"names": []})
    assert r.status_code == 422 and detail(r)["field"] == "names"


def test_patch(client: httpx.Client, api: Product) -> None:
    client.post("/api/v1/peers", json=body())
    client.post("/api/v1/peers", json=body("other", address="198.18.5.9", peer_id=9))
    r = client.patch("/api/v1/peers/web-1", json={"group": "blue", "labels": {"x": "y"}})
    assert r.status_code == 200, r.text
    assert r.json()["group"] == "blue" and api.store.get_peer("web-1").labels == {"x": "y"}
    for patch, status, field in (
        ({"name": "renamed"}, 422, "name"),
        ({"port": -1}, 422, "port"),
        ({"address": None}, 422, "address"),
        ({}, 422, "body"),
        ({"bogus": 1}, 422, "bogus"),
        ({"address": "198.18.5.9"}, 409, "address"),
    ):
        r = client.patch("/api/v1/peers/web-1", json=patch)
        assert (r.status_code, detail(r)["field"]) == (status, field), r.text
    assert api.store.get_peer("web-1").address == "198.18.5.1"
    assert client.patch("/api/v1/peers/ghost", json={"group": "x"}).status_code == 404
    r = client.patch("/api/v1/peers/web-1", json={"admin_down": True})
    assert r.status_code == 200
    assert client.get("/api/v1/peers/web-1").json()["state"] == "ADMIN_DOWN"
    r = client.patch("/api/v1/peers/web-1", json={"group": None})
    assert r.status_code == 200 and r.json()["group"] is None


def test_list_filters_and_paging(client: httpx.Client, api: Product) -> None:
    client.post("/api/v1/peers/bulk", json={"peers": [p.to_dict() for p in make_peers(12)]})
    client.post("/api/v1/peers", json=body("edge", switch="leaf-2", group="edge"))
    api.set_states({"peer-0001": Health.DOWN, "peer-0002": Health.UP})
    get = lambda **params: client.get("/api/v1/peers", params=params).json()  # noqa: E731
    assert get()["total"] == 13
    assert [p["name"] for p in get(state="DOWN")["peers"]] == ["peer-0001"]
    assert [p["name"] for p in get(switch="leaf-2")["peers"]] == ["edge"]
    assert get(group="rack-1")["total"] == 3
    assert [p["name"] for p in get(q="198.18.0.1")["peers"]][:1] == ["peer-0000"]
    assert get(q="EDG")["total"] == 1
    assert get(limit=5, offset=10)["total"] == 13
    names = [p["name"] for p in get()["peers"]]
    assert [p["name"] for p in get(limit=5, offset=10)["peers"]] == names[10:15]
    assert "health" not in get()["peers"][0]
    assert get(include="health")["peers"][0]["health"]["name"] == names[0]
    r = client.get("/api/v1/peers", params={"state": "SIDEWAYS"})
    assert r.status_code == 422 and detail(r)["field"] == "state"
    r = client.get("/api/v1/peers", params={"limit": 0})
    assert r.status_code == 422 and detail(r)["field"] == "limit"


def test_health_values_and_summary(client: httpx.Client, api: Product) -> None:
    client.post("/api/v1/peers/bulk", json={"peers": [p.to_dict() for p in make_peers(4)]})
    api.set_states({"peer-0000": Health.UP, "peer-0001": Health.UP,
                    "peer-0002": Health.UP})
    api.set_state("peer-0002", Health.DOWN)
    h0 = client.get("/api/v1/peers/peer-0000/health").json()
    down0 = client.get("/api/v1/peers/peer-0002/health").json()
    api.tick({"peer-0000": 300, "peer-0001": 900})
    api.tick({"peer-0000": 500, "peer-0001": 900})
    # the data plane's registers, as the last poll read them
    h = client.get("/api/v1/peers/peer-0000/health").json()
    assert (h["rx_count"], h["tx_count"], h["rtt_last_us"], h["rtt_min_us"], h["rtt_max_us"]) \
        == (h0["rx_count"] + 2, h0["tx_count"] + 2, 500, min(h0["rtt_min_us"], 300), 500)
    assert h["state"] == "UP" and h["loss_ratio"] == 0.0
    down = client.get("/api/v1/peers/peer-0002/health").json()
    assert (down["miss_count"], down["tx_count"], down["rx_count"], down["state"]) == \
        (down0["miss_count"] + 2, down0["tx_count"] + 2, down0["rx_count"], "DOWN")
    assert client.get("/api/v1/peers/ghost/health").status_code == 404
    s = client.get("/api/v1/health").json()
    assert s["total"] == 4 and s["ready"] is True
    assert s["states"] == {"UNKNOWN": 1, "UP": 2, "DEGRADED": 0, "DOWN": 1, "ADMIN_DOWN": 0}
    assert s["switches"]["default"]["UP"] == 2 and s["switches"]["leaf-2"]["UP"] == 0
    rows = client.get("/api/v1/health/peers", params={"state": "UP"}).json()["peers"]
    assert sorted(r["name"] for r in rows) == ["peer-0000", "peer-0001"]


def test_history_paging_newest_first(client: httpx.Client, api: Product) -> None:
    client.post("/api/v1/peers", json=body())
    for state in [Health.UP, Health.DEGRADED, Health.UP, Health.DOWN, Health.UP]:
        api.set_state("web-1", state, reason=f"to {state}")
    page = client.get("/api/v1/peers/web-1/history", params={"limit": 2}).json()
    assert [e["new_state"] for e in page["events"]] == ["UP", "DOWN"]
    assert page["events"][0]["id"] > page["events"][1]["id"]
    page2 = client.get("/api/v1/peers/web-1/history",
                       params={"limit": 2, "before": page["next_before"]}).json()
    assert [e["new_state"] for e in page2["events"]] == ["UP", "DEGRADED"]
    rest = client.get("/api/v1/peers/web-1/history",
                      params={"limit": 10, "before": page2["next_before"]}).json()
    assert [e["kind"] for e in rest["events"]] == ["transition", "peer_added"]
    assert rest["next_before"] is None
    only = client.get("/api/v1/peers/web-1/history",
                      params={"kind": "transition", "limit": 100}).json()["events"]
    assert len(only) == 5 and {e["kind"] for e in only} == {"transition"}
    assert only[0]["reason"] == "data plane: response after silence"
    assert only[0]["old_state"] == "DOWN"
    r = client.get("/api/v1/peers/web-1/history", params={"kind": "nonsense"})
    assert r.status_code == 422 and detail(r)["field"] == "kind"
    assert client.get("/api/v1/peers/ghost/history").status_code == 404
    everything = client.get("/api/v1/events/history", params={"limit": 3}).json()
    assert len(everything["events"]) == 3 and everything["next_before"]


def test_switches_counters_probes(client: httpx.Client, api: Product) -> None:
    client.post("/api/v1/peers", json=body())
    sw = client.get("/api/v1/switches").json()["switches"]
    assert [(s["name"], s["connected"], s["peers"]) for s in sw] == \
        [("default", True, 1), ("leaf-2", True, 0)]
    assert client.get("/api/v1/switches/leaf-2").json()["name"] == "leaf-2"
    r = client.get("/api/v1/switches/nope")
    assert r.status_code == 404 and detail(r)["field"] == "switch"
    api.set_state("web-1", Health.UP)
    api.tick()
    # every answer the data plane recorded (the counters are read each detail interval)
    rx = api.targets["default"].datapath.register_read("hb_rx_count", 0)
    assert rx >= 2

    def counted() -> bool:
        c = client.get("/api/v1/dataplane/counters").json()["switches"]
        return bool(c["default"]["RESPONSE_RECORDED"]["packets"] == rx
                    and c["leaf-2"]["RESPONSE_RECORDED"]["packets"] == 0)
    wait_until(counted, f"RESPONSE_RECORDED == {rx}")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    api.targets["leaf-2"].stop_serving()  # a switch the controller cannot reach
    wait_until(lambda: client.get("/readyz").status_code == 503, "/readyz 503")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert client.get("/api/v1/switches/leaf-2").json()["connected"] is False
    assert client.get("/api/v1/nothing-here").status_code == 404


def test_openapi_document(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("/api/v1/peers", "/api/v1/peers/bulk", "/api/v1/peers/bulk-delete",
                 "/api/v1/peers/{name}", "/api/v1/peers/{name}/health",
                 "/api/v1/peers/{name}/history", "/api/v1/health", "/api/v1/switches",
                 "/api/v1/events", "/api/v1/events/history", "/healthz", "/readyz",
                 "/metrics"):
        assert path in paths, path
    assert set(paths["/api/v1/peers/{name}"]) == {"get", "patch", "delete"}
    assert "PeerIn" in doc["components"]["schemas"]
    assert "ErrorOut" in doc["components"]["schemas"]


def test_rtt_history(client: httpx.Client, api: Product) -> None:
    client.post("/api/v1/peers", json=body())
    api.set_state("web-1", Health.UP)
    api.tick({"web-1": 777})
    rtt = api.server.app.state.hbmon.rtt
    rtt.sample()  # deterministic: do not wait for the sampler thread
    samples = client.get("/api/v1/peers/web-1/rtt").json()["peers"]["web-1"]
    assert samples[-1] == 777
    api.set_state("web-1", Health.DOWN)
    rtt.sample()
    assert client.get("/api/v1/rtt").json()["peers"]["web-1"][-1] is None


def test_concurrent_adds_get_unique_indexes(make_server: ProductFactory) -> None:
    run = make_server()
    peers = make_peers(64)

    def add(p: Any) -> int:
        with run.client() as c:
            return c.post("/api/v1/peers", json=p.to_dict()).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(add, peers))
    assert codes == [201] * 64
    with run.client() as c:
        listed = c.get("/api/v1/peers").json()["peers"]
    assert len({p["index"] for p in listed}) == 64
    assert len(run.store.list_peers()) == 64
    added = [e for e in run.store.events(limit=1000) if e.kind == EventKind.PEER_ADDED]
    assert len(added) == 64


def test_listing_cache_follows_every_change(client: httpx.Client, api: Product) -> None:
    cache = api.server.app.state.hbmon.listing
    client.post("/api/v1/peers/bulk", json={"peers": [p.to_dict() for p in make_peers(5)]})
    # the controller publishes the adds' events on its own thread: once they are out, nothing
    # changes until the test says so (rounds run on tick()), and the cache must serve
    assert api.service.flush_events()
    first = client.get("/api/v1/peers").json()
    hits = cache.hits
    assert client.get("/api/v1/peers").json() == first
    assert cache.hits == hits + 1  # served from the cache
    # a transition (an event) shows at once
    api.set_state("peer-0003", Health.DOWN)
    rows = {p["name"]: p["state"] for p in client.get("/api/v1/peers").json()["peers"]}
    assert rows["peer-0003"] == "DOWN"
    # so do writes through the API, even before the controller publishes their events
    client.delete("/api/v1/peers/peer-0004")
    assert client.get("/api/v1/peers").json()["total"] == 4
    client.patch("/api/v1/peers/peer-0000", json={"group": "moved"})
    assert client.get("/api/v1/peers", params={"group": "moved"}).json()["total"] == 1
    # health listings are never cached
    tx = client.get("/api/v1/peers", params={"include": "health"}).json()["peers"][0]
    api.tick({"peer-0000": 111})
    h = client.get("/api/v1/peers", params={"include": "health"}).json()["peers"][0]
    assert h["health"]["tx_count"] == tx["health"]["tx_count"] + 1


def test_listing_cache_max_age_bounds_a_change_without_event(
        make_fake_server: ServerFactory) -> None:
    """The cache alone (HTTP layer): FakeService, because the real controller makes no
    state change without an event, and this is about one that comes without."""
    api = make_fake_server()
    cache = api.server.app.state.hbmon.listing
    with api.client() as client:
        client.post("/api/v1/peers/bulk", json={"peers": [p.to_dict() for p in make_peers(2)]})
        client.get("/api/v1/peers")
        cache.max_age = 0.05
        api.service._health["peer-0001"].state = Health.DEGRADED  # silently
        gate = threading.Event()
        for _ in range(500):
            rows = {p["name"]: p["state"]
                    for p in client.get("/api/v1/peers").json()["peers"]}
            if rows["peer-0001"] == "DEGRADED":
                break
            gate.wait(0.01)
        assert rows["peer-0001"] == "DEGRADED"


def test_listing_cache_refuses_bodies_computed_across_an_invalidation() -> None:
    from hbmon.api.app import ListingCache

    cache = ListingCache()
    generation = cache.generation
    cache.invalidate()  # something changed while the body was being computed
    cache.put(("k",), generation, b"stale")
    assert cache.get(("k",)) is None
    cache.put(("k",), cache.generation, b"fresh")
    assert cache.get(("k",)) == b"fresh"

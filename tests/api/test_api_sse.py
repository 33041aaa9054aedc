"""Server-Sent Events of the real product (tests/api/real_product.py): live delivery of
the controller's events, Last-Event-ID resume, filters, slow consumers."""

from __future__ import annotations

from typing import Any

from api_fakes import make_peers
from api_harness import sse
from hbmon.model import Event, EventKind, Health
from hbmon.store.events import EventBus
from real_product import Product, ProductFactory


def test_live_events_in_order(api: Product) -> None:
    api.service.add_peers(make_peers(3))
    with sse(api) as s:
        assert s.status == 200 and s.content_type.startswith("text/event-stream")
        api.set_state("peer-0001", Health.UP, reason="responses")
        api.set_state("peer-0001", Health.DOWN, reason="3 misses")
        api.service.remove_peers(["peer-0002"])
        frames = s.take(3)
    ids = [int(f["id"]) for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [f["event"] for f in frames] == ["transition", "transition", "peer_removed"]
    down = frames[1]["json"]
    assert (down["peer"], down["old_state"], down["new_state"], down["details"]["source"]) == \
        ("peer-0001", "UP", "DOWN", "digest")  # the data plane's DOWN event
    assert down["reason"].startswith("data plane:")
    assert down["id"] == ids[1]


def test_last_event_id_resume(api: Product) -> None:
    api.service.add_peers(make_peers(2))  # the switches' events come first, then the adds
    n = api.last_event_id()
    for state in (Health.UP, Health.DEGRADED, Health.DOWN):
        api.set_state("peer-0000", state)  # n+1, n+2, n+3
    with sse(api, last_event_id=n) as s:
        replay = s.take(3)
        assert [int(f["id"]) for f in replay] == [n + 1, n + 2, n + 3]
        assert [f["json"]["new_state"] for f in replay] == ["UP", "DEGRADED", "DOWN"]
        api.set_state("peer-0000", Health.UP)
        assert int(s.next()["id"]) == n + 4
    # `after` query parameter works like the header (for clients that cannot set headers)
    with sse(api, after=n + 3) as s:
        assert int(s.next()["id"]) == n + 4
    # beyond the end: nothing replayed, live events still flow
    with sse(api, last_event_id=n + 4) as s:
        api.set_state("peer-0001", Health.UP)
        assert int(s.next()["id"]) == n + 5


def test_without_last_event_id_only_new_events(api: Product) -> None:
    api.service.add_peers(make_peers(2))
    n = api.last_event_id()
    with sse(api) as s:
        api.set_state("peer-0001", Health.UP)
        first = s.next()
    assert int(first["id"]) == n + 1 and first["json"]["peer"] == "peer-0001"


def test_filters(api: Product) -> None:
    api.service.add_peers(make_peers(3))
    with sse(api, peer="peer-0002", kind="transition") as s:
        api.set_state("peer-0001", Health.UP)
        api.service.update_peer("peer-0002", {"group": "x"})
        api.set_state("peer-0002", Health.DOWN)
        got = s.next()
    assert got["json"]["peer"] == "peer-0002" and got["event"] == "transition"
    with api.client() as c:
        r = c.get("/api/v1/events", headers={"Last-Event-ID": "abc"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "Last-Event-ID"
        r = c.get("/api/v1/events", params={"kind": "bogus"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "kind"


def test_slow_consumer_catches_up_from_the_store(make_server: ProductFactory) -> None:
    run = make_server()
    # A tiny buffer: one burst overflows it; the stream must refill from the store.
    small = EventBus(run.store, max_buffer=4)
    run.server.app.state.hbmon.bus = small
    run.service.sink = small
    run.service.add_peers(make_peers(50))
    with sse(run) as s:
        published = run.set_states({f"peer-{i:04d}": Health.UP for i in range(50)})
        frames = s.take(50)
    assert [int(f["id"]) for f in frames] == [e.id for e in published]


def test_keepalive_comments(make_server: ProductFactory) -> None:
    run = make_server(sse_keepalive=0.05)
    with sse(run) as s:
        assert s.first_comment is not None and s.first_comment.startswith("hbmon events")
        comments = [s.comments.get(timeout=10) for _ in range(2)]
        assert comments == ["keepalive", "keepalive"]
        run.service.add_peers(make_peers(1))  # events still flow between keepalives
        assert s.next()["event"] == "peer_added"


def test_server_stop_ends_open_streams(make_server: ProductFactory) -> None:
    run = make_server()
    with sse(run) as s:
        assert run.bus.subscriber_count == 1
        run.server.stop()  # returns only once uvicorn exited: the stream did not hold it
        assert run.bus.subscriber_count == 0
        s.close()


def test_publish_persists_before_fan_out(api: Product) -> None:
    seen: list[list[int]] = []

    def listener(events: Any) -> None:
        # by the time listeners run, the events are in the store with their ids
        seen.append([e.id for e in events])
        assert api.store.events(after_id=events[0].id - 1, limit=10)[0].id == events[0].id

    api.bus.add_listener(listener)
    stored = api.bus.publish([Event(EventKind.SWITCH, 1.0, switch="default", reason="up")])
    assert seen == [[stored[0].id]] and stored[0].id > 0
    assert api.bus.publish([]) == []

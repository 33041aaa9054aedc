"""Controller replicas sharing PostgreSQL: every replica's streams carry every event."""

from __future__ import annotations

import asyncio

from api_fakes import make_peers
from hbmon.model import Event, EventKind, Health
from hbmon.store.events import EventBus
from hbmon.store.sql import open_store
from real_product import ProductFactory
from test_api_sse import sse


def test_buses_on_a_shared_store_deliver_all_events_in_order(pg_url: str) -> None:
    store_a, store_b = open_store(pg_url), open_store(pg_url)
    bus_a, bus_b = EventBus(store_a), EventBus(store_b)
    assert bus_a.follow_interval and bus_b.follow_interval  # PostgreSQL: followed
    try:
        async def collect(n: int) -> list[Event]:
            got: list[Event] = []
            with bus_b.subscribe() as sub:
                for i in range(n):  # interleave the replicas' publishes
                    bus = bus_a if i % 3 else bus_b
                    await asyncio.to_thread(bus.publish, [
                        Event(EventKind.TRANSITION, float(i), peer=f"p{i}",
                              old_state=Health.UP, new_state=Health.DOWN)])
                while len(got) < n:
                    batch = await sub.next_batch(10.0)
                    assert batch is not None, f"stalled after {len(got)} events"
                    got.extend(batch)
            return got

        got = asyncio.run(collect(60))
        assert [e.peer for e in got] == [f"p{i}" for i in range(60)]
        ids = [e.id for e in got]
        assert ids == sorted(ids) and len(set(ids)) == 60
        assert bus_a.published["transition"] == 40 and bus_b.published["transition"] == 20
    finally:
        for bus in (bus_a, bus_b):
            bus.close()
        store_a.close()
        store_b.close()


def test_sse_on_one_replica_sees_writes_through_another(
    pg_url: str, make_server: ProductFactory,
) -> None:
    a = make_server(store_url=pg_url)
    b = make_server(store_url=pg_url, replica_of=a)  # a backup of a's switches
    with sse(b) as stream:
        with a.client() as c:
            peer = make_peers(1)[0].to_dict()
            assert c.post("/api/v1/peers", json=peer).status_code == 201
        frame = stream.next()
        assert frame["event"] == "peer_added" and frame["json"]["peer"] == peer["name"]
    with b.client() as c:
        history = c.get("/api/v1/events/history").json()["events"]
        assert [e["peer"] for e in history if e["kind"] != "switch"] == [peer["name"]]
    assert [p.name for p in b.store.list_peers()] == [peer["name"]]

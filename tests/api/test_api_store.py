"""Store contract on both backends: real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from api_fakes import make_peers
from hbmon.model import (
    ConflictError,
    Event,
    EventKind,
    Health,
    NotFoundError,
    Peer,
    ValidationError,
)
from hbmon.store.sql import PostgresStore, SqliteStore, SqlStore, StoreError, open_store


@pytest.fixture
def st(any_url: str) -> Iterator[SqlStore]:
    s = open_store(any_url)
    yield s
    s.close()


def peer(name: str, address: str, peer_id: int, **kw: object) -> Peer:
    return Peer(name=name, address=address, peer_id=peer_id, mac="02:00:00:00:00:AA", port=1,
                **kw)  # type: ignore[arg-type]


def transition(name: str, new: Health, t: float = 1.0) -> Event:
    return Event(EventKind.TRANSITION, t, peer=name, switch="default",
                 old_state=Health.UNKNOWN, new_state=new, reason="test")


def test_roundtrip_keeps_every_field(st: SqlStore) -> None:
    p = peer("db-1", "198.18.1.1", 7, switch="leaf-2", group="rack-a",
             labels={"role": "db", "zone": "b"}, detect_mult=5, admin_down=True, index=42)
    st.add_peers([p])
    got = st.get_peer("db-1")
    assert got.to_dict() == {**p.to_dict(), "mac": "02:00:00:00:00:aa"}
    assert [x.name for x in st.list_peers()] == ["db-1"]


def test_conflicts_name_the_field(st: SqlStore) -> None:
    st.add_peers([peer("a", "198.18.0.1", 1)])
    with pytest.raises(ConflictError) as exc:
        st.add_peers([peer("a", "198.18.0.2", 2)])
    assert exc.value.field == "name"
    with pytest.raises(ConflictError) as exc:
        st.add_peers([peer("b", "198.18.0.1", 2)])
    assert exc.value.field == "address"
    with pytest.raises(ConflictError) as exc:
        st.add_peers([peer("b", "198.18.0.2", 1)])
    assert exc.value.field == "peer_id"
    # address and id are unique per switch, not globally
    st.add_peers([peer("b", "198.18.0.1", 1, switch="leaf-2")])
    assert len(st.list_peers()) == 2


def test_bulk_add_is_all_or_nothing(st: SqlStore) -> None:
    st.add_peers([peer("existing", "198.18.9.9", 999)])
    batch = make_peers(50)
    batch.append(peer("late-clash", "198.18.9.9", 1000))  # clashes with `existing`
    with pytest.raises(ConflictError) as exc:
        st.add_peers(batch)
    assert exc.value.field == "address"
    assert [p.name for p in st.list_peers()] == ["existing"]
    # a clash inside the request itself
    dup = make_peers(3)
    dup.append(Peer(**{**dup[0].to_dict(), "name": "other"}))
    with pytest.raises(ConflictError):
        st.add_peers(dup)
    assert [p.name for p in st.list_peers()] == ["existing"]
    # an invalid peer anywhere: nothing written
    bad = make_peers(3)
    bad[2].address = "300.1.1.1"
    with pytest.raises(ValidationError) as vexc:
        st.add_peers(bad)
    assert vexc.value.field == "address"
    assert len(st.list_peers()) == 1
    st.add_peers(make_peers(50))
    assert len(st.list_peers()) == 51


def test_update(st: SqlStore) -> None:
    st.add_peers([peer("a", "198.18.0.1", 1), peer("b", "198.18.0.2", 2)])
    a = st.get_peer("a")
    a.group, a.labels, a.address = "g", {"k": "v"}, "198.18.0.3"
    st.update_peer(a)
    assert st.get_peer("a").to_dict() == a.to_dict()
    a.address = "198.18.0.2"  # b's
    with pytest.raises(ConflictError) as exc:
        st.update_peer(a)
    assert exc.value.field == "address"
    assert st.get_peer("a").address == "198.18.0.3"
    with pytest.raises(NotFoundError):
        st.update_peer(peer("ghost", "198.18.0.9", 9))


def test_remove_is_all_or_nothing(st: SqlStore) -> None:
    st.add_peers(make_peers(5))
    with pytest.raises(NotFoundError) as exc:
        st.remove_peers(["peer-0000", "peer-0001", "nope"])
    assert exc.value.name == "nope"
    assert len(st.list_peers()) == 5
    st.remove_peers(["peer-0000", "peer-0001", "peer-0001"])
    assert [p.name for p in st.list_peers()] == ["peer-0002", "peer-0003", "peer-0004"]
    with pytest.raises(NotFoundError):
        st.get_peer("peer-0000")
    # a removed peer's address and id are free again
    st.add_peers(make_peers(1))


def test_event_ids_increase_and_page(st: SqlStore) -> None:
    first = st.append_events([transition("a", Health.UP, 1.0), transition("b", Health.UP, 2.0)])
    second = st.append_events([transition("a", Health.DOWN, 3.0)])
    ids = [e.id for e in first + second]
    assert ids == sorted(ids) and len(set(ids)) == 3 and ids[0] >= 1
    assert st.append_events([]) == []
    more = st.append_events([
        Event(EventKind.PEER_ADDED, 4.0 + i, peer=f"p{i}", details={"index": i})
        for i in range(10)])
    all_ids = [e.id for e in st.events(limit=1000)]
    assert all_ids == ids + [e.id for e in more]
    # forward paging (resume)
    assert [e.id for e in st.events(after_id=ids[1], limit=2)] == [ids[2], more[0].id]
    # backward paging: the newest `limit` below `before_id`, oldest first
    assert [e.id for e in st.events(before_id=more[3].id, limit=2)] == [more[1].id, more[2].id]
    assert [e.id for e in st.events(peer="a", limit=10)] == [ids[0], ids[2]]
    assert [e.kind for e in st.events(kinds=[EventKind.TRANSITION], limit=100)] == \
        [EventKind.TRANSITION] * 3
    got = st.events(after_id=ids[2], limit=1)[0]
    assert got.details == {"index": 0} and got.peer == "p0" and got.time == 4.0
    down = st.events(peer="a", limit=10)[-1]
    assert (down.old_state, down.new_state, down.reason) == (Health.UNKNOWN, Health.DOWN,
                                                              "test")
    assert st.last_event_id() == more[-1].id
    with pytest.raises(ValidationError):
        st.events(limit=0)


def test_event_ids_never_reused_after_pruning(st: SqlStore) -> None:
    old = st.append_events([transition("a", Health.UP, 10.0), transition("a", Health.DOWN, 11.0)])
    assert st.prune_events(older_than=100.0) == 2
    assert st.events(limit=10) == []
    new = st.append_events([transition("a", Health.UP, 200.0)])
    assert new[0].id > old[-1].id


def test_settings(st: SqlStore) -> None:
    assert st.get_setting("interval") is None
    st.set_setting("interval", {"ms": 10, "multiplier": 3})
    st.set_setting("interval", {"ms": 20, "multiplier": 3})
    st.set_setting("flag", True)
    assert st.get_setting("interval") == {"ms": 20, "multiplier": 3}
    assert st.get_setting("flag") is True


def test_setting_default_first_writer_wins(any_url: str) -> None:
    """Controllers starting together on one store (hbmon.controller.fabric.load_nonce_secret) must
    all get the one value stored first: eight connections race on a fresh key."""
    stores = [open_store(any_url) for _ in range(8)]
    try:
        stores[0].set_setting("other", 1)  # the key under test is still absent
        start = threading.Barrier(len(stores))
        results: list[object] = [None] * len(stores)

        def race(i: int) -> None:
            start.wait()
            results[i] = stores[i].setting_default("race", f"value-{i}")

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stored = stores[0].get_setting("race")
        assert stored in {f"value-{i}" for i in range(len(stores))}
        assert results == [stored] * len(stores)
        assert stores[3].setting_default("race", "later") == stored  # never overwritten
    finally:
        for s in stores:
            s.close()


def test_reopen_keeps_everything(any_url: str) -> None:
    s = open_store(any_url)
    s.add_peers(make_peers(20))
    ev = s.append_events([transition("peer-0001", Health.DOWN)])
    s.set_setting("k", [1, 2])
    s.close()
    with pytest.raises(StoreError):
        s.list_peers()
    s2 = open_store(any_url)
    try:
        assert len(s2.list_peers()) == 20
        assert s2.events(limit=5)[0].id == ev[0].id
        assert s2.get_setting("k") == [1, 2]
        assert s2.append_events([transition("x", Health.UP)])[0].id > ev[0].id
    finally:
        s2.close()


def test_bad_urls() -> None:
    with pytest.raises(ValidationError) as exc:
        open_store("mysql://x")
    assert exc.value.field == "store_url"
    with pytest.raises(ValidationError):
        open_store("sqlite:relative.db")
    assert isinstance(open_store("sqlite://:memory:"), SqliteStore)


def test_sqlite_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(s, SqliteStore)
    s.add_peers(make_peers(1))
    s.close()
    # read the persistent mode from a fresh connection; synchronous is per connection, so
    # check the store's own connection settings through a new store instance
    raw = sqlite3.connect(tmp_path / "x.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    s2 = SqliteStore(str(tmp_path / "x.db"))
    assert s2._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s2.close()


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_store(f"sqlite:///{path}").close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(f"sqlite:///{path}")


def test_sqlite_concurrent_writers_share_a_file(tmp_path: Path) -> None:
    """Two stores (two connections) on one file: every write lands once, ids stay unique."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    a, b = open_store(url), open_store(url)
    try:
        def write(s: SqlStore, prefix: str) -> None:
            for i in range(40):
                s.append_events([transition(f"{prefix}{i}", Health.UP)])
        threads = [threading.Thread(target=write, args=(s, p)) for s, p in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [e.id for e in a.events(limit=1000)]
        assert len(ids) == 80 == len(set(ids))
    finally:
        a.close()
        b.close()


# ---- PostgreSQL only ------------------------------------------------------------------


def test_pg_replicas_share_inventory_and_conflicts(pg_url: str) -> None:
    a, b = open_store(pg_url), open_store(pg_url)
    try:
        assert isinstance(a, PostgresStore)
        a.add_peers([peer("a", "198.18.0.1", 1)])
        assert [p.name for p in b.list_peers()] == ["a"]
        with pytest.raises(ConflictError) as exc:
            b.add_peers([peer("a", "198.18.0.2", 2)])
        assert exc.value.field == "name"
        with pytest.raises(ConflictError) as exc:
            b.add_peers([peer("c", "198.18.0.1", 3)])
        assert exc.value.field == "address"
    finally:
        a.close()
        b.close()


def test_pg_event_ids_follow_commit_order_across_replicas(pg_url: str) -> None:
    """A follower paging with after_id must see every event, even with two writers.

    Identity columns alone hand out ids at insert time, so a transaction holding a smaller
    id could commit after a reader moved past it; the store orders commits.
    """
    writers = [open_store(pg_url) for _ in range(2)]
    reader = open_store(pg_url)
    per_writer = 150
    done = threading.Event()
    seen: list[int] = []

    def write(s: SqlStore, tag: str) -> None:
        for i in range(per_writer):
            s.append_events([transition(f"{tag}{i}", Health.UP)])

    def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = reader.events(after_id=cursor, limit=50)
            for e in page:
                seen.append(e.id)
                cursor = e.id
            if finished and not page:
                return

    try:
        follower = threading.Thread(target=follow)
        follower.start()
        threads = [threading.Thread(target=write, args=(s, str(i)))
                   for i, s in enumerate(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        follower.join(60)
        assert not follower.is_alive()
        total = [e.id for e in reader.events(limit=10_000)]
        assert len(total) == 2 * per_writer
        assert seen == total  # nothing skipped, nothing twice, in order
    finally:
        for s in [*writers, reader]:
            s.close()


def test_pg_reconnects_after_the_connection_dies(pg_url: str) -> None:
    s = open_store(pg_url)
    try:
        assert isinstance(s, PostgresStore)
        s.add_peers([peer("a", "198.18.0.1", 1)])
        backend_pid = s._conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        # The call that hits the dead connection fails (nothing acknowledged) ...
        with pytest.raises(psycopg.OperationalError):
            s.list_peers()
        # ... and the next one reconnects.
        assert [p.name for p in s.list_peers()] == ["a"]
        s.add_peers([peer("b", "198.18.0.2", 2)])
        assert len(s.list_peers()) == 2
    finally:
        s.close()


def test_pg_unreachable_server_is_a_clear_error() -> None:
    from pg_cluster import free_port

    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1") as exc:
        PostgresStore(f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/x",
                      connect_timeout=2)
    assert "s3cret-pw" not in str(exc.value)  # the URL's password stays out of logs

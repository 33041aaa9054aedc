"""The parts replicas are built from (issue 10, docs/ha.md), each on real components:

- P4RuntimeClient without an election id on the real kernel target: a backup that reads
  but never writes (P4Runtime 1.4 sections 5.3 and 15.3.1), promoted and demoted on its
  live stream by `set_election_id` (5.3: the highest id is primary; 5: after the primary
  steps down, none until an id reaches the highest ever seen);
- schema 2 on SQLite and PostgreSQL: `UNIQUE (switch, idx)` (SlotTakenError) and
  `programmed_at`, and the migration of a schema-1 database that gave a slot twice;
- NOTIFY hbmon_inventory sent in the write's transaction (nothing for a refused write);
- the `ha:` config keys.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from hbmon.config import parse_config
from hbmon.model import Peer, ValidationError
from hbmon.p4 import P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient, P4RuntimeError
from hbmon.store.sql import INVENTORY_CHANNEL, SCHEMA_VERSION, SlotTakenError, open_store
from kernel.bpf_lab import Lab
from kernel.server_harness import P4INFO, KernelTarget, wait_for


def peer(name: str, n: int, index: int | None, switch: str = "s1") -> Peer:
    return Peer(name=name, address=f"198.18.1.{n}", peer_id=n, mac=f"02:00:00:00:00:{n:02x}",
                port=1, switch=switch, index=index)


# ---- P4Runtime: a backup without an election id -----------------------------------------


@pytest.fixture
def target() -> Iterator[KernelTarget]:
    with Lab(1) as lab, KernelTarget(lab.ports) as t:
        yield t


@pytest.mark.netns
def test_no_election_id_is_a_backup_until_set(target: KernelTarget) -> None:
    assert target.address is not None
    schema = P4Schema.load(P4INFO)
    other = P4RuntimeClient(target.address, 1, 5, schema=schema, take_over=False)
    replica = P4RuntimeClient(target.address, 1, None, schema=schema, take_over=False)
    try:
        assert other.connect(10)  # 5.3: the only id, primary
        other.ensure_pipeline(schema)
        assert not replica.connect(10)  # unset id: a backup
        # a backup reads (the replicas' polls) ...
        assert list(replica.read([TableEntry("HbIngress.peers")])) == []
        # ... and never sends a write: refused in the client, before the target
        with pytest.raises(P4RuntimeError) as refused:
            replica.write([])
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        # elected with a higher id on the live stream: primary, the other a backup (5.3)
        replica.set_election_id(7, take_over=True)
        assert wait_for(lambda: replica.primary and not other.primary, 5)
        replica.write([])  # an id now: writes are attempted (an empty batch is fine)
        # deposed: back to no id; no primary until an id reaches 7 (section 5)
        replica.set_election_id(None, take_over=False)
        assert wait_for(lambda: not replica.primary, 5)
        assert not other.primary
        other.set_election_id(8)
        assert wait_for(lambda: other.primary, 5)
    finally:
        replica.close()
        other.close()


# ---- store schema 2 ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: str = request.getfixturevalue("pg_url")
    return pg


def _raw(url: str) -> Any:
    """A plain DB-API connection to the store's database (autocommit)."""
    if url.startswith("sqlite:"):
        return sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    return psycopg.connect(url, autocommit=True)


def test_a_slot_is_given_once(url: str) -> None:
    with open_store(url) as store:
        store.add_peers([peer("a", 1, 0), peer("b", 2, 1), peer("c", 3, 0, switch="s2")])
        with pytest.raises(SlotTakenError) as taken:
            store.add_peers([peer("d", 4, 1)])
        assert taken.value.field == "index"
        assert {p.name for p in store.list_peers()} == {"a", "b", "c"}
        moved = store.get_peer("c")
        moved.switch, moved.index = "s1", 0
        with pytest.raises(SlotTakenError):
            store.update_peer(moved)


def test_programmed_at_is_set_by_the_leader_and_reset_by_a_change(url: str) -> None:
    with open_store(url) as store:
        store.add_peers([peer("a", 1, 0), peer("b", 2, 1)])
        assert store.programmed_at(["a", "b", "gone"]) == {"a": None, "b": None}
        store.mark_programmed("s1", ["a"], 100.0)
        store.mark_programmed("s2", ["b"], 100.0)  # not on s2: not marked
        assert store.programmed_at(["a", "b"]) == {"a": 100.0, "b": None}
        store.mark_programmed("s1", ["a"], 200.0)  # already marked: the first time stays
        assert store.programmed_at(["a"]) == {"a": 100.0}
        changed = store.get_peer("a")
        changed.port = 2
        store.update_peer(changed)
        assert store.programmed_at(["a"]) == {"a": None}


def test_schema_1_is_migrated_and_a_doubly_given_slot_resolved(url: str) -> None:
    with open_store(url) as store:
        store.add_peers([peer("a", 1, 0), peer("b", 2, 1), peer("c", 3, 2)])
    raw = _raw(url)
    try:  # back to schema 1: no index, no column, and a slot given twice
        raw.execute("DROP INDEX peers_switch_idx")
        raw.execute("ALTER TABLE peers DROP COLUMN programmed_at")
        raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        raw.execute("UPDATE peers SET idx = 0 WHERE name = 'b'")
    finally:
        raw.close()
    with open_store(url) as store:
        idx = {p.name: p.index for p in store.list_peers()}
        assert idx == {"a": 0, "b": None, "c": 2}  # the first by name keeps the slot
        assert store.programmed_at(["a"]) == {"a": None}
        with pytest.raises(SlotTakenError):
            store.add_peers([peer("d", 4, 2)])
        version = store.get_setting("x")  # the store works
        assert version is None
    raw = _raw(url)
    try:
        row = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert int(row[0]) == SCHEMA_VERSION == 4
    finally:
        raw.close()


def test_inventory_changes_notify_in_their_transaction(pg_url: str) -> None:
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute(f"LISTEN {INVENTORY_CHANNEL}")
        with open_store(pg_url) as store:
            store.origin = "replica-x"
            store.add_peers([peer("a", 1, 0), peer("b", 2, 1)])
            with pytest.raises(SlotTakenError):
                store.add_peers([peer("c", 3, 0)])  # rolled back: no notification
            changed = store.get_peer("a")
            changed.port = 2
            store.update_peer(changed)
            store.remove_peers(["b"])
            store.add_peers([peer(f"bulk{i:04d}-with-a-long-name", 10 + i % 200, 100 + i,
                                  switch=f"s{i // 200 + 2}") for i in range(600)])
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=5)]
    finally:
        listener.close()
    assert notes[:4] == [
        {"origin": "replica-x", "op": "add", "names": ["a", "b"]},
        {"origin": "replica-x", "op": "update", "names": ["a"]},
        {"origin": "replica-x", "op": "remove", "names": ["b"]},
        {"origin": "replica-x", "op": "reload", "names": []},  # beyond the payload limit
    ]
    assert len(notes) == 4


# ---- config -----------------------------------------------------------------------------


def _config(**extra: Any) -> dict[str, Any]:
    return {"switches": [{"name": "s1", "grpc": "127.0.0.1:9559"}], **extra}


def test_ha_config_keys() -> None:
    default = parse_config(_config())
    assert default.ha.replica_id is None and default.ha.program_wait_s == 3.0
    cfg = parse_config(_config(ha={"replica_id": "ctl-a", "program_wait_s": 0.5}))
    assert (cfg.ha.replica_id, cfg.ha.program_wait_s) == ("ctl-a", 0.5)
    for bad, field in (({"replica": "x"}, "ha.replica"), ({"replica_id": ""}, "ha.replica_id"),
                       ({"replica_id": 3}, "ha.replica_id"),
                       ({"program_wait_s": -1}, "ha.program_wait_s"), ("x", "ha")):
        with pytest.raises(ValidationError) as exc:
            parse_config(_config(ha=bad))
        assert exc.value.field == field

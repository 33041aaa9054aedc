"""Durable inventory, transition history and settings (implements `hbmon.interfaces.Store`).

`open_store(url)` picks the backend:

- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, `sqlite://:memory:` (the
  default for one controller). WAL with `synchronous=FULL`: a call that returned has been
  fsynced, so an acknowledged write survives kill -9 and power loss.
- `postgresql://user@host:port/db` (psycopg 3) for controller replicas that share state.

Every public method is one transaction. Conflicts are checked inside the transaction so the
error names the field (`name`, `address`, `peer_id`); the unique constraints stay as the
last line of defence against a concurrent replica and are mapped to the same errors.

A slot a peer leaves (removal, or a move to another switch or index) is recorded in
`slot_resets` in the same transaction, and forgotten once the controller has zeroed its
registers (`slots_reset`): a crash between the two leaves the record, so the next start
resets the slot before another peer uses it (`pending_slot_resets`).

Slots are unique in the database: `UNIQUE (switch, idx)` on `peers` (schema 2). Replicas
allocate from their own view of the inventory; when two pick the same index, the second
commit fails on that constraint (`SlotTakenError`), and that replica re-reads the inventory
and picks again. `programmed_at` says when the leader of the peer's switch last programmed
the peer as it is now (NULL after an add or a change until then; docs/ha.md).

On PostgreSQL every inventory change sends `NOTIFY hbmon_inventory` inside its own
transaction (delivered at commit, in commit order) with the changed peer names and the
`origin` replica, so every replica applies it (`hbmon.controller.fabric.Fabric`).

Event ids are strictly increasing in commit order on both backends, so a reader that pages
with `after_id` (SSE resume) can never skip an event committed later with a smaller id:
SQLite serialises writers anyway; on PostgreSQL `append_events` takes a transaction-scoped
advisory lock so id allocation and commit happen in the same order on every replica.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hbmon.model import (
    ConflictError,
    Event,
    EventKind,
    Health,
    NotFoundError,
    Peer,
    ValidationError,
)

# 2: peers.programmed_at, UNIQUE (switch, idx); 3: peers.mac nullable; 4: BFD peers
# (peers.kind, desired_min_tx_ms, required_min_rx_ms; peer_id nullable: a bfd peer has none)
SCHEMA_VERSION = 4
INVENTORY_CHANNEL = "hbmon_inventory"  # NOTIFY channel of inventory changes (PostgreSQL)
_NOTIFY_MAX = 7900  # bytes: PostgreSQL refuses payloads of 8000 and more
# Arbitrary constant shared by all replicas: the advisory lock that orders event commits.
_PG_EVENT_LOCK = 0x6862_6D6F_6E01  # "hbmon" + 1

_PEER_COLUMNS = (
    "name", "switch", "address", "peer_id", "mac", "port", "grp", "labels", "detect_mult",
    "admin_down", "idx", "kind", "desired_min_tx_ms", "required_min_rx_ms",
)
_EVENT_COLUMNS = (
    "id", "kind", "time", "peer", "switch", "old_state", "new_state", "reason", "details",
)


class StoreError(RuntimeError):
    """The database is unusable (bad URL, unreachable server, newer schema)."""


class SlotTakenError(ConflictError):
    """Another peer (added by another replica) holds this (switch, index) already."""

    def __init__(self) -> None:
        super().__init__("index", "slot already used on this switch")


class _Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def _peer_row(peer: Peer) -> tuple[Any, ...]:
    return (
        peer.name, peer.switch, peer.address,
        peer.peer_id or None,  # NULL for a bfd peer: UNIQUE (switch, peer_id) ignores NULLs
        peer.mac.lower() if peer.mac else None, peer.port,
        peer.group, json.dumps(peer.labels, sort_keys=True), peer.detect_mult,
        bool(peer.admin_down), peer.index, peer.kind, peer.desired_min_tx_ms,
        peer.required_min_rx_ms,
    )


def _row_peer(row: Sequence[Any]) -> Peer:
    (name, switch, address, peer_id, mac, port, grp, labels, detect_mult, admin_down, idx,
     kind, tx_ms, rx_ms) = row
    return Peer(
        name=name, address=address, peer_id=int(peer_id or 0), mac=mac, port=int(port),
        switch=switch, group=grp, labels=json.loads(labels) if labels else {},
        detect_mult=detect_mult, admin_down=bool(admin_down), index=idx,
        kind=kind or "heartbeat",
        desired_min_tx_ms=None if tx_ms is None else int(tx_ms),
        required_min_rx_ms=None if rx_ms is None else int(rx_ms),
    )


def _row_event(row: Sequence[Any]) -> Event:
    id_, kind, time, peer, switch, old_state, new_state, reason, details = row
    return Event(
        kind=EventKind(kind), time=float(time), peer=peer, switch=switch,
        old_state=Health(old_state) if old_state else None,
        new_state=Health(new_state) if new_state else None,
        reason=reason or "", details=json.loads(details) if details else {}, id=int(id_),
    )


def _check_batch(peers: Sequence[Peer]) -> None:
    """Clashes inside one bulk request (the database would only say 'unique violation')."""
    names: set[str] = set()
    addresses: set[tuple[str, str]] = set()
    ids: set[tuple[str, int]] = set()
    for peer in peers:
        if peer.name in names:
            raise ConflictError("name", f"{peer.name!r} appears twice in the request")
        if (peer.switch, peer.address) in addresses:
            raise ConflictError(
                "address", f"{peer.address} appears twice for switch {peer.switch!r}")
        if peer.peer_id and (peer.switch, peer.peer_id) in ids:
            raise ConflictError(
                "peer_id", f"{peer.peer_id} appears twice for switch {peer.switch!r}")
        names.add(peer.name)
        addresses.add((peer.switch, peer.address))
        if peer.peer_id:  # 0: a bfd peer, which has none
            ids.add((peer.switch, peer.peer_id))


class SqlStore:
    """The shared SQL of both backends; subclasses supply connections and dialect details."""

    placeholder = "?"
    url: str
    shared = False
    # the replica writing through this store (NOTIFY payloads name it, so a replica can
    # skip its own changes); set by the controller
    origin = ""

    def __init__(self) -> None:
        # One connection per store, used by one thread at a time: the controller's poll
        # thread and the API's worker threads all go through here.
        self._lock = threading.RLock()
        self._closed = False

    # ---- backend hooks -------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _is_integrity_error(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _lock_events(self, cur: _Cursor) -> None:
        """Serialise event appends across replicas (no-op where writers are serialised)."""

    def _notify(self, cur: _Cursor, op: str, names: Sequence[str]) -> None:
        """Tell the other replicas, at commit, that these peers changed (no-op without)."""

    def _add_programmed_column(self, cur: _Cursor) -> None:
        raise NotImplementedError

    def _mac_nullable(self, cur: _Cursor) -> None:
        """Schema 3: peers.mac may be NULL (the controller resolves the next hop); schema
        4: so may peers.peer_id (a bfd peer has none)."""
        raise NotImplementedError

    def _add_bfd_columns(self, cur: _Cursor) -> None:
        """Schema 4: peers.kind ('heartbeat' for every older peer) and the BFD timers."""
        raise NotImplementedError

    def _migrate(self, cur: _Cursor) -> None:
        """Bring a database of an older schema (or a fresh one) to SCHEMA_VERSION; runs in
        the opening transaction, every step idempotent."""
        row = self._one(cur, "SELECT value FROM meta WHERE key = 'schema_version'", ())
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"database schema {row[0]} is newer than this hbmon ({SCHEMA_VERSION})")
        # 2: when the leader programmed the peer as it is now
        self._add_programmed_column(cur)
        # 3: a peer may come without a MAC (before the index below: SQLite rebuilds the table)
        self._mac_nullable(cur)
        # 4: BFD peers (after the rebuild above, which makes today's table with them)
        self._add_bfd_columns(cur)
        # 2: one peer per slot. Slots given twice before the constraint existed: the first
        # peer by name keeps it, the others get a fresh slot at the next start (no index)
        cur.execute("UPDATE peers SET idx = NULL WHERE idx IS NOT NULL AND EXISTS ("
                    "SELECT 1 FROM peers o WHERE o.switch = peers.switch "
                    "AND o.idx = peers.idx AND o.name < peers.name)")
        cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS peers_switch_idx ON peers (switch, idx)")
        if row is None:
            cur.execute(self._sql("INSERT INTO meta (key, value) VALUES ('schema_version', ?)"),
                        (str(SCHEMA_VERSION),))
        elif int(row[0]) < SCHEMA_VERSION:
            cur.execute(self._sql("UPDATE meta SET value = ? WHERE key = 'schema_version'"),
                        (str(SCHEMA_VERSION),))

    def _insert_events(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _run(self, fn: Callable[[_Cursor], Any]) -> Any:
        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            try:
                with self._transaction() as cur:
                    return fn(cur)
            except (ConflictError, NotFoundError, ValidationError):
                raise
            except Exception as exc:
                if self._is_integrity_error(exc):
                    raise self._conflict_from(exc) from exc
                raise

    @staticmethod
    def _conflict_from(exc: BaseException) -> ConflictError:
        text = str(exc).lower()
        if "idx" in text:
            return SlotTakenError()
        if "address" in text:
            return ConflictError("address", "address already used on this switch")
        if "peer_id" in text:
            return ConflictError("peer_id", "peer id already used on this switch")
        return ConflictError("name", "a peer with this name already exists")

    def _one(self, cur: _Cursor, sql: str, params: Sequence[Any]) -> Any:
        cur.execute(self._sql(sql), params)
        return cur.fetchone()

    def _check_conflicts(self, cur: _Cursor, peer: Peer, *, exclude: str | None) -> None:
        if exclude is None and self._one(cur, "SELECT 1 FROM peers WHERE name = ?", (peer.name,)):
            raise ConflictError("name", f"a peer named {peer.name!r} already exists")
        # what must be unique per switch: the column, and how to name its value
        unique = [("address", peer.address)]
        if peer.peer_id:  # a bfd peer has none (NULL)
            unique.append(("peer_id", f"peer id {peer.peer_id}"))
        for column, shown in unique:
            other = self._one(
                cur, f"SELECT name FROM peers WHERE switch = ? AND {column} = ? AND name <> ?",
                (peer.switch, getattr(peer, column), exclude or ""),
            )
            if other:
                raise ConflictError(
                    column, f"{shown} is already used by peer {other[0]!r} "
                    f"on switch {peer.switch!r}")

    # ---- inventory -----------------------------------------------------------------

    def list_peers(self) -> list[Peer]:
        def read(cur: _Cursor) -> list[Peer]:
            cur.execute(f"SELECT {', '.join(_PEER_COLUMNS)} FROM peers ORDER BY name")
            return [_row_peer(r) for r in cur.fetchall()]
        result: list[Peer] = self._run(read)
        return result

    def get_peer(self, name: str) -> Peer:
        def read(cur: _Cursor) -> Peer:
            row = self._one(
                cur, f"SELECT {', '.join(_PEER_COLUMNS)} FROM peers WHERE name = ?", (name,))
            if row is None:
                raise NotFoundError("peer", name)
            return _row_peer(row)
        result: Peer = self._run(read)
        return result

    def add_peers(self, peers: Sequence[Peer]) -> None:
        peers = list(peers)
        for peer in peers:
            peer.validate()
        _check_batch(peers)
        insert = self._sql(
            f"INSERT INTO peers ({', '.join(_PEER_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_PEER_COLUMNS))})")

        def write(cur: _Cursor) -> None:
            for peer in peers:
                self._check_conflicts(cur, peer, exclude=None)
                cur.execute(insert, _peer_row(peer))
            self._notify(cur, "add", [p.name for p in peers])
        self._run(write)

    def update_peer(self, peer: Peer) -> None:
        peer.validate()
        # a changed peer is not programmed as it is now until the leader says so
        assignments = ", ".join(f"{c} = ?" for c in _PEER_COLUMNS[1:]) + \
            ", programmed_at = NULL"
        update = self._sql(f"UPDATE peers SET {assignments} WHERE name = ?")

        def write(cur: _Cursor) -> None:
            old = self._one(cur, "SELECT switch, idx FROM peers WHERE name = ?", (peer.name,))
            if not old:
                raise NotFoundError("peer", peer.name)
            self._check_conflicts(cur, peer, exclude=peer.name)
            row = _peer_row(peer)
            cur.execute(update, (*row[1:], peer.name))
            if (old[0], old[1]) != (peer.switch, peer.index):
                self._record_slots(cur, [old])  # a move: the old slot is left behind
            self._notify(cur, "update", [peer.name])
        self._run(write)

    def remove_peers(self, names: Sequence[str]) -> None:
        unique = list(dict.fromkeys(names))

        def write(cur: _Cursor) -> None:
            slots = []
            for name in unique:
                row = self._one(cur, "SELECT switch, idx FROM peers WHERE name = ?", (name,))
                if not row:
                    raise NotFoundError("peer", name)
                slots.append(row)
            delete = self._sql("DELETE FROM peers WHERE name = ?")
            for name in unique:
                cur.execute(delete, (name,))
            self._record_slots(cur, slots)
            self._notify(cur, "remove", unique)
        self._run(write)

    def get_peers(self, names: Sequence[str]) -> list[Peer]:
        """The stored peers among `names` (missing ones are left out), in one transaction."""
        sql = self._sql(f"SELECT {', '.join(_PEER_COLUMNS)} FROM peers WHERE name = ?")

        def read(cur: _Cursor) -> list[Peer]:
            out = []
            for name in dict.fromkeys(names):
                cur.execute(sql, (name,))
                row = cur.fetchone()
                if row is not None:
                    out.append(_row_peer(row))
            return out
        result: list[Peer] = self._run(read)
        return result

    def mark_programmed(self, switch: str, names: Sequence[str], at: float) -> None:
        """The leader of `switch` has programmed these peers as they are now stored (only
        peers still on `switch` and not marked yet are marked)."""
        if not names:
            return
        sql = self._sql("UPDATE peers SET programmed_at = ? WHERE name = ? AND switch = ? "
                        "AND programmed_at IS NULL")

        def write(cur: _Cursor) -> None:
            for name in names:
                cur.execute(sql, (at, name, switch))
        self._run(write)

    def programmed_at(self, names: Sequence[str]) -> dict[str, float | None]:
        """name -> when its leader programmed it as it is now (None: not yet); stored
        peers only."""
        sql = self._sql("SELECT programmed_at FROM peers WHERE name = ?")

        def read(cur: _Cursor) -> dict[str, float | None]:
            out: dict[str, float | None] = {}
            for name in dict.fromkeys(names):
                cur.execute(sql, (name,))
                row = cur.fetchone()
                if row is not None:
                    out[name] = None if row[0] is None else float(row[0])
            return out
        result: dict[str, float | None] = self._run(read)
        return result

    def last_states(self, switch: str) -> dict[str, Health]:
        """peer -> the new state of its last recorded transition on `switch` since a peer
        of that name was last removed (that one had another life): what the history says
        now (a new leader continues from it). The removal, not the add, bounds a life: the
        replica that took an add may record `peer_added` after the leader recorded the
        peer's first transition."""
        sql = self._sql(
            "SELECT e.peer, e.new_state FROM events e WHERE e.id IN (SELECT MAX(id) "
            "FROM events WHERE kind = ? AND switch = ? AND peer IS NOT NULL GROUP BY peer) "
            "AND NOT EXISTS (SELECT 1 FROM events a WHERE a.peer = e.peer AND a.kind = ? "
            "AND a.id > e.id)")

        def read(cur: _Cursor) -> dict[str, Health]:
            cur.execute(sql, (str(EventKind.TRANSITION), switch, str(EventKind.PEER_REMOVED)))
            return {str(p): Health(st) for p, st in cur.fetchall() if st}
        result: dict[str, Health] = self._run(read)
        return result

    def _record_slots(self, cur: _Cursor, slots: Sequence[Sequence[Any]]) -> None:
        """(switch, index) pairs a peer left: their registers still hold its values."""
        insert = self._sql("INSERT INTO slot_resets (switch, idx) VALUES (?, ?) "
                           "ON CONFLICT (switch, idx) DO NOTHING")
        for switch, idx in slots:
            if idx is not None:
                cur.execute(insert, (switch, int(idx)))

    def pending_slot_resets(self) -> dict[str, set[int]]:
        """Switch -> slots left by a peer and not reset since (see the module docstring)."""
        def read(cur: _Cursor) -> dict[str, set[int]]:
            cur.execute("SELECT switch, idx FROM slot_resets")
            out: dict[str, set[int]] = {}
            for switch, idx in cur.fetchall():
                out.setdefault(switch, set()).add(int(idx))
            return out
        result: dict[str, set[int]] = self._run(read)
        return result

    def slots_reset(self, switch: str, indexes: Sequence[int]) -> None:
        """These slots' registers were zeroed: forget that they needed it."""
        if not indexes:
            return
        delete = self._sql("DELETE FROM slot_resets WHERE switch = ? AND idx = ?")

        def write(cur: _Cursor) -> None:
            for idx in indexes:
                cur.execute(delete, (switch, int(idx)))
        self._run(write)

    # ---- events --------------------------------------------------------------------

    def append_events(self, events: Sequence[Event]) -> list[Event]:
        events = list(events)
        if not events:
            return []
        rows = [
            (
                str(e.kind), e.time, e.peer, e.switch,
                str(e.old_state) if e.old_state else None,
                str(e.new_state) if e.new_state else None,
                e.reason, json.dumps(e.details, sort_keys=True, default=str),
            )
            for e in events
        ]

        def write(cur: _Cursor) -> list[int]:
            self._lock_events(cur)
            return self._insert_events(cur, rows)
        ids: list[int] = self._run(write)
        return [
            Event(e.kind, e.time, e.peer, e.switch, e.old_state, e.new_state, e.reason,
                  dict(e.details), id_)
            for e, id_ in zip(events, ids, strict=True)
        ]

    def events(
        self, *, peer: str | None = None, after_id: int = 0, limit: int = 100,
        before_id: int | None = None, kinds: Sequence[EventKind] | None = None,
    ) -> list[Event]:
        """Events in ascending id order.

        Without `before_id`: the first `limit` events after `after_id` (resume / follow).
        With `before_id`: the *last* `limit` events below it (paging back through history),
        still returned oldest first.
        """
        if limit < 1:
            raise ValidationError("limit", "must be at least 1")
        where = ["id > ?"]
        params: list[Any] = [after_id]
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        if peer is not None:
            where.append("peer = ?")
            params.append(peer)
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(str(k) for k in kinds)
        order = "DESC" if before_id is not None else "ASC"
        sql = self._sql(
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY id {order} LIMIT ?")
        params.append(limit)

        def read(cur: _Cursor) -> list[Event]:
            cur.execute(sql, params)
            return [_row_event(r) for r in cur.fetchall()]
        result: list[Event] = self._run(read)
        if before_id is not None:
            result.reverse()
        return result

    def last_event_id(self) -> int:
        row = self._run(lambda cur: self._one(cur, "SELECT MAX(id) FROM events", ()))
        return int(row[0]) if row and row[0] is not None else 0

    def prune_events(self, older_than: float) -> int:
        """Drop history older than `older_than` (wall-clock seconds); returns how many."""
        def write(cur: _Cursor) -> int:
            cur.execute(self._sql("DELETE FROM events WHERE time < ?"), (older_than,))
            return int(getattr(cur, "rowcount", 0) or 0)
        result: int = self._run(write)
        return result

    # ---- settings ------------------------------------------------------------------

    def get_setting(self, key: str) -> Any | None:
        row = self._run(
            lambda cur: self._one(cur, "SELECT value FROM settings WHERE key = ?", (key,)))
        return None if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True)
        upsert = self._sql(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        self._run(lambda cur: cur.execute(upsert, (key, text)))

    def setting_default(self, key: str, value: Any) -> Any:
        """The setting's value, storing `value` first if there is none. One transaction
        with INSERT .. ON CONFLICT DO NOTHING, so controllers starting together on one store
        all get the value of whichever inserted first (a get-then-set would let each keep
        its own)."""
        text = json.dumps(value, sort_keys=True)
        insert = self._sql(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
        select = "SELECT value FROM settings WHERE key = ?"  # _one adapts the placeholder

        def write(cur: _Cursor) -> Any:
            cur.execute(insert, (key, text))
            return json.loads(self._one(cur, select, (key,))[0])

        return self._run(write)

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- SQLite ----------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    name TEXT PRIMARY KEY,
    switch TEXT NOT NULL,
    address TEXT NOT NULL,
    peer_id INTEGER,  -- NULL: a bfd peer (schema 4)
    mac TEXT,  -- NULL: resolved from the neighbour table (schema 3)
    port INTEGER NOT NULL,
    grp TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    detect_mult INTEGER,
    admin_down INTEGER NOT NULL DEFAULT 0,
    idx INTEGER,
    kind TEXT NOT NULL DEFAULT 'heartbeat',
    desired_min_tx_ms INTEGER,
    required_min_rx_ms INTEGER,
    CONSTRAINT peers_switch_address UNIQUE (switch, address),
    CONSTRAINT peers_switch_peer_id UNIQUE (switch, peer_id)
);
-- AUTOINCREMENT: ids are never reused, even after the newest events are deleted.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    time REAL NOT NULL,
    peer TEXT,
    switch TEXT,
    old_state TEXT,
    new_state TEXT,
    reason TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_peer_id ON events (peer, id);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slot_resets (
    switch TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (switch, idx)
);
"""


class SqliteStore(SqlStore):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction
            # takes the write lock up front and never fails half-way on SQLITE_BUSY.
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SQLITE_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from exc
        self._check_schema()

    def _check_schema(self) -> None:
        try:
            with self._transaction() as cur:
                self._migrate(cur)
        except StoreError:
            self._conn.close()
            raise

    def _add_programmed_column(self, cur: _Cursor) -> None:
        cur.execute("PRAGMA table_info(peers)")
        if "programmed_at" not in {r[1] for r in cur.fetchall()}:
            cur.execute("ALTER TABLE peers ADD COLUMN programmed_at REAL")

    def _mac_nullable(self, cur: _Cursor) -> None:
        # SQLite cannot drop a NOT NULL: rebuild the table (SQLite's documented way; no
        # other table references peers, and its only extra index is made again by the
        # caller's schema-2 step). The new table is today's definition.
        cur.execute("PRAGMA table_info(peers)")
        columns = cur.fetchall()
        if not any(r[1] in ("mac", "peer_id") and r[3] for r in columns):
            return
        names = ", ".join(r[1] for r in columns)
        body = _SQLITE_SCHEMA.split("CREATE TABLE IF NOT EXISTS peers ", 1)[1].split(");", 1)[0]
        body = body.replace("    idx INTEGER,\n", "    idx INTEGER,\n    programmed_at REAL,\n")
        cur.execute(f"CREATE TABLE peers_v3 {body})")
        cur.execute(f"INSERT INTO peers_v3 ({names}) SELECT {names} FROM peers")
        cur.execute("DROP TABLE peers")
        cur.execute("ALTER TABLE peers_v3 RENAME TO peers")

    def _add_bfd_columns(self, cur: _Cursor) -> None:
        cur.execute("PRAGMA table_info(peers)")
        have = {r[1] for r in cur.fetchall()}
        if "kind" not in have:
            cur.execute("ALTER TABLE peers ADD COLUMN kind TEXT NOT NULL DEFAULT 'heartbeat'")
        for column in ("desired_min_tx_ms", "required_min_rx_ms"):
            if column not in have:
                cur.execute(f"ALTER TABLE peers ADD COLUMN {column} INTEGER")

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _insert_events(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> list[int]:
        ids = []
        sql = ("INSERT INTO events (kind, time, peer, switch, old_state, new_state, reason, "
               "details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        for row in rows:
            cur.execute(sql, row)
            ids.append(int(cur.lastrowid))  # type: ignore[attr-defined]
        return ids

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


# ---- PostgreSQL ------------------------------------------------------------------------

_PG_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS peers (
        name TEXT PRIMARY KEY,
        switch TEXT NOT NULL,
        address TEXT NOT NULL,
        peer_id BIGINT,
        mac TEXT,
        port INTEGER NOT NULL,
        grp TEXT,
        labels TEXT NOT NULL DEFAULT '{}',
        detect_mult INTEGER,
        admin_down BOOLEAN NOT NULL DEFAULT FALSE,
        idx INTEGER,
        CONSTRAINT peers_switch_address UNIQUE (switch, address),
        CONSTRAINT peers_switch_peer_id UNIQUE (switch, peer_id)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        peer TEXT,
        switch TEXT,
        old_state TEXT,
        new_state TEXT,
        reason TEXT NOT NULL DEFAULT '',
        details TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS events_peer_id ON events (peer, id)",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time)",
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS slot_resets (
        switch TEXT NOT NULL,
        idx INTEGER NOT NULL,
        PRIMARY KEY (switch, idx)
    )""",
]


class PostgresStore(SqlStore):
    placeholder = "%s"
    shared = True  # other controller replicas write here too (EventBus follows it)

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        super().__init__()
        import psycopg  # imported here: SQLite users do not pay for it

        self._psycopg = psycopg
        self.url = url
        self._connect_timeout = connect_timeout
        self._conn: Any = None
        self._connect()
        with self._lock, self._transaction() as cur:
            # Replicas may start together: serialise schema creation.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_EVENT_LOCK + 1,))
            for statement in _PG_SCHEMA:
                cur.execute(statement)
            self._migrate(cur)

    def _connect(self) -> None:
        try:
            self._conn = self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)))
        except self._psycopg.Error as exc:
            # The URL may carry a password: name the host, not the URL.
            parts = urlsplit(self.url)
            raise StoreError(
                f"cannot connect to PostgreSQL at {parts.hostname}:{parts.port or 5432}: "
                f"{exc.__class__.__name__}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # A restarted server or a dropped connection: reconnect once per call; the
            # previous transaction was never acknowledged, so nothing is lost.
            self._connect()
        with self._conn.transaction(), self._conn.cursor() as cur:
            yield cur

    def _is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.errors.IntegrityError)

    @staticmethod
    def _conflict_from(exc: BaseException) -> ConflictError:
        diag = getattr(exc, "diag", None)
        constraint = (getattr(diag, "constraint_name", None) or "") if diag else ""
        if constraint == "peers_switch_address":
            return ConflictError("address", "address already used on this switch")
        if constraint == "peers_switch_peer_id":
            return ConflictError("peer_id", "peer id already used on this switch")
        if constraint == "peers_switch_idx":
            return SlotTakenError()
        if constraint == "peers_pkey":
            return ConflictError("name", "a peer with this name already exists")
        return SqlStore._conflict_from(exc)

    def _lock_events(self, cur: _Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_EVENT_LOCK,))

    def _add_programmed_column(self, cur: _Cursor) -> None:
        cur.execute("ALTER TABLE peers ADD COLUMN IF NOT EXISTS programmed_at DOUBLE PRECISION")

    def _mac_nullable(self, cur: _Cursor) -> None:
        cur.execute("ALTER TABLE peers ALTER COLUMN mac DROP NOT NULL")  # idempotent
        cur.execute("ALTER TABLE peers ALTER COLUMN peer_id DROP NOT NULL")

    def _add_bfd_columns(self, cur: _Cursor) -> None:
        cur.execute("ALTER TABLE peers ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL "
                    "DEFAULT 'heartbeat'")
        for column in ("desired_min_tx_ms", "required_min_rx_ms"):
            cur.execute(f"ALTER TABLE peers ADD COLUMN IF NOT EXISTS {column} INTEGER")

    def _notify(self, cur: _Cursor, op: str, names: Sequence[str]) -> None:
        payload = json.dumps({"origin": self.origin, "op": op, "names": list(names)})
        if len(payload.encode()) > _NOTIFY_MAX:  # a big bulk change: re-read everything
            payload = json.dumps({"origin": self.origin, "op": "reload", "names": []})
        cur.execute("SELECT pg_notify(%s, %s)", (INVENTORY_CHANNEL, payload))

    def _insert_events(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> list[int]:
        ids = []
        sql = ("INSERT INTO events (kind, time, peer, switch, old_state, new_state, reason, "
               "details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id")
        for row in rows:
            cur.execute(sql, row)
            ids.append(int(cur.fetchone()[0]))
        return ids

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()


def open_store(url: str) -> SqlStore:
    """A store for `url` (see the module docstring for the accepted forms)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest in ("", "//", "///", "//:memory:", "///:memory:", ":memory:"):
            return SqliteStore(":memory:")
        if not rest.startswith("///"):
            raise ValidationError(
                "store_url", "SQLite URLs look like sqlite:///relative.db or sqlite:////abs.db")
        return SqliteStore(rest[3:])
    raise ValidationError(
        "store_url", f"unsupported store URL scheme in {url.split(':', 1)[0]!r} "
        "(use sqlite:///path or postgresql://...)")

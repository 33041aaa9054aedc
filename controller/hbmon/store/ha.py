"""Leadership per switch among `hbmon serve` replicas that share one PostgreSQL.

No home-made consensus: PostgreSQL's session advisory locks decide. For every switch a
replica keeps one dedicated connection and tries `pg_try_advisory_lock(key(switch))`; the
holder is that switch's leader until its connection ends, which PostgreSQL notices when the
process dies (kill -9 closes its sockets) and then frees the lock for the next replica.

On winning, the leader bumps the switch's row in `leadership` (`epoch = epoch + 1`, in
the same database, so it only grows) and uses the epoch in its P4Runtime election id. A new
leader therefore always outranks the old one on the target (P4Runtime 1.4 section 5.3: the
highest election id wins), which fences a former leader that has not noticed yet: its
writes are refused by the target itself.

`Leadership` runs one thread per switch. Callbacks run on that thread: `on_elected(switch,
epoch)` and `on_deposed(switch)` (its connection to PostgreSQL failed, so it may have lost
the lock: it stops acting as leader at once and competes again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LEADERSHIP_SCHEMA = """CREATE TABLE IF NOT EXISTS leadership (
    switch TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL
)"""


def lock_key(switch: str) -> int:
    """The advisory-lock key of a switch: 63 bits of SHA-256, stable across processes and
    versions (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"hbmon/leader/{switch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def default_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LeaderInfo:
    switch: str
    epoch: int
    holder: str
    since: float


class Leadership:
    """Competes for the leadership of each switch; see the module docstring."""

    def __init__(self, url: str, switches: Iterable[str], *,
                 replica_id: str | None = None,
                 on_elected: Callable[[str, int], None] | None = None,
                 on_deposed: Callable[[str], None] | None = None,
                 retry_interval: float = 0.2, check_interval: float = 0.5,
                 connect_timeout: float = 5.0) -> None:
        import psycopg  # only PostgreSQL users pay for it

        self._psycopg = psycopg
        self.url = url
        self.switches = list(dict.fromkeys(switches))
        self.replica_id = replica_id or default_replica_id()
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.retry_interval = retry_interval
        self.check_interval = check_interval
        self.connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._epochs: dict[str, int] = {}  # switches this replica leads -> its epoch
        with psycopg.connect(url, autocommit=True,
                             connect_timeout=max(1, int(connect_timeout))) as conn:
            conn.execute(LEADERSHIP_SCHEMA)

    # -- queries ----------------------------------------------------------------------------

    def is_leader(self, switch: str) -> bool:
        with self._lock:
            return switch in self._epochs

    def epoch(self, switch: str) -> int | None:
        with self._lock:
            return self._epochs.get(switch)

    def led(self) -> dict[str, int]:
        with self._lock:
            return dict(self._epochs)

    def current(self) -> list[LeaderInfo]:
        """Who holds each switch as the database last recorded it (any replica can ask)."""
        with self._psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=max(1, int(self.connect_timeout))) as conn:
            rows = conn.execute(
                "SELECT switch, epoch, holder, since FROM leadership ORDER BY switch"
            ).fetchall()
        return [LeaderInfo(str(r[0]), int(r[1]), str(r[2]), float(r[3])) for r in rows]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Leadership:
        for switch in self.switches:
            t = threading.Thread(target=self._run, args=(switch,), daemon=True,
                                 name=f"hbmon-leader-{switch}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Give up every lock (closing the connections frees them at once)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Leadership:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the per-switch loop ----------------------------------------------------------------

    def _run(self, switch: str) -> None:
        key = lock_key(switch)
        while not self._stop.is_set():
            conn: Any = None
            try:
                conn = self._psycopg.connect(
                    self.url, autocommit=True,
                    connect_timeout=max(1, int(self.connect_timeout)))
                while not self._stop.is_set():
                    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
                    if got:
                        break
                    self._stop.wait(self.retry_interval)
                else:
                    return
                epoch = self._bump(conn, switch)
                with self._lock:
                    self._epochs[switch] = epoch
                log.info("leader of switch %s (epoch %d)", switch, epoch)
                self._call(self.on_elected, switch, epoch)
                # hold it; a failed check means the session (and so the lock) may be gone
                while not self._stop.wait(self.check_interval):
                    conn.execute("SELECT 1").fetchone()
            except self._psycopg.Error as exc:
                log.warning("leadership of %s: %s", switch, exc.__class__.__name__)
            finally:
                was_leader = False
                with self._lock:
                    was_leader = self._epochs.pop(switch, None) is not None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # a broken connection may fail to close: it is gone
                        log.debug("closing the leadership connection failed", exc_info=True)
                if was_leader:
                    log.info("no longer leader of switch %s", switch)
                    self._call(self.on_deposed, switch)
            self._stop.wait(self.retry_interval)

    def _bump(self, conn: Any, switch: str) -> int:
        row = conn.execute(
            "INSERT INTO leadership (switch, epoch, holder, since) VALUES (%s, 1, %s, %s) "
            "ON CONFLICT (switch) DO UPDATE SET epoch = leadership.epoch + 1, "
            "holder = EXCLUDED.holder, since = EXCLUDED.since RETURNING epoch",
            (switch, self.replica_id, time.time())).fetchone()
        return int(row[0])

    @staticmethod
    def _call(fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("leadership callback failed")

"""kill -9 in the middle of acknowledged writes: restart, nothing acknowledged is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from api_fakes import make_peers
from api_harness import TOKEN
from hbmon.model import EventKind
from hbmon.store.sql import open_store

HERE = Path(__file__).resolve().parent


@contextmanager
def server_process(db: Path, tmp: Path, tag: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port_file = tmp / f"port-{tag}"
    env = {**os.environ, "HBMON_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "serve_fake.py"), "--store", f"sqlite:///{db}",
         "--port-file", str(port_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.02)  # doubles as the poll interval, returns early if it died
        yield proc, f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()


def test_kill_9_server_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The API and the store alone (serve_fake.py: FakeService over SQLite), 4000 writes
    fast. The real product's kill -9 mid-write, with the kernel target underneath, is
    tests/integration/test_durability.py."""
    db = tmp_path / "hbmon.db"
    peers = make_peers(4000, groups=8)
    acked: list[str] = []
    acked_lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def writer(url: str, chunk: list[dict[str, object]]) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=10) as c:
            for body in chunk:
                if stop.is_set():
                    return
                try:
                    r = c.post("/api/v1/peers", json=body)
                except httpx.HTTPError:
                    return  # the server died under us: this write was never acknowledged
                if r.status_code != 201:
                    return
                with acked_lock:
                    acked.append(str(body["name"]))
                    if len(acked) >= 300:
                        enough.set()

    with server_process(db, tmp_path, "first") as (proc, url):
        bodies = [p.to_dict() for p in peers]
        threads = [threading.Thread(target=writer, args=(url, bodies[i::4])) for i in range(4)]
        for t in threads:
            t.start()
        assert enough.wait(120), f"only {len(acked)} writes acknowledged"
        os.kill(proc.pid, signal.SIGKILL)  # while the writers keep going
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        for t in threads:
            t.join(30)
        stop.set()
    with acked_lock:
        acknowledged = set(acked)
    assert len(acknowledged) >= 300

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()

    with server_process(db, tmp_path, "second") as (_proc, url), httpx.Client(
            base_url=url, timeout=10) as c:
        listed = c.get("/api/v1/peers", params={"limit": 65536}).json()["peers"]
        names = [p["name"] for p in listed]
        assert acknowledged <= set(names), acknowledged - set(names)
        assert len(names) == len(set(names))
        # every acknowledged add also has its event (published before the 201)
        added: set[str] = set()
        before = None
        while True:
            params: dict[str, str | int] = {"limit": 1000, "kind": "peer_added"}
            if before:
                params["before"] = before
            page = c.get("/api/v1/events/history", params=params).json()
            added |= {e["peer"] for e in page["events"]}
            before = page["next_before"]
            if not before:
                break
        assert acknowledged <= added
        # the restarted server keeps working on the same database
        r = c.post("/api/v1/peers", json={"name": "after-restart", "address": "198.19.0.1",
                                          "peer_id": 99_999, "mac": "02:00:00:00:99:99",
                                          "port": 1},
                   headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text


def test_kill_9_store_writer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The same at the store level: a process printing `ack n` after each returned call."""
    db = tmp_path / "w.db"
    proc = subprocess.Popen([sys.executable, str(HERE / "store_writer.py"), f"sqlite:///{db}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            last = int(line.split()[1])
            if last >= 1500:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert last >= 1500, "writer stopped early"
    store = open_store(f"sqlite:///{db}")
    try:
        names = {p.name for p in store.list_peers()}
        updates = {e.peer for e in store.events(limit=100_000)
                   if e.kind == EventKind.PEER_UPDATED}
        expected_peers = {f"w-{i:04d}" for i in range(0, last + 1, 2)}
        expected_events = {f"w-{i:04d}" for i in range(1, last + 1, 2)}
        assert expected_peers <= names
        assert expected_events <= updates
    finally:
        store.close()

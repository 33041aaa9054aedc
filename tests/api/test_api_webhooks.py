"""Webhooks against a real local HTTP receiver: signature, retries with backoff, isolation."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hbmon.model import Event, EventKind, Health, ValidationError
from hbmon.store.events import EventBus
from hbmon.store.sql import SqlStore
from hbmon.store.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookConfig,
    WebhookDispatcher,
    sign,
    verify_signature,
)
from pg_cluster import free_port
from real_product import ProductFactory

SECRET = b"webhook-secret-for-tests"


@dataclass
class Hit:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


@dataclass
class Receiver:
    """A local HTTP server that answers each request with the next planned status."""

    plan: list[int] = field(default_factory=list)  # statuses to answer, then 200
    hits: list[Hit] = field(default_factory=list)
    block: threading.Event | None = None  # hold requests until set
    received: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def wait_for(self, predicate: Callable[[list[Hit]], bool], timeout: float = 30.0) -> None:
        with self.received:
            assert self.received.wait_for(lambda: predicate(self.hits), timeout), self.hits


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if rec.block is not None:
                rec.block.wait(30)
            with rec.received:
                rec.hits.append(Hit(time.monotonic(), dict(self.headers), body))
                status = rec.plan.pop(0) if rec.plan else 200
                rec.received.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield rec
    finally:
        if rec.block is not None:
            rec.block.set()
        server.shutdown()
        server.server_close()


def event(i: int) -> Event:
    return Event(EventKind.TRANSITION, 1000.0 + i, peer=f"p{i}", switch="default",
                 old_state=Health.UP, new_state=Health.DOWN, reason="misses", id=i)


def dispatcher(url: str, **kw: Any) -> WebhookDispatcher:
    kw.setdefault("initial_backoff", 0.05)
    kw.setdefault("max_backoff", 1.0)
    return WebhookDispatcher(WebhookConfig(urls=(url,), secret=SECRET, **kw)).start()


def test_signed_delivery(receiver: Receiver) -> None:
    d = dispatcher(receiver.url)
    try:
        d.submit([event(1), event(2)])
        receiver.wait_for(lambda hits: len(hits) == 1)
    finally:
        d.stop()
    hit = receiver.hits[0]
    assert hit.headers["Content-Type"] == "application/json"
    sent = hit.headers[TIMESTAMP_HEADER]
    assert verify_signature(SECRET, hit.body, hit.headers[SIGNATURE_HEADER], sent)
    assert hit.headers[SIGNATURE_HEADER] == sign(SECRET, hit.body, int(sent))
    assert not verify_signature(b"other-secret", hit.body, hit.headers[SIGNATURE_HEADER], sent)
    assert not verify_signature(SECRET, hit.body + b" ", hit.headers[SIGNATURE_HEADER], sent)
    assert not verify_signature(SECRET, hit.body, None, sent)
    assert [e["peer"] for e in hit.events] == ["p1", "p2"]
    assert hit.events[0]["new_state"] == "DOWN" and hit.events[0]["id"] == 1
    assert d.stats()[receiver.url].delivered == 1


def test_retries_with_exponential_backoff(receiver: Receiver) -> None:
    receiver.plan = [500, 503, 429]
    d = dispatcher(receiver.url, initial_backoff=0.1, max_backoff=5.0)
    try:
        d.submit([event(1)])
        receiver.wait_for(lambda hits: len(hits) == 4)
        assert d.wait_idle(10)
    finally:
        d.stop()
    hits = receiver.hits
    assert [h.headers["X-Hbmon-Attempt"] for h in hits] == ["1", "2", "3", "4"]
    assert len({h.headers["X-Hbmon-Delivery"] for h in hits}) == 1  # one delivery, retried
    assert len({h.body for h in hits}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    # The schedule is a floor (0.1, 0.2, 0.4 s, plus jitter); slowness can only add.
    for gap, floor in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= floor * 0.95, gaps
    stats = d.stats()[receiver.url]
    assert (stats.delivered, stats.failed, stats.retries) == (1, 0, 3)


def test_gives_up_after_max_attempts_then_continues(receiver: Receiver) -> None:
    receiver.plan = [500, 500, 500]
    d = dispatcher(receiver.url, max_attempts=3)
    try:
        d.submit([event(1)])
        d.submit([event(2)])
        receiver.wait_for(lambda hits: len(hits) == 4)
        assert d.wait_idle(10)
    finally:
        d.stop()
    assert [h.events[0]["peer"] for h in receiver.hits] == ["p1", "p1", "p1", "p2"]
    stats = d.stats()[receiver.url]
    assert (stats.delivered, stats.failed) == (1, 1) and stats.last_error == "HTTP 500"


def test_permanent_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.plan = [400]
    d = dispatcher(receiver.url)
    try:
        d.submit([event(1)])
        d.submit([event(2)])
        receiver.wait_for(lambda hits: len(hits) == 2)
        assert d.wait_idle(10)
    finally:
        d.stop()
    assert [h.events[0]["peer"] for h in receiver.hits] == ["p1", "p2"]
    assert d.stats()[receiver.url].failed == 1


def test_unreachable_receiver_is_retried_and_counted() -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing-listens"
    d = dispatcher(url, max_attempts=3, initial_backoff=0.01)
    try:
        d.submit([event(1)])
        assert d.wait_idle(30)
    finally:
        d.stop()
    stats = d.stats()[url]
    assert (stats.failed, stats.retries) == (1, 2)
    assert stats.last_error and "Connect" in stats.last_error


def test_a_hung_receiver_does_not_block_the_publisher_or_others(
    receiver: Receiver, store: SqlStore,
) -> None:
    healthy: list[bytes] = []
    got = threading.Event()

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            healthy.append(self.rfile.read(int(self.headers["Content-Length"])))
            got.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    receiver.block = threading.Event()
    d = WebhookDispatcher(WebhookConfig(
        urls=(receiver.url, f"http://127.0.0.1:{other.server_address[1]}/"),
        secret=SECRET, timeout=30)).start()
    bus = EventBus(store, d)
    try:
        for i in range(20):
            bus.publish([Event(EventKind.SWITCH, float(i), switch="default", reason="x")])
        # publish returned 20 times while the first receiver holds its first request
        assert receiver.hits == []
        assert got.wait(10)  # the other receiver is served meanwhile
        assert len(store.events(limit=100)) == 20
        receiver.block.set()
        receiver.wait_for(lambda hits: len(hits) == 20)
        assert [h.events[0]["time"] for h in receiver.hits] == [float(i) for i in range(20)]
    finally:
        receiver.block.set()
        d.stop()
        other.shutdown()
        other.server_close()


def test_events_from_the_api_reach_the_webhook(
    receiver: Receiver, make_server: ProductFactory,
) -> None:
    d = dispatcher(receiver.url)
    run = make_server(webhooks=d)
    try:
        with run.client() as c:
            r = c.post("/api/v1/peers", json={
                "name": "hooked", "address": "198.18.9.1", "peer_id": 91,
                "mac": "02:00:00:00:09:01", "port": 1})
            assert r.status_code == 201
        run.set_state("hooked", Health.DOWN)
        receiver.wait_for(lambda hits: sum(e["kind"] != "switch" for h in hits
                                           for e in h.events) == 2)
    finally:
        d.stop()
    every = [e for h in receiver.hits for e in h.events]
    # the controller's own events too: both switches connected as primary
    assert sorted((e["switch"], e["reason"]) for e in every if e["kind"] == "switch") == \
        [("default", "connected as primary"), ("leaf-2", "connected as primary")]
    events = [e for e in every if e["kind"] != "switch"]
    assert [e["kind"] for e in events] == ["peer_added", "transition"]
    assert events[1]["new_state"] == "DOWN" and events[1]["id"] > events[0]["id"]
    assert all(verify_signature(SECRET, h.body, h.headers[SIGNATURE_HEADER],
                                h.headers[TIMESTAMP_HEADER]) for h in receiver.hits)


def test_config_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        WebhookConfig(urls=("ftp://x",))
    assert exc.value.field == "webhooks.urls"
    with pytest.raises(ValidationError):
        WebhookConfig(max_attempts=0)
    secret_file = tmp_path / "s"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("HBMON_WEBHOOK_URLS", "http://127.0.0.1:1/a, http://127.0.0.1:2/b")
    monkeypatch.setenv("HBMON_WEBHOOK_SECRET_FILE", str(secret_file))
    monkeypatch.delenv("HBMON_WEBHOOK_SECRET", raising=False)
    cfg = WebhookConfig.from_env(["http://127.0.0.1:3/c"])
    assert cfg.urls == ("http://127.0.0.1:3/c", "http://127.0.0.1:1/a", "http://127.0.0.1:2/b")
    assert cfg.secret == b"from-file" and b"from-file" not in repr(cfg).encode()


def test_signature_covers_a_timestamp_so_replays_are_refused(receiver: Receiver) -> None:
    receiver.plan = [503]  # one retry: every attempt is signed at its own send time
    d = dispatcher(receiver.url)
    try:
        before = int(time.time())
        d.submit([event(1)])
        receiver.wait_for(lambda hits: len(hits) == 2)
        after = int(time.time())
    finally:
        d.stop()
    for hit in receiver.hits:
        sent = hit.headers[TIMESTAMP_HEADER]
        assert before <= int(sent) <= after
        signature = hit.headers[SIGNATURE_HEADER]
        assert verify_signature(SECRET, hit.body, signature, sent)
        # The same delivery captured and replayed 5 min + 1 s later: refused.
        assert not verify_signature(SECRET, hit.body, signature, sent, now=int(sent) + 301)
        assert verify_signature(SECRET, hit.body, signature, sent, now=int(sent) + 299)
        assert not verify_signature(SECRET, hit.body, signature, sent, tolerance=60,
                                    now=int(sent) + 61)
        # Re-stamping the replay with a fresh time breaks the signature.
        fresh = str(int(sent) + 600)
        assert not verify_signature(SECRET, hit.body, signature, fresh, now=int(sent) + 600)
        for bad in (None, "", "+" + sent, f" {sent}", sent + ".0", "1_" + sent):
            assert not verify_signature(SECRET, hit.body, signature, bad), bad
    # the receiver's recipe from the README, on the raw bytes
    hit = receiver.hits[-1]
    expected = "sha256=" + hmac.new(
        SECRET, hit.headers[TIMESTAMP_HEADER].encode() + b"." + hit.body,
        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, hit.headers[SIGNATURE_HEADER])

"""Shared test types for the API tests (a module, so tests can import it by name)."""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from api_fakes import FakeService
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.server import ApiServer
from hbmon.api.settings import ApiSettings
from hbmon.store.events import EventBus
from hbmon.store.sql import SqlStore

TOKEN = "test-token-" + os.urandom(8).hex()


@dataclass
class Running:
    url: str
    server: ApiServer
    service: FakeService
    store: SqlStore
    bus: EventBus
    metrics: ControllerMetrics
    settings: ApiSettings

    def client(self, token: str | None = TOKEN, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0,
                            **kwargs)  # type: ignore[arg-type]


ServerFactory = Callable[..., Running]


class Served(Protocol):
    """What `sse` needs of a running API: the fake one (Running) or the real product."""

    url: str


class SseReader:
    """Reads an SSE stream in a thread; `next(deadline)` returns parsed frames."""

    first_comment: str | None = None

    def __init__(self, url: str, headers: dict[str, str], params: dict[str, Any]) -> None:
        self.frames: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.status: int | None = None
        self.connected = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        self._thread = threading.Thread(target=self._run, args=(url, headers, params),
                                        daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str], params: dict[str, Any]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers, params=params) as r:
                self.status = r.status_code
                self.content_type = r.headers.get("content-type", "")
                self.connected.set()
                frame: dict[str, Any] = {}
                for line in r.iter_lines():
                    if line == "":
                        if "data" in frame:
                            frame["json"] = json.loads(frame["data"])
                            self.frames.put(frame)
                        frame = {}
                    elif line.startswith(":"):
                        self.comments.put(line[1:].strip())
                    else:
                        key, _, value = line.partition(":")
                        frame[key] = value.removeprefix(" ")
        except BaseException as exc:
            self.frames.put(exc)
        finally:
            self.connected.set()

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        item = self.frames.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def take(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [self.next(timeout) for _ in range(n)]

    def close(self) -> None:
        # A read blocked in another thread cannot be interrupted portably; the thread ends
        # when the server closes the stream (server stop), so it is not joined here.
        self._client.close()


@contextmanager
def sse(run: Served, *, last_event_id: int | None = None,
        **params: Any) -> Iterator[SseReader]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    reader = SseReader(run.url + "/api/v1/events", headers, params)
    assert reader.connected.wait(10), "no response to the SSE request"
    if reader.status == 200:
        # The server sends its first comment right after subscribing: from then on,
        # every published event reaches this stream.
        reader.first_comment = reader.comments.get(timeout=10)
    try:
        yield reader
    finally:
        reader.close()

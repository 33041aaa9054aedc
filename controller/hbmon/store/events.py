"""The event bus: persist first, then fan out (implements `hbmon.interfaces.EventSink`).

`publish` writes the events to the store (which assigns ids), then hands them to in-process
subscribers (SSE streams), to listeners and to the webhook dispatcher. Fan-out never
blocks: subscribers have bounded buffers, and one that falls behind is told so and catches
up from the store, which is also where a reconnecting client resumes (`Last-Event-ID`).

With a store shared by controller replicas (PostgreSQL: `store.shared` is true) the bus
*follows the store*: subscribers get every replica's events, from a thread that tails the
events table in id order (woken at once by a local publish, else every `follow_interval`).
The store commits events in id order, so the tail never skips one. Webhooks and listeners
still see only this replica's own events, so a receiver is not called once per replica.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from hbmon.interfaces import Store
from hbmon.model import Event, EventKind
from hbmon.store.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

Listener = Callable[[Sequence[Event]], None]


class Subscription:
    """One consumer's view of the live stream, read from an asyncio event loop.

    Events arrive from any thread; they are buffered here and the loop is woken with
    `call_soon_threadsafe`. When the buffer would exceed `max_buffer` it is emptied and
    `overflowed` is set: the consumer must re-read from the store after the last id it saw.
    """

    def __init__(
        self, bus: EventBus, loop: asyncio.AbstractEventLoop, start_id: int, max_buffer: int,
    ) -> None:
        self._bus = bus
        self._loop = loop
        self.start_id = start_id  # the newest id published before this subscription began
        self._max_buffer = max_buffer
        self._buffer: collections.deque[Event] = collections.deque()
        self._lock = threading.Lock()
        self._wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def _offer(self, events: Sequence[Event]) -> None:
        with self._lock:
            if self.closed:
                return
            if len(self._buffer) + len(events) > self._max_buffer:
                self._buffer.clear()
                self.overflowed = True
            else:
                self._buffer.extend(events)
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop is closed: the consumer is gone
            self.closed = True

    async def next_batch(self, timeout: float) -> list[Event] | None:
        """Buffered events (maybe empty after an overflow), or None on timeout."""
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return None
        self._wakeup.clear()
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
        return batch

    def take_overflow(self) -> bool:
        with self._lock:
            flag, self.overflowed = self.overflowed, False
        return flag

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._buffer.clear()
        self._bus._unsubscribe(self)
        self._wake()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Persist, then fan out. Safe to call from any thread; `publish` is ordered."""

    def __init__(
        self, store: Store, webhooks: WebhookDispatcher | None = None,
        *, max_buffer: int = 10_000, follow_interval: float | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self._max_buffer = max_buffer
        # Held across persist + fan-out so every consumer sees ids in increasing order.
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Listener] = []
        self._last_id = self._initial_last_id()  # newest id handed to subscribers
        self.published: collections.Counter[str] = collections.Counter()
        self._closed = False
        if follow_interval is None and getattr(store, "shared", False):
            follow_interval = 0.5
        self.follow_interval = follow_interval
        self._follow_wake = threading.Event()
        self._follow_stop = threading.Event()
        self._follower: threading.Thread | None = None
        if follow_interval is not None:
            if follow_interval <= 0:
                raise ValueError("follow_interval must be > 0")
            self._follower = threading.Thread(
                target=self._follow, name="hbmon-events-follow", daemon=True)
            self._follower.start()

    def _initial_last_id(self) -> int:
        last = getattr(self.store, "last_event_id", None)
        if callable(last):
            return int(last())
        newest = self.store.events(before_id=2**62, limit=1)
        return newest[-1].id if newest else 0

    @property
    def last_id(self) -> int:
        return self._last_id

    def publish(self, events: Iterable[Event]) -> list[Event]:
        pending = list(events)
        if not pending:
            return []
        with self._lock:
            stored = self.store.append_events(pending)
            for event in stored:
                self.published[str(event.kind)] += 1
            if self._follower is None:
                if stored:
                    self._last_id = max(self._last_id, stored[-1].id)
                for sub in list(self._subscriptions):
                    sub._offer(stored)
            for listener in list(self._listeners):
                try:
                    listener(stored)
                except Exception:
                    # A broken listener must not stop the controller: the events are
                    # already durable.
                    log.exception("event listener %r failed", listener)
        if self.webhooks is not None:
            self.webhooks.submit(stored)
        if self._follower is not None:
            self._follow_wake.set()
        return stored

    def _follow(self) -> None:
        """Tail the shared store: every replica's events reach this replica's streams."""
        assert self.follow_interval is not None
        while not self._follow_stop.is_set():
            self._follow_wake.wait(self.follow_interval)
            self._follow_wake.clear()
            if self._follow_stop.is_set():
                return
            try:
                while True:
                    page = self.store.events(after_id=self._last_id, limit=1000)
                    if not page:
                        break
                    with self._lock:
                        self._last_id = page[-1].id
                        for sub in list(self._subscriptions):
                            sub._offer(page)
            except Exception:
                # The database may be restarting; the next round reconnects and resumes
                # from the same id, so nothing is skipped.
                log.exception("following the event store failed")

    def subscribe(self, loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        loop = loop or asyncio.get_running_loop()
        with self._lock:
            sub = Subscription(self, loop, self._last_id, self._max_buffer)
            if self._closed:
                sub.closed = True
            else:
                self._subscriptions.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def add_listener(self, listener: Listener) -> None:
        """Called synchronously inside `publish` with the stored events: keep it quick."""
        with self._lock:
            self._listeners.append(listener)

    def history(
        self, *, after_id: int = 0, limit: int = 500, peer: str | None = None,
        kinds: Sequence[EventKind] | None = None,
    ) -> list[Event]:
        """Persisted events after `after_id`, oldest first (what a resuming consumer missed).

        `kinds` is filtered here, page by page, so any `Store` works and a page of
        non-matching events is not mistaken for the end of the history.
        """
        wanted = {str(k) for k in kinds} if kinds else None
        found: list[Event] = []
        cursor = after_id
        while len(found) < limit:
            page = self.store.events(peer=peer, after_id=cursor, limit=max(limit, 200))
            if not page:
                break
            found.extend(e for e in page if wanted is None or str(e.kind) in wanted)
            cursor = page[-1].id
        return found[:limit]

    def close(self) -> None:
        """End every live stream (server shutdown); later subscriptions start closed."""
        self._follow_stop.set()
        self._follow_wake.set()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(10)
        with self._lock:
            self._closed = True
            subs = list(self._subscriptions)
        for sub in subs:
            sub.close()

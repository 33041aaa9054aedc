"""Webhook delivery: events POSTed as signed JSON to configured URLs, in the background.

Each URL has its own worker thread and bounded queue, so a slow or dead receiver delays
neither the controller (which only enqueues) nor the other receivers. Batches for one URL
are delivered in order; a failing batch is retried with exponential backoff (with jitter)
before the next one is tried, up to `max_attempts`, then dropped and counted.

Each attempt is signed with HMAC-SHA256 over its send time and the exact bytes sent:
`X-Hbmon-Timestamp: <unix seconds>` and `X-Hbmon-Signature: sha256=<hex of
HMAC(secret, "<timestamp>." + body)>`. The timestamp is covered by the signature, so a
receiver that refuses old timestamps (`verify_signature`'s `tolerance`, 5 minutes by
default) refuses a captured delivery replayed later. README "Webhooks" shows the check.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from hbmon.model import Event, ValidationError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hbmon-Signature"
TIMESTAMP_HEADER = "X-Hbmon-Timestamp"
# Receivers' default window: clocks a little apart, a delivery delayed in transit.
DEFAULT_TOLERANCE = 300.0
DELIVERY_HEADER = "X-Hbmon-Delivery"
ATTEMPT_HEADER = "X-Hbmon-Attempt"
# Answers worth retrying: the receiver may recover. Other 4xx mean the request is wrong.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over b"<timestamp>." followed by the body."""
    mac = hmac.new(secret, b"%d." % timestamp, hashlib.sha256)
    mac.update(body)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes, body: bytes, header: str | None, timestamp: str | None, *,
    tolerance: float = DEFAULT_TOLERANCE, now: float | None = None,
) -> bool:
    """Check `X-Hbmon-Signature` (`header`) and `X-Hbmon-Timestamp` (`timestamp`): the
    signature matches (constant time) and the timestamp is within `tolerance` seconds of
    `now` (default: this clock). False for anything missing or malformed."""
    if not header or not header.startswith("sha256=") or not timestamp:
        return False
    # Digits only: int() would also take "+1", " 1" or "1_0", which sign differently.
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return False
    sent = int(timestamp)
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, sent).encode(), header.encode("utf-8",
                                                                                 "replace"))


@dataclass(frozen=True)
class WebhookConfig:
    urls: tuple[str, ...] = ()
    secret: bytes | None = field(default=None, repr=False)
    max_attempts: int = 6
    initial_backoff: float = 0.5  # seconds before the 2nd attempt; doubles each time
    max_backoff: float = 30.0
    timeout: float = 5.0  # per request
    queue_size: int = 10_000  # batches per URL; the oldest is dropped when full
    max_batch: int = 500  # events per POST

    def __post_init__(self) -> None:
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValidationError("webhooks.urls", f"not an http(s) URL: {url!r}")
        if self.max_attempts < 1:
            raise ValidationError("webhooks.max_attempts", "must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValidationError(
                "webhooks.initial_backoff", "must be >= 0 and <= webhooks.max_backoff")

    @classmethod
    def from_env(cls, urls: Iterable[str] = (), **kwargs: object) -> WebhookConfig:
        """URLs from the argument plus `HBMON_WEBHOOK_URLS` (comma separated); the secret
        from `HBMON_WEBHOOK_SECRET` or the file named by `HBMON_WEBHOOK_SECRET_FILE`."""
        all_urls = list(urls)
        all_urls += [u.strip() for u in os.environ.get("HBMON_WEBHOOK_URLS", "").split(",")
                     if u.strip()]
        secret = read_secret("HBMON_WEBHOOK_SECRET", "HBMON_WEBHOOK_SECRET_FILE")
        return cls(urls=tuple(all_urls), secret=secret, **kwargs)  # type: ignore[arg-type]


def read_secret(env_var: str, file_env_var: str, file: str | None = None) -> bytes | None:
    """A secret from `file` if given (explicit configuration wins), else from the env var
    `env_var`, else from the file named by the env var `file_env_var`."""
    if file is None:
        value = os.environ.get(env_var)
        if value:
            return value.strip().encode()
    path = file or os.environ.get(file_env_var)
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise ValidationError(file_env_var.lower(), f"cannot read {path}: {exc.strerror}") \
                from exc
        if not text:
            raise ValidationError(file_env_var.lower(), f"{path} is empty")
        return text.encode()
    return None


@dataclass
class DeliveryStats:
    delivered: int = 0  # batches acknowledged with 2xx
    failed: int = 0  # batches given up on (attempts exhausted or permanent 4xx)
    dropped: int = 0  # batches dropped because the queue was full
    retries: int = 0  # attempts after the first
    last_error: str | None = None


class _Worker:
    def __init__(self, url: str, config: WebhookConfig) -> None:
        self.url = url
        self.config = config
        self.client = httpx.Client(timeout=config.timeout, follow_redirects=False)
        self.stats = DeliveryStats()
        self._queue: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(
            target=self._run, name=f"hbmon-webhook-{urlsplit(url).netloc}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, body: bytes) -> None:
        with self._cond:
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(body)
            self._idle.clear()
            self._cond.notify()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout)
        self.client.close()

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._idle.set()
                    self._cond.wait()
                if self._stop.is_set():
                    return
                body = self._queue[0]
            self._deliver(body)
            with self._cond:
                if self._queue and self._queue[0] is body:
                    self._queue.popleft()
                if not self._queue:
                    self._idle.set()

    def _backoff(self, attempt: int) -> float:
        """Delay before attempt number `attempt + 1` (attempt counts from 1)."""
        base = min(self.config.max_backoff, self.config.initial_backoff * 2 ** (attempt - 1))
        # Up to +25% jitter so receivers recovering from an outage are not hit in lockstep;
        # never below `base`, so the schedule is a guaranteed minimum.
        return base * (1.0 + random.random() * 0.25)

    def _deliver(self, body: bytes) -> None:
        delivery = str(uuid.uuid4())
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery,
                   "User-Agent": "hbmon-webhook/1"}
        for attempt in range(1, self.config.max_attempts + 1):
            if attempt > 1:
                self.stats.retries += 1
            headers[ATTEMPT_HEADER] = str(attempt)
            if self.config.secret is not None:
                # Signed per attempt: a retry after a long backoff carries a fresh time
                # and is not refused as a replay.
                sent = int(time.time())
                headers[TIMESTAMP_HEADER] = str(sent)
                headers[SIGNATURE_HEADER] = sign(self.config.secret, body, sent)
            retry = True
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.stats.last_error = f"{exc.__class__.__name__}: {exc}"
            else:
                if 200 <= response.status_code < 300:
                    self.stats.delivered += 1
                    return
                self.stats.last_error = f"HTTP {response.status_code}"
                retry = response.status_code in _RETRY_STATUS
            if not retry or attempt == self.config.max_attempts:
                break
            # Interruptible wait: stop() ends a long backoff at once.
            if self._stop.wait(self._backoff(attempt)):
                return
        self.stats.failed += 1
        log.warning("webhook %s: delivery %s given up: %s", self.url, delivery,
                    self.stats.last_error)


class WebhookDispatcher:
    """Fans events out to every configured URL without blocking the caller."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._workers = [_Worker(url, config) for url in config.urls]
        self._started = False

    def start(self) -> WebhookDispatcher:
        if not self._started:
            self._started = True
            for worker in self._workers:
                worker.start()
        return self

    def submit(self, events: Sequence[Event]) -> None:
        if not self._workers or not events:
            return
        for start in range(0, len(events), self.config.max_batch):
            chunk = events[start:start + self.config.max_batch]
            body = json.dumps(
                {"sent_at": time.time(), "events": [e.to_dict() for e in chunk]},
                separators=(",", ":"), default=str,
            ).encode()
            for worker in self._workers:
                worker.submit(body)

    def wait_idle(self, timeout: float) -> bool:
        """True once every queue is empty and no delivery is in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        return all(w.wait_idle(max(0.0, deadline - time.monotonic())) for w in self._workers)

    def stats(self) -> dict[str, DeliveryStats]:
        return {w.url: w.stats for w in self._workers}

    def stop(self, timeout: float = 5.0) -> None:
        for worker in self._workers:
            worker.stop(timeout)

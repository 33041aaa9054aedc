"""Shared test types for the API tests (a module, so tests can import it by name)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from api_fakes import FakeService
from hbmon.api import ApiServer, ApiSettings
from hbmon.events import EventBus
from hbmon.metrics import ControllerMetrics
from hbmon.store import SqlStore

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

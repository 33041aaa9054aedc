"""Fixtures for the API tests.

`make_server` / `api` / `client`: the real product (real_product.py): the controller, bus,
metrics and API as `hbmon serve` assembles them, over the kernel target's P4Runtime device
on its in-memory data plane, with a real store.

`make_fake_server`: the API over `FakeService` (api_fakes.py), only for tests about the
HTTP layer alone (auth, limits, the OpenAPI document, error shapes) or that need a
controller state no real part can be put in on demand; each such test says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_fakes import FakeService
from api_harness import TOKEN, Running, ServerFactory
from hbmon.api.app import create_app
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.server import ApiServer
from hbmon.api.settings import ApiSettings
from hbmon.store.events import EventBus
from hbmon.store.sql import SqlStore, open_store
from hbmon.store.webhooks import WebhookDispatcher
from real_product import Product, product_factory


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(f"sqlite:///{tmp_path / 'hbmon.db'}")
    yield s
    s.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Product]]:
    with product_factory(tmp_path) as make:
        yield make


@pytest.fixture
def make_fake_server(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[tuple[ApiServer, SqlStore, EventBus]] = []

    def make(
        *, switches: tuple[str, ...] = ("default", "leaf-2"),
        webhooks: WebhookDispatcher | None = None, db: str = "hbmon.db",
        store_url: str | None = None, **settings_kwargs: object,
    ) -> Running:
        store = open_store(store_url or f"sqlite:///{tmp_path / db}")
        bus = EventBus(store, webhooks)
        service = FakeService(store, bus, switches)
        settings_kwargs.setdefault("token", TOKEN)
        settings_kwargs.setdefault("rtt_sample_interval", 0.2)
        settings = ApiSettings(port=0, **settings_kwargs)  # type: ignore[arg-type]
        metrics = ControllerMetrics()
        app = create_app(service, store, bus, settings, metrics)
        server = ApiServer(app, "127.0.0.1", 0).start()
        started.append((server, store, bus))
        return Running(server.url, server, service, store, bus, metrics, settings)

    yield make
    for server, store, bus in reversed(started):
        server.stop()
        bus.close()
        store.close()


@pytest.fixture
def api(make_server: Callable[..., Product]) -> Product:
    return make_server()


@pytest.fixture
def fake_api(make_fake_server: ServerFactory) -> Running:
    return make_fake_server()


@pytest.fixture
def client(api: Product) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url

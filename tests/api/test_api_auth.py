"""Bearer-token auth: writes always need it, reads by configuration, never logged."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_harness import TOKEN
from hbmon.api.app import create_app
from hbmon.api.server import ApiServer
from hbmon.api.settings import ApiSettings
from hbmon.model import ValidationError
from real_product import ProductFactory

PEER = {"name": "p1", "address": "198.18.7.1", "peer_id": 71, "mac": "02:00:00:00:07:01",
        "port": 1}


def test_writes_need_the_token(make_server: ProductFactory) -> None:
    run = make_server()
    with run.client(token=None) as anon:
        r = anon.post("/api/v1/peers", json=PEER)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["detail"]["field"] == "authorization"
        r = anon.post("/api/v1/peers", json=PEER, headers={"Authorization": "Bearer wrong-token"})
        assert r.status_code == 401 and r.json()["detail"]["message"] == "invalid token"
        r = anon.post("/api/v1/peers", json=PEER, headers={"Authorization": f"Basic {TOKEN}"})
        assert r.status_code == 401
        for method, path, kw in (
            ("POST", "/api/v1/peers/bulk", {"json": {"peers": [PEER]}}),
            ("POST", "/api/v1/peers/bulk-delete", {"json": {"names": ["p1"]}}),
            ("PATCH", "/api/v1/peers/p1", {"json": {"group": "x"}}),
            ("DELETE", "/api/v1/peers/p1", {}),
        ):
            assert anon.request(method, path, **kw).status_code == 401, path
        # reads are open by default
        assert anon.get("/api/v1/peers").status_code == 200
        assert anon.get("/metrics").status_code == 200
    assert run.store.list_peers() == []
    with run.client(token=None) as c:
        r = c.post("/api/v1/peers", json=PEER, headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 201  # the scheme is case-insensitive


def test_closed_reads(make_server: ProductFactory) -> None:
    run = make_server(read_auth=True)
    with run.client(token=None) as anon:
        for path in ("/api/v1/peers", "/api/v1/health", "/api/v1/switches", "/metrics",
                     "/api/v1/events/history", "/api/v1/events"):
            assert anon.get(path).status_code == 401, path
        # probes and the dashboard shell stay open (no data in them)
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        assert anon.get("/").status_code == 200
    with run.client() as c:
        assert c.get("/api/v1/peers").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_no_token_configured_disables_writes(make_server: ProductFactory) -> None:
    run = make_server(token=None)
    with run.client(token=None) as c:
        r = c.post("/api/v1/peers", json=PEER)
        assert r.status_code == 403
        assert "HBMON_API_TOKEN" in r.json()["detail"]["message"]
    open_run = make_server(token=None, allow_anonymous_writes=True, db="open.db")
    with open_run.client(token=None) as c:
        assert c.post("/api/v1/peers", json=PEER).status_code == 201


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HBMON_API_TOKEN", raising=False)
    monkeypatch.delenv("HBMON_API_TOKEN_FILE", raising=False)
    defaults = ApiSettings.from_env()
    assert defaults.host == "127.0.0.1" and defaults.token is None
    assert not defaults.writes_enabled
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-123\n")
    monkeypatch.setenv("HBMON_API_TOKEN_FILE", str(token_file))
    assert ApiSettings.from_env().token == "from-a-file-123"
    monkeypatch.setenv("HBMON_API_TOKEN", "from-the-env-456")
    s = ApiSettings.from_env(read_auth=True)
    assert s.token == "from-the-env-456" and s.read_auth
    assert "from-the-env-456" not in repr(s)
    # an explicitly configured file beats the environment
    explicit = tmp_path / "explicit"
    explicit.write_text("explicit-789\n")
    assert ApiSettings.from_env(token_file=str(explicit)).token == "explicit-789"
    monkeypatch.delenv("HBMON_API_TOKEN")
    token_file.write_text("")
    with pytest.raises(ValidationError):
        ApiSettings.from_env()
    with pytest.raises(ValidationError) as exc:
        ApiSettings(token="short")
    assert exc.value.field == "token"
    with pytest.raises(ValidationError) as exc:
        ApiSettings(read_auth=True)
    assert exc.value.field == "read_auth"
    monkeypatch.setenv("HBMON_API_TOKEN", "x" * 12)
    monkeypatch.setenv("HBMON_API_READ_AUTH", "maybe")
    with pytest.raises(ValidationError) as exc:
        ApiSettings.from_env()
    assert exc.value.field == "HBMON_API_READ_AUTH"


def test_token_never_logged(make_server: ProductFactory, tmp_path: Path) -> None:
    """Run with access logging at DEBUG, use right and wrong tokens, grep every log line.
    The API alone over FakeService (HTTP layer: what uvicorn and the auth log)."""
    from api_fakes import FakeService
    from hbmon.api.metrics import ControllerMetrics
    from hbmon.store.events import EventBus
    from hbmon.store.sql import open_store

    secret = "never-log-me-" + TOKEN
    wrong = "wrong-" + TOKEN
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addHandler(handler)
    store = open_store(f"sqlite:///{tmp_path / 'log.db'}")
    bus = EventBus(store)
    settings = ApiSettings(port=0, token=secret)
    app = create_app(FakeService(store, bus), store, bus, settings, ControllerMetrics())
    server = ApiServer(app, "127.0.0.1", 0, log_level="debug", access_log=True).start()
    try:
        logging.getLogger("test").info("settings: %r", settings)
        with httpx.Client(base_url=server.url) as c:
            for token in (secret, wrong):
                h: dict[str, Any] = {"Authorization": f"Bearer {token}"}
                c.post("/api/v1/peers", json=PEER, headers=h)
                c.get("/api/v1/peers", headers=h)
                c.post("/api/v1/peers", content=b"{bad", headers=h)
    finally:
        server.stop()
        store.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).removeHandler(handler)
    text = sink.getvalue()
    assert "/api/v1/peers" in text  # the access log did run
    assert secret not in text and wrong not in text

"""Issue 11's REST hardening against a real uvicorn server, over real sockets.

Auth is decided before a body byte is read, bodies are capped while they are read (declared
or chunked), out-of-range numbers are 422s naming the parameter, the OpenAPI document
declares the bearer scheme and every error status, and the SSE subscriber count is capped.

The body tests speak HTTP over a raw socket so they control how much of a body is sent: the
answer has to arrive while most of the body is still unsent. A server that waited for (and
buffered) the whole body answers nothing, and the socket's timeout fails the test.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from api_fakes import FakeService, make_peers
from api_harness import TOKEN
from hbmon.api.app import MAX_ID
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.settings import DEFAULT_MAX_BODY_BYTES
from hbmon.cli.controller import build_api
from hbmon.config import parse_config
from hbmon.model import ValidationError
from hbmon.store.events import EventBus
from hbmon.store.sql import SqlStore
from prometheus_client.parser import text_string_to_metric_families
from real_product import Product, ProductFactory

# How long a socket waits for the server's answer; the answers below come at once, this
# only turns "never" into a failure.
ANSWER_DEADLINE = 15.0
BIG = 50_000_000  # the 50 MB body


def _connect(run: Product) -> socket.socket:
    parts = urlsplit(run.url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=ANSWER_DEADLINE)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: hbmon-test"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, headers, json.loads(body) if body else None


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _documented(doc: dict[str, Any], path: str, method: str, status: int) -> bool:
    return str(status) in doc["paths"][path][method]["responses"]


# ---- (3) auth before the body; body-size limit ----------------------------------------

def test_unauthenticated_write_is_refused_before_its_body_is_read(
        make_server: ProductFactory) -> None:
    run = make_server()
    doc = httpx.get(run.url + "/openapi.json").json()
    # 50 MB declared, 16 KiB sent, and not JSON at all: 401, not 400/422 from a parser.
    with _connect(run) as sock:
        sock.sendall(_head("POST", "/api/v1/peers/bulk", {
            "Content-Type": "application/json", "Content-Length": str(BIG)}) + b"x" * 16384)
        status, headers, body = _answer(sock)
    assert status == 401
    assert body == {"detail": {"field": "authorization",
                               "message": "missing 'Authorization: Bearer <token>'"}}
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["connection"] == "close"  # the unsent 49.98 MB is never read
    assert _documented(doc, "/api/v1/peers/bulk", "post", 401)
    # a wrong token, a chunked body, bytes that are not UTF-8: the same 401
    with _connect(run) as sock:
        sock.sendall(_head("PATCH", "/api/v1/peers/p1", {
            "Authorization": "Bearer wrong-token", "Content-Type": "application/json",
            "Transfer-Encoding": "chunked"}) + _chunk(b"\xff\xfe" * 4096))
        status, _, body = _answer(sock)
    assert status == 401 and body["detail"]["message"] == "invalid token"
    assert run.store.list_peers() == []
    # no token configured: writes are disabled, said before the body too
    closed = make_server(token=None, db="closed.db")
    with _connect(closed) as sock:
        sock.sendall(_head("POST", "/api/v1/peers", {
            "Content-Type": "application/json", "Content-Length": str(BIG)}) + b"{")
        status, _, body = _answer(sock)
    assert status == 403 and body["detail"]["field"] == "authorization"
    assert httpx.get(run.url + "/healthz").status_code == 200


def test_declared_body_over_the_limit_is_413_at_once(make_server: ProductFactory) -> None:
    run = make_server()
    assert run.settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    doc = httpx.get(run.url + "/openapi.json").json()
    # Five 50 MB bulk adds with the token at once (the 593 MB case): each is
    # answered after 16 KiB of its body.
    with ExitStack() as stack:
        socks = [stack.enter_context(_connect(run)) for _ in range(5)]
        for sock in socks:
            sock.sendall(_head("POST", "/api/v1/peers/bulk", {
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                "Content-Length": str(BIG)}) + b" " * 16384)
        answers = [_answer(sock) for sock in socks]
    for status, headers, body in answers:
        assert status == 413
        assert body == {"detail": {"field": "body", "message": (
            f"request body larger than {DEFAULT_MAX_BODY_BYTES} bytes (api.max_body_bytes)")}}
        assert headers["connection"] == "close"
    for path, method in (("/api/v1/peers", "post"), ("/api/v1/peers/bulk", "post"),
                         ("/api/v1/peers/{name}", "patch"), ("/api/v1/peers/bulk-delete", "post")):
        assert _documented(doc, path, method, 413), (path, method)
    assert httpx.get(run.url + "/healthz").status_code == 200


def test_chunked_body_is_cut_at_the_limit(make_server: ProductFactory) -> None:
    limit = 256 * 1024
    run = make_server(max_body_bytes=limit)
    with _connect(run) as sock:
        sock.sendall(_head("POST", "/api/v1/peers/bulk", {
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
            "Transfer-Encoding": "chunked"}))
        sock.sendall(_chunk(b'{"peers": [' + b" " * (16384 - 11)))
        for _ in range(limit // 16384 - 1):
            sock.sendall(_chunk(b" " * 16384))
        sock.sendall(_chunk(b" "))  # byte limit + 1; the body's end (0 chunk) never comes
        status, headers, body = _answer(sock)
    assert status == 413
    assert body["detail"] == {
        "field": "body", "message": f"request body larger than {limit} bytes (api.max_body_bytes)"}
    assert headers["connection"] == "close"
    # Up to the limit, declared or chunked, a body is taken.
    peers = [p.to_dict() for p in make_peers(3)]
    payload = json.dumps({"peers": peers[:2]}).encode()
    payload += b" " * (limit - len(payload))
    assert len(payload) == limit
    with run.client() as c:
        r = c.post("/api/v1/peers/bulk", content=payload,
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        chunks = iter([b'{"peers": [', json.dumps(peers[2]).encode(), b"]}"])
        r = c.post("/api/v1/peers/bulk", content=chunks,
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        assert r.request.headers.get("transfer-encoding") == "chunked"
    assert len(run.store.list_peers()) == 3


# ---- (4) numbers out of range are 422s naming the field --------------------------------

def test_numbers_out_of_range_are_422_naming_the_field(api: Product,
                                                       client: httpx.Client) -> None:
    api.service.add_peers(make_peers(1))
    too_big = str(MAX_ID + 1)  # 9223372036854775808: SQLite's OverflowError before
    for path, params, field in (
        ("/api/v1/peers/peer-0000/history", {"before": too_big}, "before"),
        ("/api/v1/events/history", {"before": too_big}, "before"),
        ("/api/v1/events/history", {"before": "-" + too_big}, "before"),
        ("/api/v1/events", {"after": too_big}, "after"),
        ("/api/v1/peers", {"offset": too_big}, "offset"),
        ("/api/v1/events/history", {"limit": "1" + "0" * 30}, "limit"),
    ):
        r = client.get(path, params=params)
        assert r.status_code == 422, (path, params, r.status_code, r.text)
        assert r.json()["detail"]["field"] == field, (path, r.json())
    r = client.get("/api/v1/events", headers={"Last-Event-ID": too_big})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "Last-Event-ID"
    # the largest legal cursor pages as usual
    for path in ("/api/v1/peers/peer-0000/history", "/api/v1/events/history"):
        r = client.get(path, params={"before": str(MAX_ID)})
        assert r.status_code == 200 and r.json()["events"], path
    # numbers in bodies: the domain's bounds, never a 500
    peer = make_peers(2)[1].to_dict()
    for key, value in (("peer_id", 2**64), ("port", 10**30), ("index", -(2**70)),
                       ("detect_mult", 2**63)):
        r = client.post("/api/v1/peers", json={**peer, key: value})
        assert r.status_code == 422 and r.json()["detail"]["field"] == key, (key, r.text)
    r = client.patch("/api/v1/peers/peer-0000", json={"peer_id": 2**64})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "peer_id"
    # an integer too long for json.loads (4,300+ digits): was FastAPI's undocumented 400
    r = client.post("/api/v1/peers", content=b'{"peer_id": ' + b"9" * 5000 + b"}",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == {"field": "body",
                                                           "message": "not valid JSON"}


# ---- (5) OpenAPI: bearer scheme, every status; non-UTF-8 bodies ------------------------

def test_openapi_declares_the_bearer_scheme_and_every_status(
        make_server: ProductFactory) -> None:
    run = make_server()
    doc = httpx.get(run.url + "/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    writes = [(path, method, op) for path, ops in doc["paths"].items()
              for method, op in ops.items() if method in ("post", "patch", "put", "delete")]
    assert len(writes) == 5
    for path, method, op in writes:
        assert op["security"] == [{"bearerAuth": []}], (path, method)
        assert {"401", "403", "413", "503"} <= set(op["responses"]), (path, method)
        error = op["responses"]["401"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorOut"}
        if "requestBody" in op:
            assert "422" in op["responses"], (path, method)
    peers = doc["paths"]["/api/v1/peers"]["get"]
    assert peers["security"] == [{}, {"bearerAuth": []}]  # reads are open by default
    assert "401" in peers["responses"] and "422" in peers["responses"]
    assert "503" in doc["paths"]["/api/v1/events"]["get"]["responses"]
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    history = doc["paths"]["/api/v1/events/history"]["get"]
    before = next(p for p in history["parameters"] if p["name"] == "before")
    schemas = before["schema"].get("anyOf", [before["schema"]])
    assert [s["maximum"] for s in schemas if s.get("type") == "integer"] == [MAX_ID]
    closed = make_server(read_auth=True, db="closed.db")
    doc = httpx.get(closed.url + "/openapi.json").json()
    assert doc["paths"]["/api/v1/peers"]["get"]["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]


def test_body_that_is_not_utf8_is_a_documented_422(api: Product,
                                                   client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    for path, method in (("/api/v1/peers", "POST"), ("/api/v1/peers/bulk", "POST")):
        r = client.request(method, path, content=b'{"name": "\xff\xfe"}',
                           headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["detail"] == {"field": "body", "message": "not valid JSON: not UTF-8"}
        assert _documented(doc, path, method.lower(), 422)
    assert api.store.list_peers() == []


# ---- (7) SSE subscriber cap and gauge --------------------------------------------------

@contextmanager
def _stream(run: Product) -> Iterator[tuple[int, Any]]:
    """One SSE request over its own socket: (status, error body or None); open while in
    the block, closed (client gone) after it."""
    with _connect(run) as sock:
        sock.sendall(_head("GET", "/api/v1/events", {
            "Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}))
        response = http.client.HTTPResponse(sock)
        response.begin()
        if response.status != 200:
            yield response.status, json.loads(response.read())
            return
        # The first frame is sent right after the server subscribed.
        assert response.read1(64).startswith(b"retry:")
        yield 200, None


def _gauges(run: Product) -> dict[str, float]:
    text = httpx.get(run.url + "/metrics").text
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name.startswith("hbmon_sse_clients")}


def test_sse_subscribers_are_capped(make_server: ProductFactory) -> None:
    run = make_server(max_sse_clients=2, sse_keepalive=0.2)
    doc = httpx.get(run.url + "/openapi.json").json()
    with _stream(run) as first, _stream(run) as second:
        assert first[0] == second[0] == 200
        with _stream(run) as third:
            status, body = third
        assert status == 503
        assert body == {"detail": {
            "field": "max_sse_clients",
            "message": "at most 2 event streams at once (api.max_sse_clients); try again later"}}
        assert _documented(doc, "/api/v1/events", "get", 503)
        assert _gauges(run) == {"hbmon_sse_clients": 2.0, "hbmon_sse_clients_limit": 2.0}
    # Both clients gone: the server notices at its next keepalive write at the latest and
    # gives the slots back. Poll until two streams are admitted at once again.
    deadline = time.monotonic() + ANSWER_DEADLINE
    while True:
        with _stream(run) as one, _stream(run) as two:
            if one[0] == two[0] == 200:
                break
        assert time.monotonic() < deadline, "stream slots were never given back"
        time.sleep(0.05)  # poll interval, not a wait for a result


# ---- configuration ---------------------------------------------------------------------

def test_limits_come_from_the_config_file(store: SqlStore,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """build_api's reading of the config's limits: the HTTP layer alone (FakeService, no
    switch to reach)."""
    for var in ("HBMON_API_TOKEN", "HBMON_API_TOKEN_FILE", "HBMON_API_HOST", "HBMON_API_PORT"):
        monkeypatch.delenv(var, raising=False)
    switches = [{"name": "s", "grpc": "127.0.0.1:1"}]
    config = parse_config({"switches": switches,
                           "api": {"max_body_bytes": 65536, "max_sse_clients": 3}})
    assert (config.api.max_body_bytes, config.api.max_sse_clients) == (65536, 3)
    # what `hbmon serve` builds from it (the app is not started here)
    bus = EventBus(store)
    try:
        server = build_api(FakeService(store, bus), store, bus, config, ControllerMetrics(),
                           None, 0)
        settings = server.app.state.hbmon.settings
    finally:
        bus.close()
    assert (settings.max_body_bytes, settings.max_sse_clients) == (65536, 3)
    defaults = parse_config({"switches": switches})
    assert defaults.api.max_body_bytes is None and defaults.api.max_sse_clients is None
    for key, value in (("max_body_bytes", 10), ("max_sse_clients", 0),
                       ("max_body_bytes", "big")):
        with pytest.raises(ValidationError) as exc:
            parse_config({"switches": switches, "api": {key: value}})
        assert exc.value.field == f"api.{key}"

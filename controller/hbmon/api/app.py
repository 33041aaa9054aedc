"""The FastAPI application: REST API under /api/v1, SSE, /metrics, probes, dashboard.

The app depends only on `HbmonService` (the running controller), a `Store` (history),
the `EventBus` (live events) and `ControllerMetrics`. Handlers that call the service are
plain `def`s: FastAPI runs them in its thread pool, so a slow P4Runtime write never blocks
the event loop that serves SSE and the dashboard.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from hbmon.api import schemas
from hbmon.api.auth import require_read, require_write, write_denial
from hbmon.api.metrics import ControllerMetrics
from hbmon.api.rtt import RttHistory
from hbmon.api.service import HbmonService
from hbmon.api.settings import ApiSettings
from hbmon.interfaces import Store
from hbmon.model import (
    ConflictError,
    DataPlaneError,
    Event,
    EventKind,
    Health,
    NotFoundError,
    Peer,
    PeerHealth,
    ValidationError,
)
from hbmon.store.events import EventBus, Subscription

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_SSE_PAGE = 500
# Event ids and paging cursors are SQLite/PostgreSQL BIGINTs: a larger number is a 422
# naming the parameter, not an OverflowError (500) in the driver.
MAX_ID = 2**63 - 1
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ListingCache:
    """Serialized peer listings, dropped whenever something they show may have changed.

    A listing without `include=health` shows the inventory and each peer's state, which
    change only with an event (transition, peer added/updated/removed) or an API write; both
    invalidate. A body computed while an invalidation happened is not stored (generation
    check), and `max_age` bounds staleness should a change ever come without an event.
    """

    def __init__(self, max_age: float = 2.0, max_entries: int = 64) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[float, bytes]] = {}
        self.generation = 0
        self.hits = 0

    def invalidate(self, *_: object) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self.max_age:
                return None
            self.hits += 1
            return entry[1]

    def put(self, key: tuple[Any, ...], generation: int, body: bytes) -> None:
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), body)


class PeerJson:
    """Each peer's inventory fields as JSON, kept per Peer object: a service replaces a Peer
    when it changes (`HbmonService.peer_listing`), so the same object has the same JSON and a
    listing only serializes what changed since the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, tuple[Peer, bytes]] = {}

    def rows(self, listing: Sequence[tuple[Peer, Health | None, float | None, str | None]]
             ) -> list[bytes]:
        """One JSON object per entry: the peer's fields, then state, since and reason (the
        same bytes as orjson.dumps of `_peer_row` without health)."""
        out: list[bytes] = []
        append = out.append
        dumps = orjson.dumps
        with self._lock:
            cache = self._by_name
            if len(cache) > 2 * len(listing) + 1024:  # peers removed since: start over
                cache.clear()
            for peer, st, since, reason in listing:
                hit = cache.get(peer.name)
                if hit is None or hit[0] is not peer:
                    hit = cache[peer.name] = (peer, dumps(peer.to_dict())[:-1] + b",")
                tail = dumps({"state": None if st is None else str(st), "since": since,
                              "reason": reason})
                append(hit[1] + tail[1:])
        return out


@dataclass
class AppState:
    service: HbmonService
    store: Store
    bus: EventBus
    settings: ApiSettings
    metrics: ControllerMetrics
    rtt: RttHistory
    streams: set[Subscription] = field(default_factory=set)
    listing: ListingCache = field(default_factory=ListingCache)
    peer_json: PeerJson = field(default_factory=PeerJson)
    closing: bool = False
    sse_open: int = 0  # event streams admitted and not yet finished (the cap counts these)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close_streams(self) -> None:
        """End this app's SSE streams so the server can shut down without waiting."""
        with self.lock:
            self.closing = True
            streams = list(self.streams)
        for sub in streams:
            sub.close()


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # Bypasses FastAPI's jsonable_encoder (the domain objects' to_dict() is already plain);
    # orjson serialises a 4,096-peer list several times faster than the json module.
    return Response(orjson.dumps(content), status, headers=headers,
                    media_type="application/json")


def _error(status: int, field_name: str, message: str) -> Response:
    return _json({"detail": {"field": field_name, "message": message}}, status)


def _too_large(limit: int) -> dict[str, str]:
    return {"field": "body",
            "message": f"request body larger than {limit} bytes (api.max_body_bytes)"}


class AuthBeforeBody:
    """Pure ASGI middleware in front of every write: auth, then the body-size limit,
    both before the application reads a byte of the body.

    FastAPI reads and parses a route's body before it runs the route's dependencies, so
    `require_write` alone answered 401 only after a 50 MB body had been read and parsed.
    Here a write to /api/ is refused (401/403) from its headers; a declared Content-Length
    above `max_body_bytes` is refused (413) at once; a chunked body is counted as the app
    reads it and cut with 413 at the first byte over the limit, without reading the rest.
    Every early answer closes the connection, so the server does not drain an unread body.
    """

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"].startswith("/api/"):
            denial = write_denial(self.settings, headers.get("authorization"))
            if denial is not None:
                await self._refuse(denial, scope, receive, send)
                return
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(HTTPException(413, _too_large(limit)), scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises an HTTPException from reading the body; the app's
                    # handler turns it into the error shape.
                    raise HTTPException(413, _too_large(limit), headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(exc: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(exc.headers or {})
        headers["Connection"] = "close"  # the unread body is not drained
        response = _json({"detail": exc.detail}, exc.status_code, headers=headers)
        await response(scope, receive, send)


def _field_from_loc(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


class _RequestMetrics:
    """Pure ASGI middleware (keeps streaming intact): latency per route template."""

    def __init__(self, app: ASGIApp, metrics: ControllerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path != "/api/v1/events":  # a stream's duration is not a latency
                self.metrics.api_requests.labels(
                    method=scope["method"], route=path, status=str(status),
                ).observe(time.perf_counter() - started)


def _peer_row(peer: Peer, health: PeerHealth | None, full: bool) -> dict[str, Any]:
    row = peer.to_dict()
    if health is not None:
        row["state"] = str(health.state)
        row["since"] = health.since
        row["reason"] = health.reason
        if full:
            row["health"] = health.to_dict()
    else:
        row["state"] = None
        row["since"] = None
        row["reason"] = None
    return row


def _health_map(service: HbmonService) -> dict[str, PeerHealth]:
    return {h.name: h for h in service.all_health()}


def _event_kinds(kind: list[str] | None) -> list[EventKind] | None:
    if not kind:
        return None
    kinds = []
    for item in kind:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                kinds.append(EventKind(part))
            except ValueError:
                allowed = ", ".join(k.value for k in EventKind)
                raise ValidationError("kind", f"{part!r} is not one of {allowed}") from None
    return kinds or None


def _sse(event: Event) -> str:
    data = orjson.dumps(event.to_dict(), default=str).decode()
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


def _service_extras(state: AppState) -> Callable[[], Iterator[Metric]]:
    def collect() -> Iterator[Metric]:
        events = CounterMetricFamily(
            "hbmon_events", "Events published (persisted and fanned out)", labels=["kind"])
        for kind in EventKind:
            events.add_metric([kind.value], state.bus.published.get(kind.value, 0))
        yield events
        webhooks = state.bus.webhooks
        if webhooks is not None:
            deliveries = CounterMetricFamily(
                "hbmon_webhook_deliveries", "Webhook batches by outcome",
                labels=["url", "outcome"])
            for url, stats in webhooks.stats().items():
                for outcome in ("delivered", "failed", "dropped", "retries"):
                    deliveries.add_metric([url, outcome], getattr(stats, outcome))
            yield deliveries
        last = GaugeMetricFamily("hbmon_last_event_id", "Id of the newest published event")
        last.add_metric([], state.bus.last_id)
        yield last
    return collect


def create_app(
    service: HbmonService,
    store: Store,
    bus: EventBus,
    settings: ApiSettings | None = None,
    metrics: ControllerMetrics | None = None,
) -> FastAPI:
    """The API + dashboard app for one running controller."""
    settings = settings or ApiSettings()
    metrics = metrics or ControllerMetrics()
    state = AppState(
        service=service, store=store, bus=bus, settings=settings, metrics=metrics,
        rtt=RttHistory(service, settings.rtt_sample_interval, settings.rtt_samples),
    )
    metrics.attach_service(service, _service_extras(state))
    bus.add_listener(state.listing.invalidate)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.rtt.start()
        try:
            yield
        finally:
            state.close_streams()
            state.rtt.stop()

    # /docs is Swagger UI from the swagger-ui-bundle wheel, served here: FastAPI's own
    # /docs would load its assets from a CDN, and hbmon serves nothing that needs the
    # internet. The document itself is at /openapi.json.
    app = FastAPI(
        title="hbmon", version=app_version(), lifespan=lifespan,
        description="Heartbeat monitoring offloaded to a P4 / eBPF data plane: peers, health, "
                    "transition history, live events.",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json",
    )
    app.state.hbmon = state
    metrics.sse_clients_limit.set(settings.max_sse_clients)
    # Innermost of the middlewares: the request metrics still see its 401/403/413.
    app.add_middleware(AuthBeforeBody, settings=settings)
    # Level 1: most of the size win at a fraction of the CPU of the default 9 (big lists
    # are mostly repeated keys).
    app.add_middleware(GZipMiddleware, minimum_size=4096, compresslevel=1)
    app.add_middleware(_RequestMetrics, metrics=metrics)

    # ---- error mapping: every client error names the field --------------------------

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> Response:
        return _error(422, exc.field, exc.message)

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> Response:
        return _error(409, exc.field, exc.message)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> Response:
        return _error(404, exc.what, str(exc))

    @app.exception_handler(DataPlaneError)
    async def _data_plane(_: Request, exc: DataPlaneError) -> Response:
        # the request was fine and nothing was applied; the switch could not take it now
        return _error(503, "switch", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field_name = _field_from_loc(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            field_name, message = "body", "not valid JSON"
        elif first.get("type") == "extra_forbidden":
            message = "unknown field"
        return _json({"detail": {"field": field_name, "message": message},
                      "errors": [{"field": _field_from_loc(tuple(e.get("loc", ()))),
                                  "message": str(e.get("msg", ""))} for e in errors[:20]]}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        detail: Any = exc.detail
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's "error parsing the body": json.loads failed before the JSON syntax
            # (bytes that are not UTF-8, an integer of more than 4,300 digits). The same
            # documented 422 as any other body that is not JSON.
            message = ("not valid JSON: not UTF-8" if isinstance(exc.__cause__,
                                                                  UnicodeDecodeError)
                       else "not valid JSON")
            return _error(422, "body", message)
        if not isinstance(detail, dict):
            detail = {"field": "path" if exc.status_code == 404 else "request",
                      "message": str(exc.detail)}
        return _json({"detail": detail}, exc.status_code, headers=getattr(exc, "headers", None))

    # ---- probes, metrics, dashboard --------------------------------------------------

    @app.get("/healthz", tags=["probes"], summary="Liveness: the process serves requests")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["probes"],
             summary="Readiness: every switch connected and read once",
             responses={503: {"description": "Not ready: `ready` false, switches listed"}})
    def readyz() -> Response:
        ready = service.ready()
        switches = {s.name: s.connected for s in service.switches()}
        return _json({"ready": ready, "switches": switches}, 200 if ready else 503)

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics",
             dependencies=[Depends(require_read)], response_class=Response)
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def dashboard() -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> Response:
        # readable without a token, like the dashboard; "Authorize" takes the bearer token
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="hbmon API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True})

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    router = _router(state)
    app.include_router(router)
    # FastAPI keeps an included router as one entry of app.routes: its own routes (full
    # paths, with their dependencies) are listed next to the app's.
    _install_openapi(app, settings, [*app.routes, *router.routes])
    return app


_ERROR_TEXT = {
    401: "Missing or invalid bearer token",
    403: "Writes disabled (no token configured)",
    404: "Unknown peer or switch",
    409: "Duplicate name, address or peer id",
    413: "Request body larger than `api.max_body_bytes` (refused while it is read)",
    422: "Invalid input; `field` names it (also: a body that is not UTF-8 JSON)",
    503: "The data plane did not take the change (`field`: switch); nothing was applied",
}


def _install_openapi(app: FastAPI, settings: ApiSettings,
                     routes: Sequence[BaseRoute]) -> None:
    """The document with the bearer scheme and, per operation, every status it can answer
    (computed from each route's auth dependency, parameters and body)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version,
                              description=app.description, routes=app.routes)
            _document_auth_and_errors(doc, routes, settings)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_auth_and_errors(doc: dict[str, Any], routes: Sequence[BaseRoute],
                              settings: ApiSettings) -> None:
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http", "scheme": "bearer",
        "description": "The API token (`api.token_file` or $HBMON_API_TOKEN). Writes always "
                       "need it; reads only with `api.read_auth: true`.",
    }
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    guards: dict[tuple[str, str], str] = {}
    for route in routes:
        if isinstance(route, APIRoute):
            calls = {d.call for d in route.dependant.dependencies}
            kind = "write" if require_write in calls else "read" if require_read in calls \
                else ""
            for method in route.methods or ():
                guards[(route.path, method.lower())] = kind
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            kind = guards.get((path, method), "")
            statuses: set[int] = set()
            if kind == "write":
                op["security"] = [{"bearerAuth": []}]
                statuses |= {401, 403, 413, 503}
            elif kind == "read":
                # open reads: the token is optional ({}); closed reads: required
                op["security"] = [{"bearerAuth": []}] if settings.read_auth \
                    else [{}, {"bearerAuth": []}]
                statuses.add(401)
            if op.get("requestBody") or any(p.get("in") != "path"
                                            for p in op.get("parameters", [])):
                statuses.add(422)
            if "{name}" in path or path.endswith("/bulk-delete"):
                statuses.add(404)
            if (method, path) in (("post", "/api/v1/peers"), ("post", "/api/v1/peers/bulk"),
                                  ("patch", "/api/v1/peers/{name}")):
                statuses.add(409)
            responses = op.setdefault("responses", {})
            for status in sorted(statuses):
                entry = responses.setdefault(str(status), {})
                entry.setdefault("description", _ERROR_TEXT[status])
                entry.setdefault("content", error_ref)
            if "422" in responses:
                # FastAPI declares its own HTTPValidationError here; our handler answers
                # with ErrorOut (found by schemathesis: every 422 violated the document)
                responses["422"] = {"description": _ERROR_TEXT[422], "content": error_ref}
    schemas = doc["components"].get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def _router(state: AppState) -> APIRouter:
    service = state.service
    settings = state.settings
    read = [Depends(require_read)]
    write = [Depends(require_write)]
    r = APIRouter(prefix="/api/v1")

    # ---- inventory --------------------------------------------------------------------

    @r.get("/info", tags=["meta"], summary="Version and access policy")
    def info() -> Response:
        return _json({
            "version": app_version(), "time": time.time(), "read_auth": settings.read_auth,
            "writes_enabled": settings.writes_enabled,
            "dashboard_refresh": settings.dashboard_refresh,
            "rtt_sample_interval": settings.rtt_sample_interval,
        })

    @r.get("/peers", tags=["peers"], dependencies=read, summary="List peers",
           responses={200: {"model": schemas.PeerList}})
    def list_peers(
        switch: str | None = None,
        group: str | None = None,
        state_: Annotated[Health | None, Query(alias="state")] = None,
        q: Annotated[str | None, Query(description="Substring of name, address or group")] = None,
        include: Annotated[str | None, Query(
            pattern="^health$", description="`health`: add each peer's structure values",
        )] = None,
        limit: Annotated[int, Query(ge=1, le=65_536)] = 10_000,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> Response:
        full = include == "health"  # health values change every poll: never cached
        key = (switch, group, state_, q, limit, offset)
        if not full:
            cached = state.listing.get(key)
            if cached is not None:
                return Response(cached, media_type="application/json")
        generation = state.listing.generation
        needle = q.lower() if q else None
        rows = [
            entry for entry in service.peer_listing()
            if (switch is None or entry[0].switch == switch)
            and (group is None or (entry[0].group or "") == group)
            and (state_ is None or entry[1] == state_)
            and (not needle or needle in entry[0].name.lower() or needle in entry[0].address
                 or needle in (entry[0].group or "").lower())
        ]
        page = rows[offset:offset + limit]
        if full:
            health = _health_map(service)
            body = orjson.dumps({"total": len(rows), "peers": [
                _peer_row(p, health.get(p.name), True) for p, *_ in page]})
            return Response(body, media_type="application/json")
        body = b'{"total":%d,"peers":[%s]}' % (len(rows), b",".join(state.peer_json.rows(page)))
        state.listing.put(key, generation, body)
        return Response(body, media_type="application/json")

    def programmed(names: Sequence[str]) -> tuple[int, float | None]:
        """201 and when the peers were programmed, or 202 and None: committed, and the
        switch's leader (another replica, docs/ha.md) has not programmed them within
        `ha.program_wait_s`; it will. A service without replicas programs in the call."""
        wait = getattr(service, "wait_programmed", None)
        at = wait(names) if wait is not None else time.time()
        return (201 if at is not None else 202), at

    @r.post("/peers", tags=["peers"], dependencies=write, status_code=201,
            summary="Add one peer",
            responses={201: {"model": schemas.PeerOut,
                             "description": "Added and programmed (`programmed_at`)"},
                       202: {"model": schemas.PeerOut,
                             "description": "Added (committed); not programmed yet by the "
                                            "switch's leader: `programmed_at` is null"}})
    def add_peer(body: schemas.PeerIn) -> Response:
        peer = Peer.from_dict(body.model_dump())
        with _changes(state):
            added = service.add_peers([peer])
        status, at = programmed([added[0].name])
        return _json({**added[0].to_dict(), "programmed_at": at}, status,
                     headers={"Location": f"/api/v1/peers/{added[0].name}"})

    @r.post("/peers/bulk", tags=["peers"], dependencies=write, status_code=201,
            summary="Add many peers, all or nothing",
            responses={201: {"model": schemas.AddedList,
                             "description": "Added and programmed (`programmed_at`)"},
                       202: {"model": schemas.AddedList,
                             "description": "Added (committed); not all programmed yet by "
                                            "their switches' leaders: `programmed_at` is "
                                            "null"}})
    def add_peers(body: schemas.BulkAdd) -> Response:
        if not body.peers:
            raise ValidationError("peers", "must not be empty")
        if len(body.peers) > settings.max_bulk:
            raise ValidationError("peers", f"at most {settings.max_bulk} per request")
        peers = []
        for i, item in enumerate(body.peers):
            try:
                peers.append(Peer.from_dict(item.model_dump()))
            except ValidationError as exc:
                raise ValidationError(f"peers[{i}].{exc.field}", exc.message) from exc
        with _changes(state):
            added = service.add_peers(peers)
        status, at = programmed([p.name for p in added])
        return _json({"total": len(added), "peers": [p.to_dict() for p in added],
                      "programmed_at": at}, status)

    @r.post("/peers/bulk-delete", tags=["peers"], dependencies=write,
            summary="Remove many peers, all or nothing",
            responses={200: {"model": schemas.RemovedOut}})
    def remove_peers(body: schemas.BulkRemove) -> Response:
        if not body.names:
            raise ValidationError("names", "must not be empty")
        names = list(dict.fromkeys(body.names))
        with _changes(state):
            service.remove_peers(names)
        return _json({"removed": names})

    @r.get("/peers/{name}", tags=["peers"], dependencies=read, summary="One peer",
           responses={200: {"model": schemas.PeerOut}})
    def get_peer(name: str) -> Response:
        peer = service.get_peer(name)
        try:
            health: PeerHealth | None = service.health(name)
        except NotFoundError:
            health = None
        return _json(_peer_row(peer, health, True))

    @r.patch("/peers/{name}", tags=["peers"], dependencies=write, summary="Change a peer",
             responses={200: {"model": schemas.PeerOut}})
    def update_peer(name: str, body: schemas.PeerPatch) -> Response:
        changes = body.model_dump(exclude_unset=True)
        if "name" in changes:
            if changes["name"] != name:
                raise ValidationError("name", "cannot be changed (remove and add the peer)")
            del changes["name"]
        if not changes:
            raise ValidationError("body", "no field to change")
        for key, value in changes.items():
            if value is None and key not in ("group", "detect_mult", "mac"):
                raise ValidationError(key, "must not be null")
        current = service.get_peer(name)
        if changes.get("kind", current.kind) != current.kind:
            raise ValidationError("kind", "cannot be changed (remove and add the peer)")
        merged = Peer(**{**current.to_dict(), **changes})
        merged.validate()  # the API answers 422 before the controller touches anything
        with _changes(state):
            updated = service.update_peer(name, changes)
        return _json(updated.to_dict())

    @r.delete("/peers/{name}", tags=["peers"], dependencies=write, status_code=204,
              summary="Remove a peer")
    def remove_peer(name: str) -> Response:
        with _changes(state):
            service.remove_peers([name])
        return Response(status_code=204)

    @r.get("/peers/{name}/health", tags=["health"], dependencies=read,
           summary="One peer's current structure values and state",
           responses={200: {"model": schemas.PeerHealthOut}})
    def peer_health(name: str) -> Response:
        return _json(service.health(name).to_dict())

    @r.get("/peers/{name}/history", tags=["health"], dependencies=read,
           summary="One peer's transitions and inventory events, newest first",
           responses={200: {"model": schemas.EventPage}})
    def peer_history(
        name: str,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: Annotated[int | None, Query(
            ge=1, le=MAX_ID, description="Events with smaller ids")] = None,
        kind: Annotated[list[str] | None, Query(
            description="Filter: transition, peer_added, ...")] = None,
    ) -> Response:
        service.get_peer(name)  # 404 for unknown peers (history of removed peers: /events)
        return _event_page(state, peer=name, limit=limit, before=before, kind=kind)

    @r.get("/peers/{name}/rtt", tags=["health"], dependencies=read,
           summary="Recent RTT samples (µs) of one peer",
           responses={200: {"model": schemas.RttHistoryOut}})
    def peer_rtt(name: str) -> Response:
        service.get_peer(name)
        return _json({"interval": state.rtt.interval,
                      "peers": state.rtt.snapshot({name})})

    # ---- health ------------------------------------------------------------------------

    @r.get("/health", tags=["health"], dependencies=read, summary="Health summary",
           responses={200: {"model": schemas.Summary}})
    def summary() -> Response:
        counts = service.summary()
        per_switch: dict[str, dict[str, int]] = {}
        for h in service.all_health():
            sw = per_switch.setdefault(h.switch, {str(s): 0 for s in Health})
            sw[str(h.state)] += 1
        for s in service.switches():
            per_switch.setdefault(s.name, {str(x): 0 for x in Health})
        states = {str(s): int(counts.get(s, 0)) for s in Health}
        return _json({"total": sum(states.values()), "states": states,
                      "switches": per_switch, "ready": service.ready()})

    @r.get("/health/peers", tags=["health"], dependencies=read,
           summary="Every peer's current structure values",
           responses={200: {"model": schemas.HealthList}})
    def all_health(
        switch: str | None = None, state_: Annotated[Health | None, Query(alias="state")] = None,
    ) -> Response:
        rows = [h.to_dict() for h in service.all_health()
                if (switch is None or h.switch == switch)
                and (state_ is None or h.state == state_)]
        return _json({"peers": rows})

    @r.get("/rtt", tags=["health"], dependencies=read,
           summary="Recent RTT samples (µs) of every peer (dashboard sparklines)",
           responses={200: {"model": schemas.RttHistoryOut}})
    def rtt_history() -> Response:
        return _json({"interval": state.rtt.interval, "peers": state.rtt.snapshot()})

    # ---- switches ----------------------------------------------------------------------

    @r.get("/switches", tags=["switches"], dependencies=read,
           summary="Data-plane targets and their connection state",
           responses={200: {"model": schemas.SwitchList}})
    def switches() -> Response:
        return _json({"switches": [s.to_dict() for s in service.switches()]})

    @r.get("/switches/{name}", tags=["switches"], dependencies=read, summary="One switch",
           responses={200: {"model": schemas.SwitchOut}})
    def get_switch(name: str) -> Response:
        for s in service.switches():
            if s.name == name:
                return _json(s.to_dict())
        raise NotFoundError("switch", name)

    @r.get("/dataplane/counters", tags=["switches"], dependencies=read,
           summary="Per switch, per reason: packets and bytes of the hb_reason counter")
    def counters() -> Response:
        out = {sw: {reason: {"packets": p, "bytes": b} for reason, (p, b) in reasons.items()}
               for sw, reasons in service.dataplane_counters().items()}
        return _json({"switches": out})

    # ---- events ------------------------------------------------------------------------

    @r.get("/events/history", tags=["events"], dependencies=read,
           summary="Persisted events, newest first, paged with `before`",
           responses={200: {"model": schemas.EventPage}})
    def event_history(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        peer: str | None = None,
        kind: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        return _event_page(state, peer=peer, limit=limit, before=before, kind=kind)

    @r.get("/events", tags=["events"], dependencies=read,
           summary="Live events as Server-Sent Events (resume with Last-Event-ID)",
           response_class=StreamingResponse,
           responses={200: {"content": {"text/event-stream": {}},
                            "description": "`id:` event id, `event:` kind, `data:` JSON"},
                      503: {"model": schemas.ErrorOut,
                            "description": "`api.max_sse_clients` streams already open"}})
    async def events(
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        after: Annotated[int | None, Query(
            ge=0, le=MAX_ID, description="Like Last-Event-ID")] = None,
        peer: str | None = None,
        kind: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        resume: int | None = after
        if last_event_id is not None and last_event_id.strip():
            try:
                resume = int(last_event_id)
            except ValueError:
                raise ValidationError("Last-Event-ID", "must be an event id (integer)") \
                    from None
            if not 0 <= resume <= MAX_ID:
                raise ValidationError("Last-Event-ID", f"must be 0 .. {MAX_ID}")
        kinds = _event_kinds(kind)
        cap = settings.max_sse_clients
        with state.lock:
            if state.sse_open >= cap:
                raise HTTPException(
                    503, {"field": "max_sse_clients",
                          "message": f"at most {cap} event streams at once "
                                     "(api.max_sse_clients); try again later"},
                    headers={"Retry-After": "5"})
            state.sse_open += 1
        return _EventStream(
            state, _stream(state, resume, peer, kinds), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return r


class _EventStream(StreamingResponse):
    """An SSE response that gives its slot of the stream cap back however it ends
    (finished, client gone, server stopping), even if the stream never started."""

    def __init__(self, state: AppState, content: AsyncIterator[str], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with self._state.lock:
                self._state.sse_open -= 1


@contextmanager
def _changes(state: AppState) -> Iterator[None]:
    """Around a write: the controller may publish its events later (asynchronously), so
    cached listings go now, or a client could miss what it just wrote."""
    try:
        yield
    finally:
        state.listing.invalidate()


def app_version() -> str:
    try:
        return metadata.version("hbmon")
    except metadata.PackageNotFoundError:
        return "0"


def _event_page(
    state: AppState, *, peer: str | None, limit: int, before: int | None,
    kind: list[str] | None,
) -> Response:
    kinds = _event_kinds(kind)
    wanted = {str(k) for k in kinds} if kinds else None
    found: list[Event] = []
    cursor = before if before is not None else 2**62
    # Page backwards through the store; kinds are filtered here (any Store works).
    while len(found) < limit:
        page = state.store.events(peer=peer, before_id=cursor, limit=max(limit, 100))
        if not page:
            break
        for event in reversed(page):
            if wanted is None or str(event.kind) in wanted:
                found.append(event)
                if len(found) == limit:
                    break
        cursor = page[0].id
        if len(page) < max(limit, 100):
            break
    next_before = found[-1].id if len(found) == limit else None
    return _json({"events": [e.to_dict() for e in found], "next_before": next_before})


async def _stream(
    state: AppState, resume: int | None, peer: str | None, kinds: list[EventKind] | None,
) -> AsyncIterator[str]:
    wanted = {str(k) for k in kinds} if kinds else None

    def matches(event: Event) -> bool:
        return (peer is None or event.peer == peer) and (wanted is None or str(event.kind)
                                                         in wanted)

    sub = state.bus.subscribe(asyncio.get_running_loop())
    with state.lock:
        if state.closing:
            sub.close()
        state.streams.add(sub)
    state.metrics.sse_clients.inc()
    try:
        yield f"retry: 2000\n: hbmon events, last id {sub.start_id}\n\n"
        last = sub.start_id if resume is None else resume

        async def catch_up() -> AsyncIterator[str]:
            # Everything persisted after `last`; the subscription buffers what is
            # published meanwhile, and ids <= last are skipped there.
            nonlocal last
            while True:
                page = await run_in_threadpool(
                    state.bus.history, after_id=last, limit=_SSE_PAGE, peer=peer, kinds=kinds)
                for event in page:
                    if event.id > last:
                        last = event.id
                        yield _sse(event)
                if len(page) < _SSE_PAGE:
                    return

        if resume is not None:
            async for chunk in catch_up():
                yield chunk
        while not sub.closed:
            batch = await sub.next_batch(state.settings.sse_keepalive)
            if sub.closed:
                break
            if batch is None:
                yield ": keepalive\n\n"
                continue
            if sub.take_overflow():
                async for chunk in catch_up():
                    yield chunk
            out = []
            for event in batch:
                if event.id > last:
                    last = event.id
                    if matches(event):
                        out.append(_sse(event))
            if out:
                yield "".join(out)
    finally:
        sub.close()
        with state.lock:
            state.streams.discard(sub)
        state.metrics.sse_clients.dec()

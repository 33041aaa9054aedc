"""REST API, SSE, /metrics and the dashboard of a running controller.

  service   `HbmonService`, `Store`, `EventSink`: what the API needs of the controller
  app       `create_app`: the FastAPI application (REST, SSE, /metrics, dashboard, /docs)
  server    `ApiServer`: uvicorn in a thread
  settings  `ApiSettings`: listen address, tokens, TLS, CORS from the environment
  auth      bearer tokens for read and write
  schemas   the pydantic models of the OpenAPI document
  metrics   `ControllerMetrics`: the Prometheus collectors
  rtt       `RttHistory`: per-peer round-trip history for the dashboard

Nothing is imported here, so the controller can import `service` without FastAPI.

Wiring (what `hbmon serve` does)::

    store = open_store(url)
    bus = EventBus(store, WebhookDispatcher(WebhookConfig.from_env(urls)).start())
    metrics = ControllerMetrics()
    fabric = Fabric(..., store=store, events=bus, metrics=metrics)   # HbmonService
    app = create_app(fabric, store, bus, ApiSettings.from_env(), metrics)
    server = ApiServer(app, settings.host, settings.port).start()
"""

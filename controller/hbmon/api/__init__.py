"""REST API, SSE, /metrics and the dashboard of a running controller.

Wiring (what `hbmon serve` does)::

    store = open_store(url)
    bus = EventBus(store, WebhookDispatcher(WebhookConfig.from_env(urls)).start())
    metrics = ControllerMetrics()
    fabric = Fabric(..., store=store, events=bus, metrics=metrics)   # HbmonService
    app = create_app(fabric, store, bus, ApiSettings.from_env(), metrics)
    server = ApiServer(app, settings.host, settings.port).start()
"""

from .app import create_app
from .server import ApiServer
from .settings import ApiSettings

__all__ = ["ApiServer", "ApiSettings", "create_app"]

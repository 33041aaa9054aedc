"""/docs: Swagger UI served by hbmon itself (issue 14), in headless Chromium.

The HTTP layer alone is under test (what the page loads and shows), so it runs on the fake
service of tests/api; the document it renders is the one the OpenAPI conformance tests hold
to the live server."""

from __future__ import annotations

import httpx
from api_harness import TOKEN
from playwright.sync_api import Browser
from real_product import Product
from test_api_dashboard import Watched, browser  # noqa: F401  (the module's Chromium)


def test_docs_render_every_operation_with_the_network_blocked(
        browser: Browser, api: Product) -> None:  # noqa: F811
    doc = httpx.get(api.url + "/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    watched = Watched(page, api.url)
    # the network is blocked: anything but this server is refused (and recorded by Watched)
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
        (api.url, "data:")) else route.abort("internetdisconnected"))
    try:
        page.goto(api.url + "/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        shown = set()
        for block in page.query_selector_all(".opblock-summary"):
            method = block.query_selector(".opblock-summary-method")
            path = block.query_selector(".opblock-summary-path")
            assert method is not None and path is not None
            shown.add((method.inner_text().strip(),
                       (path.get_attribute("data-path") or path.inner_text()).strip()))
        assert shown == operations
        assert page.query_selector(".btn.authorize") is not None  # the bearer scheme
        assert watched.foreign == [] and watched.errors == []
    finally:
        page.close()


def test_docs_try_it_out_with_the_token(browser: Browser, api: Product) -> None:  # noqa: F811
    """Authorize with the bearer token, then "Try it out" on GET /api/v1/peers: the
    request goes to this server with the token and the answer shows in the page."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(api.url + "/docs")
        page.wait_for_selector(".swagger-ui .btn.authorize", timeout=30_000)
        page.click(".btn.authorize")
        page.fill(".auth-container input", TOKEN)
        page.click(".auth-btn-wrapper .btn.modal-btn.auth.authorize")
        page.click(".btn-done")
        block = page.locator(".opblock-get", has=page.locator(
            '.opblock-summary-path[data-path="/api/v1/peers"]')).first
        block.locator(".opblock-summary").click()
        with page.expect_request(lambda r: r.url.startswith(api.url + "/api/v1/peers")) as req:
            block.locator(".try-out__btn").click()
            block.locator(".execute").click()
        assert req.value.headers.get("authorization") == f"Bearer {TOKEN}"
        status = block.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for(timeout=10_000)
        assert status.inner_text().strip() == "200"
    finally:
        page.close()

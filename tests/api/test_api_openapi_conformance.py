"""Regression for what schemathesis found on the live product (issue 11): every 422 the
server answers must match the OpenAPI document. FastAPI declared its own
HTTPValidationError ({"detail": [...]}) for 422 while the handler answers ErrorOut
({"detail": {"field", "message"}, "errors": [...]}), so every invalid request violated the
document. The document is validated here with schemathesis' own conformance check."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance


def test_every_422_is_documented_as_the_error_the_server_sends(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    documented = 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if "422" in op.get("responses", {}):
                documented += 1
                schema = op["responses"]["422"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, method)
    assert documented >= 5
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.parametrize(("method", "path", "query"), [
    ("GET", "/api/v1/peers", {"state": "BOGUS"}),
    ("GET", "/api/v1/peers", {"limit": "0"}),
])
def test_a_real_422_conforms_to_the_document(client: httpx.Client, method: str, path: str,
                                             query: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    case = schema[path][method].Case(query=query)
    response = client.request(method, path, params=query)
    assert response.status_code == 422, response.text
    try:
        case.validate_response(response, checks=[response_schema_conformance])
    except (AssertionError, FailureGroup) as exc:
        pytest.fail(f"422 outside the document: {exc}")

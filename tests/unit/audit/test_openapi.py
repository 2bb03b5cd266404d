"""The OpenAPI document names exactly the API routes the service serves."""

from __future__ import annotations

from extproc.audit.api import api_routes
from extproc.audit.openapi import openapi_document


def test_openapi_paths_are_the_routes() -> None:
    doc = openapi_document("/audit/")
    routes = {"/audit" + r.path for r in api_routes()} | {"/audit/api/openapi.json"}
    assert set(doc["paths"]) == routes
    assert doc["openapi"].startswith("3.1")

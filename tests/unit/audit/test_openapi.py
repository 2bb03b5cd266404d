"""The OpenAPI document names exactly the API routes the service serves."""

from __future__ import annotations

from extproc.audit.api import api_routes
from extproc.audit.approvals import approval_routes
from extproc.audit.openapi import openapi_document


def test_openapi_paths_are_the_routes() -> None:
    doc = openapi_document("/audit/")
    # Starlette's {name:path} (a parameter that spans slashes) is OpenAPI's plain {name}.
    routes = {"/audit" + r.path.replace(":path}", "}") for r in [*api_routes(), *approval_routes()]}
    routes |= {"/audit/api/openapi.json"}
    assert set(doc["paths"]) == routes
    assert doc["openapi"].startswith("3.1")


def test_the_session_schema_names_every_field_a_row_has() -> None:
    from extproc.audit.summary import SessionRow

    row = SessionRow("k", "i", "s", "iss", "sub", "u", 1.0, 2.0, "complete", True, True, 1, 2, ("t",), 1)
    schema = openapi_document("/audit/")["components"]["schemas"]["Session"]["properties"]
    assert set(row.to_json()) == set(schema)

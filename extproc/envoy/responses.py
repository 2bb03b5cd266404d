"""Builders for ext_proc ProcessingResponse messages: continue, mutate, immediate response."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2

from extproc.errors import GatewayError
from extproc.mcp.jsonrpc import error_response

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_mutation(set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()) -> ep.HeaderMutation:
    """A mutation that overwrites ``set_headers`` and removes ``remove``."""
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def _common(
    set_headers: Mapping[str, str] | None, remove: Iterable[str], clear_route_cache: bool = False
) -> ep.CommonResponse:
    if not set_headers and not remove and not clear_route_cache:
        return ep.CommonResponse()
    return ep.CommonResponse(header_mutation=header_mutation(set_headers, remove), clear_route_cache=clear_route_cache)


def request_headers(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = (), clear_route_cache: bool = False
) -> ep.ProcessingResponse:
    """Let the request headers through, optionally mutated; ``clear_route_cache`` makes Envoy route them again."""
    return ep.ProcessingResponse(
        request_headers=ep.HeadersResponse(response=_common(set_headers, remove, clear_route_cache))
    )


def _body(replace: bytes | None) -> ep.BodyResponse:
    """Continue with the body as it is, or replace a whole (buffered) body; Content-Length follows."""
    if replace is None:
        return ep.BodyResponse(response=ep.CommonResponse())
    return ep.BodyResponse(
        response=ep.CommonResponse(
            status=ep.CommonResponse.CONTINUE_AND_REPLACE,
            body_mutation=ep.BodyMutation(body=replace),
            header_mutation=header_mutation({"content-length": str(len(replace))}),
        )
    )


def request_body(replace: bytes | None = None) -> ep.ProcessingResponse:
    """Let the (buffered) request body through, unchanged or replaced."""
    return ep.ProcessingResponse(request_body=_body(replace))


def streamed_body(replace: bytes) -> ep.ProcessingResponse:
    """A STREAMED response chunk replaced by ``replace`` (possibly empty: held back for a later chunk)."""
    return ep.ProcessingResponse(
        response_body=ep.BodyResponse(response=ep.CommonResponse(body_mutation=ep.BodyMutation(body=replace)))
    )


def response_headers(
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    buffer_body: bool = False,
) -> ep.ProcessingResponse:
    """Let response headers through; ``buffer_body`` switches this exchange's response body to BUFFERED."""
    resp = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=_common(set_headers, remove)))
    if buffer_body:
        resp.mode_override.CopyFrom(
            processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED)
        )
    return resp


def response_body(replace: bytes | None = None) -> ep.ProcessingResponse:
    """Let a response body chunk through, or replace the (buffered) body."""
    return ep.ProcessingResponse(response_body=_body(replace))


def immediate(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, details: str = ""
) -> ep.ProcessingResponse:
    """Answer the client directly; nothing reaches the upstream."""
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=header_mutation(headers),
            body=body,
            details=details,
        )
    )


def json_reply(
    status: int, doc: object, headers: Mapping[str, str] | None = None, details: str = ""
) -> ep.ProcessingResponse:
    """Immediate response with a JSON body."""
    return immediate(
        status,
        json.dumps(doc, separators=(",", ":")).encode(),
        {"content-type": "application/json", **(headers or {})},
        details,
    )


def error_reply(
    err: GatewayError, msg_id: str | int | None = None, headers: Mapping[str, str] | None = None
) -> ep.ProcessingResponse:
    """The one place a GatewayError becomes what the client sees: HTTP status + JSON-RPC error body."""
    doc = error_response(msg_id, err.jsonrpc_code, err.safe_message)
    details = f"mcp_extproc_{err.refusal_name}"
    return json_reply(err.status, doc, headers, details)

"""Envoy's access log and its own log lines in the processor's shape, joined to the processor's access line by
``request_id`` (Envoy generates ``x-request-id`` at the edge and hands it to the processor with the headers).

The access log names no header values and no query string (a client may put a credential in either).
"""

from __future__ import annotations

from typing import Any

from extproc.envoy.fields import T
from extproc.settings import Settings

# Field names shared with the processor's access line (extproc/logs.py): time, level, logger, msg, request_id,
# server, status, duration_ms, bytes_in, bytes_out.
ACCESS_FIELDS: dict[str, str] = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "level": "info",
    "logger": "envoy.access",
    "msg": "access",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "server": "%ROUTE_NAME%",
    "http_method": "%REQ(:METHOD)%",
    "path": "%REQ_WITHOUT_QUERY(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "upstream": "%UPSTREAM_HOST%",
    "protocol": "%PROTOCOL%",
}

# Envoy's own (non-access) log lines as JSON, for `envoy --log-format` (spdlog pattern; %j escapes for JSON).
ENVOY_JSON_LOG_FORMAT = '{"time":"%Y-%m-%dT%T.%eZ","level":"%l","logger":"envoy.%n","msg":"%j"}'


def access_logs(settings: Settings) -> list[dict[str, Any]]:
    """The HTTP connection manager's ``access_log``: one line per request on Envoy's stdout."""
    if settings.log_format == "json":
        log_format: dict[str, Any] = {"json_format": ACCESS_FIELDS}
    else:
        text = " ".join(f"{k}={v}" for k, v in ACCESS_FIELDS.items() if k not in ("level", "logger", "msg"))
        log_format = {"text_format_source": {"inline_string": f"envoy access {text}\n"}}
    log_format["formatters"] = [
        {
            "name": "envoy.formatter.req_without_query",
            "typed_config": {"@type": T + "extensions.formatter.req_without_query.v3.ReqWithoutQuery"},
        }
    ]
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": T + "extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": log_format,
            },
        }
    ]


def envoy_log_args(settings: Settings) -> list[str]:
    """Extra Envoy command-line arguments for its own log lines."""
    return ["--log-format", ENVOY_JSON_LOG_FORMAT] if settings.log_format == "json" else []

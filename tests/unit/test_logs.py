"""Log formats: JSON is one object per line with the record's fields; text shows the same fields as key=value."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from extproc import logs
from extproc.logs import JsonFormatter, TextFormatter, access, verdict_fields
from extproc.mcp.jsonrpc import McpCall
from extproc.policy.enforce import Verdict
from extproc.policy.engine import Decision


def _record(msg: str = "hello %s", args: tuple = ("x",), **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("t.logger", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_time_level_logger_msg_and_extras() -> None:
    doc = json.loads(JsonFormatter().format(_record(exchange="e1", status=200)))
    assert doc["level"] == "warning" and doc["logger"] == "t.logger" and doc["msg"] == "hello x"
    assert doc["exchange"] == "e1" and doc["status"] == 200
    assert doc["time"].endswith("Z") and "T" in doc["time"]


def test_json_line_is_one_line_even_with_newlines_and_exceptions() -> None:
    try:
        raise ValueError("a\nb")
    except ValueError:
        import sys

        rec = _record("multi\nline", ())
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError" in json.loads(line)["exception"]


def test_text_line_shows_extras_as_key_value() -> None:
    line = TextFormatter().format(_record(exchange="e1", rule="", status=403))
    assert line.endswith("hello x exchange=e1 status=403")


def test_access_line_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mcp_extproc.access"):
        access(
            exchange="e",
            request_id="r",
            user="alice",
            server="demo",
            methods=["tools/call"],
            tools=["echo"],
            decision="allow",
            rule="r1",
            status=200,
            outcome="complete",
            duration_ms=1.23456,
            bytes_in=5,
        )
    rec = caplog.records[-1]
    assert rec.getMessage() == "access"
    assert (rec.exchange, rec.mcp_method, rec.tool, rec.duration_ms) == ("e", "tools/call", "echo", 1.235)


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        pytest.param([True, True], ("allow", "r1"), id="all-allowed-last-rule"),
        pytest.param([True, False], ("deny", "default-deny"), id="first-deny-wins"),
    ],
)
def test_verdict_fields(decisions: list[bool], expected: tuple[str, str]) -> None:
    calls = (McpCall("tools/call", 1, tool="echo"), McpCall("tools/call", 2, tool="add"))
    ds = tuple(Decision(a, "r1" if a else "default-deny", "") for a in decisions)
    fields = verdict_fields(Verdict(calls, ds))
    assert (fields["decision"], fields["rule"]) == expected
    assert fields["methods"] == ["tools/call", "tools/call"] and fields["tools"] == ["echo", "add"]
    assert verdict_fields(None) == {}


@pytest.fixture
def configured() -> Iterator[None]:
    """``setup`` as a process runs it; the root logger's handlers and level put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logs._DIRECT = None


ACCESS_FIELDS = {"exchange": "e", "request_id": "r", "user": "alice", "server": "demo", "status": 200, "bytes_in": 5}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_line_is_the_formatters_line_without_a_log_record(
    fmt: logs.LogFormat, configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The access line is written without building a LogRecord, and reads exactly as the formatter writes it."""
    logs.setup(fmt)
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    logging.setLogRecordFactory(counting)
    try:
        access(**ACCESS_FIELDS, duration_ms=1.23456)  # type: ignore[arg-type]
    finally:
        logging.setLogRecordFactory(factory)
    line = capsys.readouterr().err.rstrip("\n")
    assert made == [] and "\n" not in line
    logs._DIRECT = None  # the same call through logging and the handler's formatter
    access(**ACCESS_FIELDS, duration_ms=1.23456)  # type: ignore[arg-type]
    want = capsys.readouterr().err.rstrip("\n")
    if fmt == "json":
        doc, expected = json.loads(line), json.loads(want)
        assert doc.pop("time").endswith("Z") and expected.pop("time").endswith("Z")
        assert list(doc.items()) == list(expected.items())
    else:
        assert line.partition(" INFO ")[2] == want.partition(" INFO ")[2]
        stamps = [x.partition(" INFO ")[0] for x in (line, want)]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", x) for x in stamps), stamps


def test_access_line_goes_through_logging_when_a_handler_is_added(configured: None) -> None:
    """A handler (a test's capture, a second sink) added after setup sees the line as a record, as before."""
    logs.setup("text")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    access(**ACCESS_FIELDS)  # type: ignore[arg-type]
    assert [r.getMessage() for r in seen] == ["access"] and seen[0].exchange == "e"

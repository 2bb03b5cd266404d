"""The two error trees: refusals a client reads (status, JSON-RPC code, safe message) and operator failures."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from extproc import errors
from extproc.authn import errors as authn_errors
from extproc.envoy.responses import error_reply


@pytest.mark.parametrize("cls", [errors.ConfigError, errors.StoreError], ids=["config", "store"])
def test_operator_errors_are_not_refusals(cls: type[Exception]) -> None:
    """A config or store failure has no HTTP status: it can never be answered to a client as itself."""
    assert issubclass(cls, errors.OperatorError)
    assert not issubclass(cls, errors.GatewayError)
    assert not hasattr(cls("x"), "status")


def test_the_recording_refusal_keeps_its_published_name_and_answer() -> None:
    reply = error_reply(errors.RecordingUnavailable("spool write failed: ENOSPC"), msg_id=7).immediate_response

    assert reply.status.code == 503
    assert reply.details == "mcp_extproc_StoreError"  # the refusals metric and dashboards keep this name
    body = json.loads(reply.body)
    assert body["error"] == {"code": -32004, "message": "recording unavailable; request refused"}
    assert "ENOSPC" not in reply.body.decode()


@pytest.mark.parametrize("module", [errors, authn_errors], ids=["errors", "authn.errors"])
def test_every_refusal_class_is_drawn_in_the_tree_at_the_top_of_errors(module: ModuleType) -> None:
    """The tree in errors.py's docstring names every class of the module (and of the branches kept elsewhere)."""
    doc = errors.__doc__ or ""
    classes = [
        name
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == module.__name__
    ]

    assert len(classes) > (25 if module is errors else 10)
    assert [name for name in classes if name not in doc] == []

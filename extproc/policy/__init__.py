"""Policy: the YAML format (model), loading and watching (loader), and pure decisions (engine).

The names below are imported on first use, not with the package: gateway.yaml's ``policy:`` section
(``policy.config``) and the policy file model load without compiling or evaluating anything.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extproc.policy.compiled import CompiledPolicy
    from extproc.policy.engine import (
        DEFAULT_DENY,
        Decision,
        RuleTrace,
        decide,
        decide_batch,
        describe_call,
        explain,
        filter_list,
        may_view,
        redact,
    )
    from extproc.policy.loader import PolicyWatcher, load_policy
    from extproc.policy.redact import Redaction

_HOME = {
    "CompiledPolicy": "compiled",
    "DEFAULT_DENY": "engine",
    "Decision": "engine",
    "RuleTrace": "engine",
    "decide": "engine",
    "decide_batch": "engine",
    "describe_call": "engine",
    "explain": "engine",
    "filter_list": "engine",
    "may_view": "engine",
    "redact": "engine",
    "PolicyWatcher": "loader",
    "load_policy": "loader",
    "Redaction": "redact",
}

__all__ = [
    "DEFAULT_DENY",
    "CompiledPolicy",
    "Decision",
    "PolicyWatcher",
    "Redaction",
    "RuleTrace",
    "decide",
    "decide_batch",
    "describe_call",
    "explain",
    "filter_list",
    "load_policy",
    "may_view",
    "redact",
]


# ``redact`` names both a submodule and engine's function, and the package has always exported the function. The
# submodule (a light one) is loaded now and the attribute its import sets dropped: the name then resolves to the
# function through ``__getattr__``, and a later import of the submodule (already loaded) does not set it again.
importlib.import_module(f"{__name__}.redact")
globals().pop("redact")


def __getattr__(name: str) -> Any:
    """``from extproc.policy import decide``: the name from its module, imported now."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)

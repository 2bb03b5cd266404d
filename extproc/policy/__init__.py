"""Policy: the YAML format (model), loading and watching (loader), and pure decisions (engine)."""

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

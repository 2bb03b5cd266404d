"""Who may see which recordings: the policy's ``viewers`` rules, turned into grants. No matching rule = no access."""

from __future__ import annotations

import logging

from extproc.audit.index import Grant
from extproc.authn.principal import Principal
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.engine import subjects_miss

log = logging.getLogger(__name__)


def grants_for(policy: CompiledPolicy, who: Principal) -> list[Grant]:
    """Every viewer rule matching ``who``, as a grant; an evaluation error grants nothing (fail closed)."""
    try:
        return [Grant(v.servers, v.all_sessions) for v in policy.viewers if subjects_miss(v.subjects, who) is None]
    except Exception:
        log.exception("viewer evaluation failed; refusing")
        return []


def grant_names(policy: CompiledPolicy, who: Principal) -> list[str]:
    """Names of the viewer rules that match ``who`` (shown to the viewer: what can I see and why)."""
    try:
        return [v.name for v in policy.viewers if subjects_miss(v.subjects, who) is None]
    except Exception:
        return []

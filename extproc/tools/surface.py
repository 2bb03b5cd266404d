"""The list and call paths of tool-surface integrity: what the exchange calls, on plain data.

List path (``review_list``): every item of a list result (tools, prompts, resources, resource templates; every page;
JSON or SSE alike, the exchange hands each JSON-RPC result here) is fingerprinted (fingerprint.py), screened
(screens.py) and judged against its pin (pins.py). The policy's ``integrity`` entry for the item decides:

    changed (not approved)   on_change alarm: shown, recorded | hide: dropped, calls refused | block: dropped,
                             every call to the server refused -- until a person approves (``mcp-extproc pins``)
    rejected by a person     dropped (and the server blocked under block), whatever on_change says
    screen finding           alarm: recorded | strip: invisible characters removed, recorded | hide: dropped |
                             refuse: every call to the server refused while the finding is listed

Call path (``check_call``): a dict lookup gives the fingerprint the recording unit was last shown for the item;
calls to hidden items, and every use call to a blocked server, are refused. Lists themselves are never refused: a
client keeps seeing what is still trusted.

State: what each recording unit was shown (bounded, least recently used dropped), and per server which items are
hidden or blocking and why (shared by every caller: it is the server's surface, not the caller's). Where a server
has identity-scoped backends, "server" here is the scope ``server@backend`` (pins.scope): each backend has its own
pins and state, judged by the server's policy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.policy.compiled import CompiledPolicy
from extproc.recording.events import DefinitionChanged, Event, ToolDefinition
from extproc.tools.fingerprint import BY_USE, KINDS, DefinitionError, fingerprint
from extproc.tools.pins import PinFile, PinStore, first_pin, judge, server_of, with_candidate
from extproc.tools.screens import CrossNames, Finding, cross_server_pattern, scan, strip_invisible

MAX_UNITS = 10_000
MAX_KNOWN = 50_000  # definitions whose fingerprint and findings are remembered (a server re-lists the same ones)
Key = tuple[str, str]  # (kind, name)


@dataclass(frozen=True, slots=True)
class Withheld:
    """Why an item is not shown: ``action`` hide (its calls refused) or block (the server's calls refused)."""

    action: str
    reason: str
    fingerprint: str
    change: bool  # True: a change not approved (lifted once its pin holds this fingerprint); False: a screen


@dataclass
class Shown:
    """What one recording unit was shown: (server, kind, name) -> (fingerprint, time), and which fingerprints'
    definitions its recording holds."""

    last: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)
    changes: set[tuple[str, str]] = field(default_factory=set)  # (old, new) already recorded


@dataclass
class ListReview:
    result: dict[str, Any]
    events: list[Event]
    pins: list[PinFile]  # to sign and write (first sightings, candidates)
    hidden: list[str]


@dataclass
class Surface:
    """Processor-wide tool-surface state; ``pins`` None: screens only (no signing key, nothing is pinned)."""

    pins: PinStore | None
    units: OrderedDict[str, Shown] = field(default_factory=OrderedDict)
    # server -> (kind, name) -> why withheld, from the last list that had the item
    withheld: dict[str, dict[Key, Withheld]] = field(default_factory=dict)
    names: dict[str, frozenset[str]] = field(default_factory=dict)  # server -> its tool names (cross-server screen)
    _cross: dict[str, tuple[int, CrossNames | None]] = field(default_factory=dict)
    _version: int = 0
    # (the item's orjson bytes, cross-server names version) -> (fingerprint, findings). Equal bytes are an equal
    # JSON value, so an equal canonical form: fingerprint and screens run once per distinct definition.
    _known: dict[tuple[bytes, int], tuple[str, list[Finding]]] = field(default_factory=dict)

    def unit(self, unit: str) -> Shown:
        shown = self.units.get(unit)
        if shown is None:
            shown = self.units[unit] = Shown()
            while len(self.units) > MAX_UNITS:
                self.units.popitem(last=False)
        else:
            self.units.move_to_end(unit)
        return shown

    def cross(self, server: str) -> CrossNames | None:
        """The other servers' distinctive tool names, compiled once per change of what is known."""
        cached = self._cross.get(server)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        own = self.names.get(server, frozenset())
        others = {n for s, names in self.names.items() if s != server for n in names} - own
        pattern = cross_server_pattern(others)
        self._cross[server] = (self._version, pattern)
        return pattern

    def review_list(
        self, policy: CompiledPolicy, server: str, method: str, result: dict[str, Any], unit: str, now: float
    ) -> ListReview:
        """Fingerprint, screen and judge every item of one list result; the result as the caller may see it."""
        kind = KINDS.get(method)
        items = result.get(kind.key) if kind is not None else None
        if kind is None or not isinstance(items, list):
            return ListReview(result, [], [], [])
        shown = self.unit(unit)
        withheld = self.withheld.setdefault(server, {})
        if kind.name == "tool":  # backends of one server are one server here: their names are not "another's"
            names = frozenset(i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str))
            own = server_of(server)
            if not names <= self.names.get(own, frozenset()):
                self.names[own] = self.names.get(own, frozenset()) | names
                self._version += 1
        cross = self.cross(server_of(server)) if kind.name == "tool" else None
        review = ListReview(result, [], [], [])
        kept: list[Any] = []
        for item in items:
            name = item.get(kind.item) if isinstance(item, dict) else None
            if not isinstance(name, str):
                kept.append(item)  # unnamed: the policy filter drops what it cannot authorize
                continue
            out = self._review_item(policy, server, kind.name, name, item, shown, withheld, cross, now, review)
            if out is None:
                review.hidden.append(name)
            else:
                kept.append(out)
        review.result = {**result, kind.key: kept}
        return review

    def _review_item(
        self,
        policy: CompiledPolicy,
        server: str,
        kind: str,
        name: str,
        item: dict[str, Any],
        shown: Shown,
        withheld: dict[Key, Withheld],
        cross: CrossNames | None,
        now: float,
        review: ListReview,
    ) -> dict[str, Any] | None:
        settings = policy.integrity(server_of(server), name)
        try:
            fp, findings = self._examine(item, cross)
        except DefinitionError as e:  # no canonical form: nothing can be pinned or proven about it
            withheld[(kind, name)] = Withheld("hide", str(e), "", False)
            return None
        pin = self.pins.get(server, kind, name) if self.pins is not None else None
        standing: str = judge(pin, fp) if self.pins is not None else "unpinned"
        if self.pins is not None and pin is None and self.pins.forged(server, kind, name):
            standing = "forged"  # a pin file is there but nobody signed it: fail closed, keep it as evidence
        verdict: Withheld | None = None
        out: dict[str, Any] = item
        records: list[dict[str, Any]] = []
        for f in findings:
            action = settings.screens.get(f.screen, "alarm")
            records.append({**f.to_record(), "action": action})
            if action == "strip":
                out = strip_invisible(out)
            elif action == "hide" and verdict is None:
                verdict = Withheld("hide", f"{f.screen} screen: {f.rule} at {f.path}", fp, False)
            elif action == "refuse":
                verdict = Withheld("block", f"{f.screen} screen: {f.rule} at {f.path}", fp, False)
        if standing == "new" and self.pins is not None:
            review.pins.append(first_pin(server, kind, name, item, fp, now))
        elif standing == "forged":
            if settings.on_change != "alarm":
                reason = f"{kind} {name!r}: its pin file is not signed by this gateway's key (refused)"
                verdict = Withheld("block" if settings.on_change == "block" else "hide", reason, fp, False)
            if ("forged-pin", fp) not in shown.changes:
                shown.changes.add(("forged-pin", fp))
                review.events.append(
                    DefinitionChanged(server=server, kind=kind, name=name, old="forged-pin", new=fp,
                                      decision=settings.on_change, rule=settings.source)
                )  # fmt: skip
        elif standing in ("changed", "rejected") and pin is not None:
            decision = "rejected" if standing == "rejected" else settings.on_change
            if standing == "changed":
                candidate = with_candidate(pin, item, fp, now)
                if candidate is not pin:
                    review.pins.append(candidate)
            if decision != "alarm" and (verdict is None or verdict.action != "block"):
                block = settings.on_change == "block"
                why = "rejected by a person" if standing == "rejected" else "changed since pinned, not approved"
                reason = f"{kind} {name!r} {why} ({pin.fingerprint} -> {fp})"
                # Lifted by an approval only when nothing else withholds it too (a screen's verdict waits for the
                # next list, which judges the approved definition again).
                lift = standing == "changed" and verdict is None
                verdict = Withheld("block" if block else "hide", reason, fp, lift)
            if (pin.fingerprint, fp) not in shown.changes:
                shown.changes.add((pin.fingerprint, fp))
                review.events.append(
                    DefinitionChanged(server=server, kind=kind, name=name, old=pin.fingerprint, new=fp,
                                      decision=decision, rule=settings.source)
                )  # fmt: skip
        if fp not in shown.recorded:
            shown.recorded.add(fp)
            review.events.append(
                ToolDefinition(server=server, kind=kind, name=name, fingerprint=fp, definition=item, pin=standing,
                               shown=verdict is None, findings=records)
            )  # fmt: skip
        if verdict is not None:
            withheld[(kind, name)] = verdict
            return None
        withheld.pop((kind, name), None)
        shown.last[(server, kind, name)] = (fp, now)
        return out

    def needs_pins(self, server: str) -> bool:
        """Whether a call to ``server`` must look at the pins first (one stat): only while something of it is
        withheld (an approval lifts it) or before this processor listed it. Otherwise a call costs dict lookups; a
        change another replica saw counts here from this processor's next list of the server."""
        withheld = self.withheld.get(server)
        return self.pins is not None and (withheld is None or bool(withheld))

    def _examine(self, item: dict[str, Any], cross: CrossNames | None) -> tuple[str, list[Finding]]:
        """Fingerprint and screen findings of one item, remembered per distinct definition."""
        try:
            key: tuple[bytes, int] | None = (orjson.dumps(item), self._version if cross is not None else -1)
        except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits: computed, not remembered
            key = None
        known = self._known.get(key) if key is not None else None
        if known is not None:
            return known
        texts: list[str] = []
        result = fingerprint(item, texts), scan(item, cross, texts)  # one walk gives both their strings
        if key is not None:
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[key] = result
        return result

    def check_call(
        self, policy: CompiledPolicy, server: str, method: str, name: str | None, unit: str | None
    ) -> tuple[str | None, dict[str, Any] | None]:
        """(why the call is refused or None, what to record of the definition the caller was shown). Call
        ``pins.refresh(server)`` first so an approval made since the last list counts."""
        kind = BY_USE.get(method)
        if kind is None or name is None:
            return None, None
        withheld = self.withheld.get(server)
        approved: dict[str, Any] | None = None
        if withheld:
            for key, w in list(withheld.items()):
                pin = self.pins.get(server, *key) if self.pins is not None and w.change else None
                if pin is not None and pin.fingerprint == w.fingerprint:  # approved since it was listed
                    del withheld[key]
                    if key == (kind.name, name):  # the approval goes on the record with the first call it lets by
                        approved = {"fingerprint": w.fingerprint, "by": pin.approved_by, "at": pin.pinned_at}
            found = withheld.get((kind.name, name))
            if found is not None:
                return found.reason, {"kind": kind.name, "name": name, "fingerprint": found.fingerprint,
                                      "withheld": found.action}  # fmt: skip
            blocking = next((w for w in withheld.values() if w.action == "block"), None)
            if blocking is not None:
                return f"server {server!r} blocked: {blocking.reason}", {
                    "kind": kind.name, "name": name, "withheld": "block", "blocked_by": blocking.reason,
                }  # fmt: skip
        elif withheld is None and self.pins is not None and (why := self._pending(policy, server, kind.name, name)):
            return why, {"kind": kind.name, "name": name, "withheld": "pending"}
        last = self.units[unit].last.get((server, kind.name, name)) if unit is not None and unit in self.units else None
        if last is None:
            fp = approved["fingerprint"] if approved is not None else None
            record = {"kind": kind.name, "name": name, "fingerprint": fp, "listed": False}
            return None, record if approved is None else {**record, "approved": approved}
        record = {"kind": kind.name, "name": name, "fingerprint": last[0], "listed_at": last[1]}
        return None, record if approved is None else {**record, "approved": approved}

    def _pending(self, policy: CompiledPolicy, server: str, kind: str, name: str) -> str | None:
        """For a server this processor has not listed yet (restarted, or another replica listed it), the pins say
        what is pending: a change under hide refuses its item, under block every use of the server."""
        assert self.pins is not None
        for pin in self.pins.pending(server):
            action = policy.integrity(server_of(server), pin.name).on_change
            if action == "block" or (action == "hide" and (pin.kind, pin.name) == (kind, name)):
                assert pin.candidate is not None
                what = f"{pin.kind} {pin.name!r} changed since pinned, not approved ({pin.candidate.fingerprint})"
                return f"server {server!r} blocked: {what}" if action == "block" else what
        return None


def build_surface(settings: Any) -> Surface:
    """The processor's surface: pins in ``<recording.directory>/.pins`` signed with recording.signing_key; without a
    signing key nothing can be pinned (a pin nobody can verify protects nothing), so only the screens apply."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from extproc.errors import ConfigError

    key_path = settings.recording.signing_key
    if key_path is None:
        return Surface(None)
    try:
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"pins: cannot load recording.signing_key {key_path}: {e}") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"pins: recording.signing_key {key_path} is not an Ed25519 private key")
    return Surface(PinStore(pins_directory(settings), private.public_key(), private))


def pins_directory(settings: Any) -> Any:
    """Where the pins live: beside the recordings."""
    return settings.recording.directory / ".pins"

"""Validate events against the OCSF schema's own attribute dictionary (vendored from ocsf/ocsf-schema v1.8.0).

OCSF publishes its schema as a dictionary of attributes plus class and object files that name their attributes,
their requirement and enums, ``extends`` a parent and ``$include`` profiles; the JSON Schema form is only rendered
by the schema server. This checker reads those files (tests/vectors/ocsf/1.8.0, copied unchanged from the
ocsf-schema repository at the v1.8.0 release commit 3dcb905d) and checks, recursively: every attribute is known to
its class or object, required ones are present, values have the dictionary type (with the type's regex and
maximum length), enum ids are listed, arrays are arrays, and objects meet their ``at_least_one`` / ``just_one``
constraints; plus the class, category and type uids.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1] / "vectors" / "ocsf" / "1.8.0"


class OcsfSchema:
    """The vendored schema files, resolved on demand."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        dictionary = self._json("dictionary.json")
        self.dictionary: dict[str, Any] = dictionary["attributes"]
        self.types: dict[str, Any] = dictionary["types"]["attributes"]
        self.categories: dict[str, Any] = self._json("categories.json")["attributes"]
        self.version: str = self._json("version.json")["version"]

    @cache  # noqa: B019 (one schema per test session)
    def _json(self, rel: str) -> dict[str, Any]:
        path = self.root / rel
        if not path.exists():
            raise FileNotFoundError(f"OCSF schema file {rel} is not vendored under {self.root}")
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _class_file(self, name: str) -> str:
        if name == "base_event":
            return "events/base_event.json"
        for path in sorted((self.root / "events").rglob("*.json")):
            if json.loads(path.read_text()).get("name") == name:
                return str(path.relative_to(self.root))
        raise FileNotFoundError(f"OCSF event class {name!r} is not vendored")

    @cache  # noqa: B019
    def _resolved(self, rel: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """(attributes, constraints) of a class or object file: parents first, includes merged, own last."""
        doc = self._json(rel)
        attrs: dict[str, dict[str, Any]] = {}
        constraints: dict[str, Any] = {}
        parent = doc.get("extends")
        if parent:
            kind = rel.split("/", 1)[0]
            parent_rel = self._class_file(parent) if kind == "events" else f"objects/{parent}.json"
            parent_attrs, parent_constraints = self._resolved(parent_rel)
            attrs = {k: dict(v) for k, v in parent_attrs.items()}
            constraints = dict(parent_constraints)
        own = dict(doc.get("attributes", {}))
        for inc in own.pop("$include", []):
            included = self._json(inc)
            profile = included.get("name") if included.get("meta") == "profile" else None
            for k, v in included.get("attributes", {}).items():
                _merge(attrs.setdefault(k, {}), {**v, **({"_profile": profile} if profile else {})})
        for k, v in own.items():
            _merge(attrs.setdefault(k, {}), v)
        constraints.update(doc.get("constraints", {}))
        return attrs, constraints

    def class_uid(self, name: str) -> int:
        rel = self._class_file(name)
        doc = self._json(rel)
        category = self._resolved_category(rel)
        return int(self.categories[category]["uid"]) * 1000 + int(doc["uid"]) if category in self.categories else 0

    def _resolved_category(self, rel: str) -> str:
        doc = self._json(rel)
        while "category" not in doc and doc.get("extends"):
            doc = self._json(self._class_file(doc["extends"]))
        return str(doc.get("category", "other"))

    def validate(self, event: dict[str, Any], class_name: str = "api_activity") -> list[str]:
        """Every problem of ``event`` as an instance of ``class_name``; empty when it is valid."""
        rel = self._class_file(class_name)
        problems: list[str] = []
        attrs, constraints = self._resolved(rel)
        profiles = set(event.get("metadata", {}).get("profiles", []))
        self._check_object(event, attrs, constraints, "", problems, profiles)
        uid = self.class_uid(class_name)
        if event.get("class_uid") != uid:
            problems.append(f"class_uid: {event.get('class_uid')!r}, the class {class_name} is {uid}")
        if event.get("category_uid") != uid // 1000:
            problems.append(f"category_uid: {event.get('category_uid')!r}, expected {uid // 1000}")
        if isinstance(event.get("activity_id"), int) and event.get("type_uid") != uid * 100 + event["activity_id"]:
            problems.append(f"type_uid: {event.get('type_uid')!r}, expected {uid * 100 + event['activity_id']}")
        version = event.get("metadata", {}).get("version")
        if version != self.version:
            problems.append(f"metadata.version: {version!r}, the vendored schema is {self.version}")
        return problems

    def _check_object(
        self,
        value: dict[str, Any],
        attrs: dict[str, dict[str, Any]],
        constraints: dict[str, Any],
        where: str,
        problems: list[str],
        profiles: set[str],
    ) -> None:
        for name, spec in attrs.items():
            # A profile's attributes are required only of events that declare the profile (metadata.profiles).
            applies = spec.get("_profile") is None or spec["_profile"] in profiles
            if spec.get("requirement") == "required" and name not in value and applies:
                problems.append(f"{where}{name}: required")
        for name, v in value.items():
            spec = attrs.get(name)
            if spec is None:
                problems.append(f"{where}{name}: not an attribute here")
                continue
            definition = {**self.dictionary.get(name, {}), **spec}
            if "type" not in definition:
                problems.append(f"{where}{name}: not in the dictionary")
                continue
            if definition.get("is_array"):
                if not isinstance(v, list):
                    problems.append(f"{where}{name}: expected an array")
                    continue
                for i, item in enumerate(v):
                    self._check_value(item, definition, f"{where}{name}[{i}]", problems, profiles)
            else:
                self._check_value(v, definition, f"{where}{name}", problems, profiles)
        if (one := constraints.get("at_least_one")) and not any(k in value for k in one):
            problems.append(f"{where or '(event)'}: needs at least one of {', '.join(one)}")
        if (just := constraints.get("just_one")) and sum(k in value for k in just) != 1:
            problems.append(f"{where or '(event)'}: needs exactly one of {', '.join(just)}")

    def _check_value(
        self, v: Any, definition: dict[str, Any], where: str, problems: list[str], profiles: set[str]
    ) -> None:
        kind = definition["type"]
        if not kind.endswith("_t"):  # an object
            if not isinstance(v, dict):
                problems.append(f"{where}: expected an object ({kind})")
            elif kind != "object":  # "object" is the free-form one (unmapped)
                attrs, constraints = self._resolved(f"objects/{kind}.json")
                self._check_object(v, attrs, constraints, f"{where}.", problems, profiles)
            return
        t = self.types.get(kind)
        if t is None:
            problems.append(f"{where}: unknown type {kind}")
            return
        base = t.get("type", kind)
        ok = {
            "string_t": lambda: isinstance(v, str),
            "integer_t": lambda: isinstance(v, int) and not isinstance(v, bool),
            "long_t": lambda: isinstance(v, int) and not isinstance(v, bool),
            "float_t": lambda: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean_t": lambda: isinstance(v, bool),
            "json_t": lambda: True,
        }.get(base, lambda: False)()
        if not ok:
            problems.append(f"{where}: {v!r} is not a {kind} ({base})")
            return
        if isinstance(v, str):
            if (regex := t.get("regex")) and not re.fullmatch(regex, v):
                problems.append(f"{where}: {v!r} does not match the {kind} pattern")
            if (max_len := t.get("max_len")) and len(v) > max_len:
                problems.append(f"{where}: longer than {max_len}")
        # The uids of the classification are computed from the class and category (checked in ``validate``);
        # base_event's enums for them list only its own 0.
        computed = where in ("class_uid", "category_uid", "type_uid")
        if (enum := definition.get("enum")) and not computed and str(v) not in enum:
            problems.append(f"{where}: {v!r} not among {sorted(enum)}")


def _merge(into: dict[str, Any], spec: dict[str, Any]) -> None:
    """A child's attribute spec over its parent's: keys replaced, enums extended (api_activity adds 1-4 to 0, 99)."""
    for k, v in spec.items():
        if k == "enum" and isinstance(into.get("enum"), dict):
            into["enum"] = {**into["enum"], **v}
        else:
            into[k] = v


@cache
def schema() -> OcsfSchema:
    return OcsfSchema()

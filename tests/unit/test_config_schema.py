"""gateway.yaml's JSON Schema (`mcp-extproc config schema`): valid, complete against the README, and loading the
config stays plain data (no policy compiler imported)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from extproc.cli import app
from extproc.settings import json_schema

ROOT = Path(__file__).resolve().parents[2]


def _readme_keys() -> list[str]:
    """Every key named in the first column of README's gateway.yaml table, shorthand expanded:
    ``a.b``, ``.c`` (or ``c``) -> a.b, a.c; ``a.{b,c}`` -> a.b, a.c."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## gateway.yaml\n", 1)[1].split("\n## ", 1)[0]
    keys: list[str] = []
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        parent = ""
        for name in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            if name.startswith("."):
                name = parent + name
            elif parent and "." not in name:  # `recording.segment_max_bytes`, `segment_max_age_ms`
                name = f"{parent}.{name}"
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            if m := re.fullmatch(r"(.*)\.\{(.*)\}", name):
                keys += [f"{m[1]}.{part}" for part in m[2].split(",")]
            else:
                keys.append(name)
    return keys


def _node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its $ref followed and a nullable anyOf reduced to the non-null branch."""
    if "$ref" in node:
        return _node(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
    branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
    return _node(schema, branches[0]) if len(branches) == 1 else node


def _find(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema of a README key (``servers[].name``, ``recording.servers.<name>``), or None if it has none."""
    node = _node(schema, schema)
    for part in key.split("."):
        if part.startswith("<"):
            node = _node(schema, node["additionalProperties"])
            continue
        name = part.removesuffix("[]")
        properties = node.get("properties", {})
        if name not in properties:
            return None
        node = _node(schema, properties[name])
        if part.endswith("[]"):
            node = _node(schema, node["items"])
    return node


def test_config_schema_is_a_valid_json_schema_that_accepts_the_shipped_configs() -> None:
    schema = json_schema()

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "gateway.yaml"
    validator = jsonschema.Draft202012Validator(schema)
    for path in [ROOT / "gateway.yaml", ROOT / "deploy" / "gateway.compose.yaml"]:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path}: {errors}"
    assert not validator.is_valid({"servers": [{"name": "a", "upstream": "h:1"}], "recordng": {}})


def test_every_readme_gateway_key_is_in_the_schema_with_a_description_where_commented() -> None:
    schema = json_schema()
    keys = _readme_keys()

    assert len(keys) > 60 and "servers[].tls_ca_file" in keys and "processor.tls.server_name" in keys
    missing = [k for k in keys if _find(schema, k) is None]
    assert not missing, f"README names keys the schema does not have: {missing}"
    assert "Envoy admin" in (_find(schema, "admin.port") or {})["description"]
    assert "SHA-256" in (_find(schema, "recording.max_event_body_bytes") or {})["description"]


def test_a_key_the_schema_does_not_have_is_found_missing() -> None:
    """Guards the test above: the walk really fails on a key gateway.yaml does not know."""
    schema = json_schema()

    assert _find(schema, "recording.spool_directory") is not None
    assert _find(schema, "recording.spool_dir") is None
    assert _find(schema, "servers[].tsl") is None


def test_config_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(app, ["config", "schema"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json_schema()


@pytest.mark.parametrize("module", ["extproc.policy.compiled", "extproc.policy.engine", "extproc.recording.recorder"])
def test_loading_a_config_compiles_and_records_nothing(module: str) -> None:
    code = (
        "import sys; from extproc.settings import load; "
        f"load({str(ROOT / 'gateway.yaml')!r}); print({module!r} in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_every_relative_path_of_every_section_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``resolved(base)`` per section: recording, policy, grants and audit paths all follow the file."""
    from extproc.settings import load

    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "gateway.yaml").write_text(
        yaml.safe_dump(
            {
                "servers": [{"name": "a", "upstream": "127.0.0.1:1"}],
                "auth": {"public_url": "https://gw.example", "issuers": [{"issuer": "https://idp.example"}]},
                "policy": {"directory": "pol"},
                "grants": {"directory": "grants"},
                "recording": {"directory": "rec", "spool_directory": "spool", "signing_key": "keys/signing.key"},
                "audit": {"client_secret_file": "secret", "index": "idx.sqlite", "login_keys_file": "login-keys"},
            }
        )
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder: a path resolved against the cwd would show

    s = load(folder / "gateway.yaml")

    assert s.policy is not None and s.grants is not None and s.audit is not None
    paths = {
        "policy.directory": s.policy.directory,
        "grants.directory": s.grants.directory,
        "recording.directory": s.recording.directory,
        "recording.spool_directory": s.recording.spool_directory,
        "recording.signing_key": s.recording.signing_key,
        "audit.client_secret_file": s.audit.client_secret_file,
        "audit.index": Path(s.audit.index) if s.audit.index else None,  # a file path, or a postgresql:// URL
        "audit.login_keys_file": s.audit.login_keys_file,
    }
    wrong = {k: v for k, v in paths.items() if v is None or v.parent not in (folder, folder / "keys")}
    assert wrong == {}


@pytest.mark.parametrize(
    ("index", "error"),
    [
        ("postgresql://audit@db.internal/audit", None),
        ("postgres://audit@db.internal:5433/audit?sslmode=verify-full", None),
        ("postgresql://audit:hunter2@db.internal/audit", "PGPASSFILE"),
        ("mysql://db/audit", "SQLite file path or a postgresql:// URL"),
    ],
)
def test_the_audit_index_is_a_file_or_a_postgresql_url_without_a_password(index: str, error: str | None) -> None:
    from pydantic import ValidationError

    from extproc.audit.config import Audit

    if error is None:
        assert Audit(index=index).resolved(Path("/etc/gw")).index == index  # a URL is not a path to resolve
    else:
        with pytest.raises(ValidationError, match=error):
            Audit(index=index)

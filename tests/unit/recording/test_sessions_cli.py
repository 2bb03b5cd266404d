"""`sessions list` says what was checked; a missing --dir is an error, not an empty table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import zygote
from recording_helpers import cli as _cli
from recording_helpers import record as _record

from extproc.recording.manifest import generate_keys


async def test_list_says_yes_only_when_signatures_were_checked(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    await _record(root, key, "sess-a")

    unchecked = _cli("sessions", "list", "--dir", str(root), "--json")
    checked = _cli("sessions", "list", "--dir", str(root), "--json", "--public-key", str(pub))
    table = _cli("sessions", "list", "--dir", str(root))

    # JSON: the audit API's booleans; the table says "yes" only with signatures checked
    assert [(r["verified"], r["signatures_checked"]) for r in json.loads(unchecked.stdout)] == [(True, False)]
    assert [(r["verified"], r["signatures_checked"]) for r in json.loads(checked.stdout)] == [(True, True)]
    assert "hashes only" in table.stdout and " yes " not in table.stdout


async def test_list_says_no_when_a_check_fails(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    await _record(root, key, "sess-a")
    stream = root / "sess-a" / "w.jsonl"
    stream.write_bytes(stream.read_bytes().replace(b'"n":1', b'"n":7'))

    rows = json.loads(_cli("sessions", "list", "--dir", str(root), "--json", "--public-key", str(pub)).stdout)

    assert [r["verified"] for r in rows] == [False]


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    for command in (["list"], ["show", "s1"], ["verify", "s1"]):
        result = _cli("sessions", *command, "--dir", str(tmp_path / "nope"))

        assert result.returncode == 2, (command, result.stdout)
        assert f"no recording directory {tmp_path / 'nope'}" in result.stdout.replace("\n", "")


def _cli_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "extproc", *args]
    return zygote.run_command(cmd, timeout=60, env=env, cwd=cwd)


def test_list_of_a_directory_without_recordings_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    table = _cli("sessions", "list", "--dir", str(tmp_path / "empty"))
    as_json = _cli("sessions", "list", "--dir", str(tmp_path / "empty"), "--json")

    assert table.returncode == 0 and f"no recorded sessions in directory {tmp_path / 'empty'}" in table.stdout
    assert "recorded MCP sessions" not in table.stdout  # no empty table
    assert json.loads(as_json.stdout) == [] and "no recorded sessions in directory" in as_json.stderr


async def test_dir_does_not_read_an_unrelated_gateway_yaml_for_the_key_and_says_which_key_it_used(
    tmp_path: Path,
) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    await _record(root, key, "sess-a")
    (tmp_path / "gateway.yaml").write_text(
        f"servers: [{{name: a, upstream: '127.0.0.1:1'}}]\nallow_anonymous: true\nrecording: {{signing_key: {key}}}\n"
    )

    implicit = _cli_in(tmp_path, "sessions", "list", "--dir", str(root), "--json")
    given = _cli_in(tmp_path, "sessions", "list", "--dir", str(root), "--json", "--public-key", str(pub))
    named = _cli_in(tmp_path, "sessions", "list", "--dir", str(root), "--json", "--config", "gateway.yaml")

    assert [r["signatures_checked"] for r in json.loads(implicit.stdout)] == [False]
    assert "signatures not checked: no --public-key given" in implicit.stderr
    assert [r["signatures_checked"] for r in json.loads(given.stdout)] == [True]
    assert f"signatures checked with the key in {pub} (--public-key)" in given.stderr
    assert [r["signatures_checked"] for r in json.loads(named.stdout)] == [True]
    assert f"signatures checked with the key in {key} (recording.signing_key in gateway.yaml)" in named.stderr


async def test_show_of_a_run_names_the_same_clients_runs_of_the_windows_around_it(tmp_path: Path) -> None:
    """A client busy across a run window's boundary continues in the next window's unit: `show` names both."""
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    client, other = "0123456789abcdef", "fedcba9876543210"
    runs = [f"r-{client}-{start:x}" for start in (300_000, 600_000, 1_200_000)]
    for unit in [*runs, f"r-{other}-{600_000:x}"]:
        await _record(root, key, unit, exchanges=1)

    def show(unit: str) -> dict:
        return json.loads(_cli("sessions", "show", unit, "--dir", str(root), "--public-key", str(pub), "--json").stdout)

    doc, first = show(runs[1]), show(runs[0])

    assert doc["notes"] == [
        f"this client's run of the window before: {runs[0]}",
        f"this client's run of the window after: {runs[2]}",
    ]
    assert first["notes"] == [f"this client's run of the window after: {runs[1]}"]

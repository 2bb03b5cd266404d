"""`sessions list` says what was checked; a missing --dir is an error, not an empty table."""

from __future__ import annotations

import json
from pathlib import Path

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

"""gateway.yaml: validated on load; every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.errors import ConfigError
from extproc.settings import Settings, load, parse, split_hostport

SERVER = {"name": "weather", "upstream": "127.0.0.1:8000"}


def _doc(**over: object) -> dict:
    doc: dict = {"servers": [SERVER], "allow_anonymous": True}
    doc.update(over)
    return doc


def test_minimal_config_gets_defaults() -> None:
    s = parse(_doc())

    assert [srv.name for srv in s.servers] == ["weather"]
    assert s.servers[0].prefix == "/weather/mcp"
    assert s.servers[0].path == "/mcp"
    assert s.processor.address == "127.0.0.1:50051"
    assert s.processor.unix_path is None
    assert s.recording.required is True
    assert s.server("weather") is s.servers[0]
    assert s.server("other") is None


@pytest.mark.parametrize(
    ("doc", "key", "message"),
    [
        pytest.param(_doc(colour="blue"), "colour", "unknown key", id="unknown-top-level-key"),
        pytest.param(
            {"servers": [{**SERVER, "tsl": True}]}, "servers.0.tsl", "unknown key", id="unknown-server-key-typo"
        ),
        pytest.param(_doc(recording={"dir": "x"}), "recording.dir", "unknown key", id="unknown-nested-key"),
        pytest.param(
            {"servers": [{"name": "Weather_API", "upstream": "h:1"}]},
            "servers.0.name",
            "must be lowercase letters",
            id="bad-server-name",
        ),
        pytest.param(
            {"servers": [{"name": "a/b", "upstream": "h:1"}]},
            "servers.0.name",
            "must be lowercase letters",
            id="server-name-with-slash",
        ),
        pytest.param(
            {"servers": [{"name": "x" * 64, "upstream": "h:1"}]},
            "servers.0.name",
            "at most 63 characters",
            id="server-name-too-long",
        ),
        pytest.param(
            {"servers": [SERVER, {"name": "b", "upstream": "localhost"}]},
            "servers.1.upstream",
            "expected host:port, got 'localhost'",
            id="upstream-without-port",
        ),
        pytest.param(
            {"servers": [{"name": "a", "upstream": "h:70000"}]},
            "servers.0.upstream",
            "expected host:port",
            id="upstream-port-out-of-range",
        ),
        pytest.param(
            {"servers": [{"name": "a", "upstream": "http://h:80"}]},
            "servers.0.upstream",
            "expected host:port",
            id="upstream-is-a-url",
        ),
        pytest.param(
            {"servers": [{**SERVER, "path": "mcp"}]}, "servers.0.path", "must start with '/'", id="relative-path"
        ),
        pytest.param(
            {"servers": [SERVER, {"name": "weather", "upstream": "127.0.0.1:9000"}]},
            "servers",
            "server name 'weather' is defined twice",
            id="duplicate-server",
        ),
        pytest.param({"servers": []}, "servers", "at least one MCP server is required", id="no-servers"),
        pytest.param({}, "servers", "Field required", id="servers-missing"),
        pytest.param(
            _doc(processor={"address": "unix:run/x.sock"}),
            "processor.address",
            "unix socket path must be absolute",
            id="relative-unix-socket",
        ),
        pytest.param(
            _doc(processor={"address": "50051"}), "processor.address", "expected host:port", id="processor-port-only"
        ),
        pytest.param(
            _doc(processor={"workers": 0}), "processor.workers", "greater than or equal to 1", id="no-workers"
        ),
        pytest.param(_doc(listen={"port": 0}), "listen.port", "greater than or equal to 1", id="port-zero"),
        pytest.param(_doc(recording={"store": "s4"}), "recording.store", "'file'", id="unknown-store"),
    ],
)
def test_parse_error_names_source_and_key(doc: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(doc, source="/etc/mcp/gateway.yaml")

    lines = str(err.value).splitlines()
    assert any(line.startswith(f"/etc/mcp/gateway.yaml: {key}: ") and message in line for line in lines), lines


def test_parse_reports_every_problem_each_on_its_own_line() -> None:
    doc = {"servers": [{"name": "Bad", "upstream": "nope"}], "extra": 1}

    with pytest.raises(ConfigError) as err:
        parse(doc, source="g.yaml")

    keys = sorted(line.split(": ")[1] for line in str(err.value).splitlines())
    assert keys == ["extra", "servers.0.name", "servers.0.upstream"]


@pytest.mark.parametrize(
    ("address", "unix_path"),
    [
        pytest.param("unix:/run/mcp-extproc.sock", "/run/mcp-extproc.sock", id="unix"),
        pytest.param("127.0.0.1:6000", None, id="tcp"),
        pytest.param("[::1]:6000", None, id="ipv6"),
    ],
)
def test_processor_address(address: str, unix_path: str | None) -> None:
    assert parse(_doc(processor={"address": address})).processor.unix_path == unix_path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("127.0.0.1:80", ("127.0.0.1", 80), id="ipv4"),
        pytest.param("mcp.example.com:443", ("mcp.example.com", 443), id="dns"),
        pytest.param("[::1]:8080", ("::1", 8080), id="ipv6-brackets"),
    ],
)
def test_split_hostport(value: str, expected: tuple[str, int]) -> None:
    assert split_hostport(value) == expected


@pytest.mark.parametrize("value", ["host", "host:0", "host:65536", ":80", "::1:80", "host:port"])
def test_split_hostport_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        split_hostport(value)


def test_settings_are_frozen() -> None:
    s = parse(_doc())

    with pytest.raises(ValueError, match="frozen"):
        s.servers[0].name = "other"  # type: ignore[misc]


def _write(path: Path, text: str, anonymous: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + ("allow_anonymous: true\n" if anonymous else ""))
    return path


def test_load_resolves_recording_directory_against_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path / "conf" / "gateway.yaml",
        "servers:\n  - name: weather\n    upstream: 127.0.0.1:8000\nrecording:\n  directory: ../data/rec\n",
    )
    monkeypatch.chdir(tmp_path / "conf")  # the working directory must not matter

    s = load("gateway.yaml")

    assert s.recording.directory == (tmp_path / "data" / "rec").resolve()
    assert isinstance(s, Settings)


def test_load_default_recording_directory_is_beside_the_file(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "g" / "gateway.yaml", "servers: [{name: a, upstream: '127.0.0.1:1'}]\n")

    assert load(cfg).recording.directory == (tmp_path / "g" / "recordings").resolve()


def test_load_keeps_absolute_recording_directory(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    text = f"servers: [{{name: a, upstream: '127.0.0.1:1'}}]\nrecording: {{directory: {target}}}\n"
    cfg = _write(tmp_path / "gateway.yaml", text)

    assert load(cfg).recording.directory == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("servers:\n  - name: a\n   upstream: [\n", ":3: not valid YAML: ", id="syntax-error"),
        pytest.param(  # the scanner notices the missing ':' only at the next key, past blank and comment lines
            "servers:\n  - name: a\n    upstream 127.0.0.1:1\n\n    # the port\n    upstream_tls: true\n",
            ":3: not valid YAML: could not find expected ':'",
            id="key-without-colon",
        ),
        pytest.param(
            "servers: [{name: a, upstream: '127.0.0.1:1'}]\nrecording:\n  directory: \"recs\n\nlog_format: json\n",
            ":3: not valid YAML: found unexpected end of stream",
            id="unclosed-quote",
        ),
        pytest.param("- just\n- a list\n", ":1: expected a mapping at the top level", id="list-at-top"),
        pytest.param("", ":1: empty file; expected a mapping at the top level", id="empty-file"),
        pytest.param(
            "servers: [{name: a, upstream: nope}]\n", ":1: servers.0.upstream: expected host:port", id="invalid"
        ),
        pytest.param(
            "servers:\n  - name: a\n    upstream: 127.0.0.1:1\nrecordng:\n  directory: x\n",
            ":4: recordng: unknown key (did you mean 'recording'?)",
            id="typo-top-level",
        ),
        pytest.param(
            "servers:\n  - name: a\n    upstream: 127.0.0.1:1\n    upstrem_tls: true\n",
            ":4: servers.0.upstrem_tls: unknown key",
            id="typo-nested",
        ),
        pytest.param(
            "servers:\n  - name: a\n    upstream: 127.0.0.1:1\nservers: []\n", ":4: duplicate key 'servers'", id="dup"
        ),
    ],
)
def test_load_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    cfg = _write(tmp_path / "my-gateway.yaml", text, anonymous=False)

    with pytest.raises(ConfigError) as err:
        load(cfg)

    assert str(err.value).startswith(f"{cfg}:")
    assert f"{cfg}{message}" in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value) and "problem_mark" not in str(err.value)


def test_load_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "gateway.yaml",
        "servers:\n  - name: Bad\n    upstream: nope\nlisten:\n  prot: 1\n",
        anonymous=False,
    )

    with pytest.raises(ConfigError) as err:
        load(cfg)

    lines = str(err.value).splitlines()
    assert f"{cfg}:2: servers.0.name" in "\n".join(lines)
    assert f"{cfg}:3: servers.0.upstream: expected host:port" in "\n".join(lines)
    assert f"{cfg}:5: listen.prot: unknown key (did you mean 'port'?)" in lines


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load(missing)


def test_auth_is_required_unless_anonymous_is_explicit() -> None:
    with pytest.raises(ConfigError) as e:
        parse({"servers": [SERVER]}, source="g.yaml")
    assert (
        str(e.value) == "g.yaml: auth: required (or set allow_anonymous: true to run without authentication, for tests)"
    )


def test_several_workers_need_a_shared_session_key() -> None:
    auth = {"public_url": "https://gw.example", "issuers": [{"issuer": "https://idp.example"}]}
    doc = {"servers": [SERVER], "auth": auth, "policy": {}, "processor": {"workers": 2}}
    with pytest.raises(ConfigError, match=r"auth.session_secret_file: required when processor.workers > 1"):
        parse(doc, source="g.yaml")
    parse({**doc, "auth": {**auth, "session_secret_file": "/etc/key"}})


def test_a_policy_needs_auth() -> None:
    with pytest.raises(ConfigError, match=r"policy: needs auth"):
        parse({"servers": [SERVER], "allow_anonymous": True, "policy": {}}, source="g.yaml")


@pytest.mark.parametrize(
    ("server", "authority"),
    [
        ({"upstream": "127.0.0.1:8000"}, "127.0.0.1:8000"),
        ({"upstream": "10.0.0.1:80"}, "10.0.0.1"),
        ({"upstream": "mcp.internal:443", "tls": True}, "mcp.internal"),
        ({"upstream": "[::1]:8000"}, "[::1]:8000"),
        ({"upstream": "127.0.0.1:8000", "host": "client"}, None),
        ({"upstream": "127.0.0.1:8000", "host": "mcp.example.com:8443"}, "mcp.example.com:8443"),
    ],
)
def test_server_host_defaults_to_the_upstreams_own_authority(server: dict, authority: str | None) -> None:
    s = parse({"allow_anonymous": True, "servers": [{"name": "a", **server}]})
    assert s.servers[0].upstream_authority == authority


@pytest.mark.parametrize("host", ["", "a b", "http://x", "x/y"])
def test_server_host_must_be_a_mode_or_an_authority(host: str) -> None:
    with pytest.raises(ConfigError, match=r"servers\.0\.host"):
        parse({"allow_anonymous": True, "servers": [{"name": "a", "upstream": "127.0.0.1:1", "host": host}]})

"""deploy/: the image, Compose and Kubernetes files agree with the code and with each other. No Docker needed.

What cannot run here (building the image, starting containers, applying to a cluster) is checked by reading:
every path, port, command and socket the manifests name must be one the config, the Dockerfile or the package
actually provides.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

from extproc import settings
from extproc.envoy.bootstrap import render_yaml
from extproc.envoy.process import envoy_binary
from extproc.launcher import can_connect, wait_until
from extproc.policy.loader import load_policy, policy_files
from extproc.sections import split_hostport

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_CONFIG = DEPLOY / "gateway.compose.yaml"
COMPOSE_S3_CONFIG = DEPLOY / "gateway.compose.s3.yaml"
K8S_BASE = K8S / "base"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "eks": K8S / "overlays" / "eks"}
K8S_CONFIG = OVERLAYS["dev"] / "gateway.yaml"
EKS_CONFIG = OVERLAYS["eks"] / "gateway.yaml"
KUBERNETES_VERSION = "1.33.0"  # the schemas objects are validated against (EKS standard support; sidecars >= 1.29)
CONFIG_PATH = "/etc/mcp-extproc/gateway.yaml"  # where both containers find gateway.yaml
POLICY_DIR = "/etc/mcp-extproc/policies"
BIN = Path(sys.executable).parent  # the venv's bin: mcp-extproc and python, as on the image's PATH

GATEWAY_CONFIGS = [
    pytest.param(COMPOSE_CONFIG, id="compose"),
    pytest.param(COMPOSE_S3_CONFIG, id="compose-s3"),
    pytest.param(K8S_CONFIG, id="k8s-dev"),
    pytest.param(EKS_CONFIG, id="k8s-eks"),
]
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` renders for an overlay (what `kubectl apply -k` would send)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (make tools installs it)")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAYS[overlay])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _one(kind: str, name: str, overlay: str = "dev") -> dict[str, Any]:
    found = [o for o in _rendered(overlay) if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    found = [o for o in found if o["metadata"]["name"] == name] or found  # generated names carry a hash suffix
    assert len(found) == 1, f"expected one {kind} {name} in {overlay}, found {len(found)}"
    return found[0]


def _pod(overlay: str = "dev") -> dict[str, Any]:
    return _one("Deployment", "mcp-extproc", overlay)["spec"]["template"]["spec"]


def _container(name: str, overlay: str = "dev") -> dict[str, Any]:
    pod = _pod(overlay)
    found = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name!r} not in the mcp-extproc pod"
    return found[0]


def _mount_at(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volumeMount whose mountPath is ``path`` or an ancestor of it (the deepest one)."""
    p = PurePosixPath(path)
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if p == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in p.parents
    ]
    return max(mounts, key=lambda m: len(m["mountPath"]), default=None)


def _absolute_paths(value: Any, key: str = "") -> Iterator[str]:
    """Every filesystem path in a settings dump: Path values, ``*_file`` keys, and the directory of a unix: socket.

    (Plain strings starting with '/' are not enough: a server's ``path`` is a URL path.)
    """
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _absolute_paths(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _absolute_paths(v, key)
    elif isinstance(value, Path) and value.is_absolute():
        yield str(value)
    elif isinstance(value, str) and value.startswith("unix:/"):
        yield str(PurePosixPath(value[5:]).parent)
    elif isinstance(value, str) and key.endswith("_file") and value.startswith("/"):
        yield value


# --- every file ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(DEPLOY)) for p in YAML_FILES])
def test_yaml_parses(path: Path) -> None:
    assert _docs(path), f"{path} is empty"


@pytest.mark.parametrize("path", GATEWAY_CONFIGS)
def test_gateway_config_loads(path: Path) -> None:
    s = settings.load(path)
    assert s.processor.unix_path == "/run/mcp-extproc/processor.sock"
    assert s.processor.workers == 1, "each container runs one `mcp-extproc serve` (no --worker)"
    assert s.listen.address == "0.0.0.0", "a container's loopback is unreachable from outside it"
    assert s.recording.directory == Path("/var/lib/mcp-extproc/recordings")


def test_every_shipped_stack_authenticates() -> None:
    for path in (COMPOSE_CONFIG, COMPOSE_S3_CONFIG, K8S_CONFIG, EKS_CONFIG):
        k8s = settings.load(path)
        assert k8s.auth is not None and not k8s.allow_anonymous and k8s.policy is not None
        assert k8s.recording.signing_key and k8s.auth.session_secret_file, "keys come from the pod's keys volume"
    eks = settings.load(EKS_CONFIG)
    assert eks.auth is not None and eks.auth.public_url.startswith("https://")
    assert eks.recording.s3 is not None and eks.recording.s3.object_lock and eks.recording.s3.kms_key_id


@pytest.mark.parametrize("path", GATEWAY_CONFIGS)
def test_envoy_accepts_bootstrap(path: Path, tmp_path: Path) -> None:
    s = settings.load(path)
    # Envoy does not connect in validate mode: the Unix socket need not exist, nor the upstreams resolve.
    assert s.processor.unix_path and not Path(s.processor.unix_path).exists()
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(render_yaml(s))
    out = subprocess.run(
        [
            str(envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(bootstrap),
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize(
    ("config", "policies"), [(K8S_CONFIG, K8S_BASE / "policies"), (EKS_CONFIG, OVERLAYS["eks"] / "policies")]
)
def test_policies_load_for_the_configured_servers(config: Path, policies: Path) -> None:
    load_policy(policies, known_servers={srv.name for srv in settings.load(config).servers})


def test_compose_uses_the_dev_servers() -> None:
    known = {srv.name for srv in settings.load(K8S_CONFIG).servers}
    assert known == {srv.name for srv in settings.load(COMPOSE_CONFIG).servers}, "compose mounts the same policies"


# --- image -----------------------------------------------------------------------------------------------------


def _dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from another stage)."""
    result = []
    for line in _dockerfile():
        if line.split()[0].upper() == "COPY" and "--from=" not in line:
            args = [a for a in line.split()[1:] if not a.startswith("--")]
            result.append((args[:-1], args[-1]))
    return result


_GLOB = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}  # Docker's glob: '*' stays within one segment


def _dockerignore_excludes(rel: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore keeps ``rel`` out of the context (last matching pattern wins;
    a pattern also matches everything under a directory it matches, as in Docker's matcher)."""
    excluded = False
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(_GLOB.get(tok, re.escape(tok)) for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_copy_sources_exist_and_are_in_the_context() -> None:
    copies = _copies()
    assert copies
    for sources, _ in copies:
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: no such file in the build context (the repository root)"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert not _dockerignore_excludes(rel), f"COPY {src}: {rel} is excluded by Dockerfile.dockerignore"


@pytest.mark.parametrize(
    "rel",
    [
        ".venv/bin/python",
        ".git/config",
        "recordings/x.jsonl",
        ".demo/gateway.yaml",
        "extproc/__pycache__/cli.cpython-311.pyc",
        "tests/unit/test_deploy.py",
    ],
)
def test_dockerignore_keeps_the_context_small(rel: str) -> None:
    assert _dockerignore_excludes(rel)


def _image_uid() -> int:
    arg = next(line for line in _dockerfile() if line.startswith("ARG UID="))
    assert any(line.startswith("USER ${UID}") for line in _dockerfile())
    return int(arg.split("=", 1)[1])


def _image_commands() -> set[str]:
    """Executables the image provides: the package's console scripts, the COPYed scripts, Python and coreutils."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    copied = {PurePosixPath(dest).name for _, dest in _copies() if dest.startswith("/usr/local/bin/")}
    bridge = {"mcp-proxy"} if _mcp_proxy_pin() else set()  # in its own virtualenv, on the PATH
    return set(scripts) | copied | bridge | {"python", "sleep"}


def _mcp_proxy_pin() -> str | None:
    line = next((ln for ln in _dockerfile() if "pip install mcp-proxy==" in ln), None)
    return line.split("mcp-proxy==", 1)[1].split()[0] if line else None


def test_the_image_bridges_stdio_servers_with_the_pinned_mcp_proxy() -> None:
    from extproc.stdio import MCP_PROXY_VERSION

    assert _mcp_proxy_pin() == MCP_PROXY_VERSION
    assert any(ln.startswith("ENV PATH=") and "/opt/mcp-proxy/bin" in ln for ln in _dockerfile())
    assert f"mcp-proxy=={MCP_PROXY_VERSION}" in (ROOT / "Makefile").read_text()


def test_dockerfile_default_command_serves_the_mounted_config() -> None:
    cmd = next(line for line in _dockerfile() if line.startswith("CMD "))
    assert yaml.safe_load(cmd[4:]) == ["mcp-extproc", "serve", "--config", CONFIG_PATH]


def test_dockerfile_creates_the_writable_directories() -> None:
    """Compose copies an image directory's owner into an empty named volume: these must belong to the user."""
    install = " ".join(line for line in _dockerfile() if "install -d -o" in line)
    s = settings.load(COMPOSE_CONFIG)
    dirs = [str(PurePosixPath(s.processor.unix_path or "").parent), str(s.recording.directory)]
    dirs += [str(PurePosixPath(str(s.recording.signing_key)).parent), "/var/lib/dev-issuer"]
    for path in dirs:
        assert path in install, f"{path} is not created, owned by the image user, in deploy/Dockerfile"


# --- envoy entrypoint and health checks ------------------------------------------------------------------------


def _entrypoint(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("mcp-extproc", path=str(BIN)) is None:
        pytest.skip("the mcp-extproc console script is not installed next to this Python")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MCP_EXTPROC_CONFIG": str(config),
        "ENVOY_BOOTSTRAP": str(tmp_path / "envoy.yaml"),
    }
    return subprocess.run(
        ["sh", str(DEPLOY / "envoy-entrypoint.sh"), *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("config", GATEWAY_CONFIGS)
def test_entrypoint_renders_bootstrap_and_runs_wheel_envoy(config: Path, tmp_path: Path) -> None:
    out = _entrypoint(tmp_path, config, "--mode", "validate")  # extra arguments reach Envoy
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-2000:]
    assert "OK" in out.stdout + out.stderr
    assert (tmp_path / "envoy.yaml").read_text() == render_yaml(settings.load(config))


def test_entrypoint_stops_on_bad_config(tmp_path: Path) -> None:
    out = _entrypoint(tmp_path, tmp_path / "missing.yaml", "--mode", "validate")
    assert out.returncode == 2 and "missing.yaml" in out.stdout + out.stderr
    assert not (tmp_path / "envoy.yaml").exists()


def test_entrypoint_shell_syntax() -> None:
    assert subprocess.run(["sh", "-n", str(DEPLOY / "envoy-entrypoint.sh")]).returncode == 0
    if shutil.which("shellcheck"):
        out = subprocess.run(["shellcheck", str(DEPLOY / "envoy-entrypoint.sh")], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("name", ["envoy-entrypoint.sh", "healthcheck.py"])
def test_scripts_are_executable(name: str) -> None:
    assert os.access(DEPLOY / name, os.X_OK)  # COPY --chmod sets it in the image; this keeps `git` honest too


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def processor_socket(tmp_path: Path) -> Iterator[str]:
    """A real `mcp-extproc serve` on a Unix socket (short path: sockets are limited to ~100 bytes)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="mx-", dir="/tmp"))
    address = f"unix:{sock_dir}/processor.sock"
    config = tmp_path / "gateway.yaml"
    doc = yaml.safe_load(K8S_CONFIG.read_text())
    doc["processor"]["address"] = address
    doc["recording"] = {"directory": str(tmp_path / "recordings")}  # the pod's volume and key paths are not here
    doc.pop("auth", None)  # its issuer is a placeholder; the health service does not depend on it
    doc.pop("policy", None)  # its directory is the pod's ConfigMap mount
    doc["allow_anonymous"] = True
    config.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "extproc", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: proc.poll() is None and can_connect(address), 20, "the processor's socket")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_healthcheck_grpc_probe_against_real_processor(processor_socket: str) -> None:
    hc = _healthcheck()
    assert hc.main(["grpc", processor_socket]) == 0
    assert hc.main(["grpc", "--service", "envoy.service.ext_proc.v3.ExternalProcessor", processor_socket]) == 0
    assert hc.main(["--timeout", "0.5", "grpc", processor_socket + ".missing"]) == 1


def test_healthcheck_http_needs_200() -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        hc = _healthcheck()
        assert hc.main(["http", f"{base}/ready"]) == 0
        assert hc.main(["http", f"{base}/draining"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert hc.main(["--timeout", "0.5", "http", f"{base}/ready"]) == 1  # nothing listening


def test_healthcheck_drain_posts_to_envoy_admin_then_waits() -> None:
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _healthcheck().main(["drain", f"http://127.0.0.1:{server.server_address[1]}", "--wait", "0"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/drain_listeners?graceful&inbound_only"]


# --- compose ---------------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset: the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes."""
    return {_interpolate(v).split(":")[1]: _interpolate(v).split(":")[0] for v in service.get("volumes", [])}


GATEWAY_SERVICES = {"processor", "envoy", "keys", "dev-issuer", "demo-mcp", "stdio-mcp", "client", "minio-bucket"}


def test_compose_references_files_that_exist() -> None:
    services = _compose()["services"]
    assert set(services) == GATEWAY_SERVICES | {"minio"}
    build = services["processor"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for name, svc in services.items():
        if name in GATEWAY_SERVICES:
            assert svc["image"] == services["processor"]["image"], f"{name} runs the one image"
            assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        for target, source in _compose_mounts(svc).items():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"
            else:
                assert source in _compose()["volumes"], f"{name}: volume {source} is not declared"
    assert "s3" in services["minio"]["profiles"] and "s3" in services["minio-bucket"]["profiles"]


def test_compose_wires_gateway_config() -> None:
    services = _compose()["services"]
    s = settings.load(COMPOSE_CONFIG)
    socket_dir = str(PurePosixPath(s.processor.unix_path or "").parent)
    processor, envoy = _compose_mounts(services["processor"]), _compose_mounts(services["envoy"])
    for mounts in (processor, envoy):
        assert mounts[CONFIG_PATH] == "./gateway.compose.yaml"
        assert mounts[socket_dir] == "socket", "the socket directory is the volume both containers share"
    assert processor[str(s.recording.directory)] in _compose()["volumes"]
    assert processor[POLICY_DIR] == "./k8s/base/policies"
    assert "/tmp" in services["envoy"]["tmpfs"], "the entrypoint writes the bootstrap to /tmp on a read-only root"
    assert services["processor"]["healthcheck"]["test"][-1] == s.processor.address
    assert services["envoy"]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{s.admin.port}/ready"
    assert services["envoy"]["ports"] == [f"127.0.0.1:{s.listen.port}:{s.listen.port}"]
    for server in s.servers:
        host, port = split_hostport(server.upstream)
        assert host in services and str(port) in services[host]["command"], f"upstream {server.upstream}"
    for name, svc in services.items():
        if name in GATEWAY_SERVICES - {"client"}:
            assert svc["command"][0] in _image_commands(), f"{name}: {svc['command'][0]} is not in the image"


def test_compose_quick_start_identity_keys_and_client_fit_together() -> None:
    """What `up`, the token command and `run --rm client` rely on, checked without a Docker engine."""
    services = _compose()["services"]
    s = settings.load(COMPOSE_CONFIG)
    assert s.auth is not None and s.policy is not None
    issuer = s.auth.issuers[0].issuer
    dev = services["dev-issuer"]
    command = dev["command"]
    assert f"http://{command[command.index('--host') + 1]}:{command[command.index('--port') + 1]}" == issuer
    assert dev["network_mode"] == "service:processor", "the processor reaches the issuer on its own loopback"
    keys_dir = command[command.index("--key-dir") + 1]
    client = services["client"]
    script = client["command"][0]
    assert f"--key-dir {keys_dir}" in script and f"--issuer {issuer}" in script
    assert f"--aud {s.auth.public_url}" in script, "the token's audience is the gateway's public URL"
    assert f"http://envoy:{s.listen.port}/{s.servers[0].name}/mcp" in script
    assert _compose_mounts(client)[keys_dir] == _compose_mounts(dev)[keys_dir] == "issuer"
    assert s.auth.public_url == f"http://localhost:{s.listen.port}"
    # The keys service writes what the config reads, on the volume the processor mounts there.
    key_dir = str(PurePosixPath(str(s.recording.signing_key)).parent)
    assert PurePosixPath(s.auth.session_secret_file or "").parent == PurePosixPath(key_dir)
    assert _compose_mounts(services["processor"])[key_dir] == _compose_mounts(services["keys"])[key_dir] == "keys"
    assert "generate_keys(keys)" in services["keys"]["command"][-1] and "session.key" in services["keys"]["command"][-1]
    assert services["processor"]["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    # The s3 option: the bucket the config names is the one minio-bucket creates, with Object Lock.
    s3 = settings.load(COMPOSE_S3_CONFIG).recording.s3
    assert s3 is not None and s3.object_lock is not None
    assert f'Bucket="{s3.bucket}", ObjectLockEnabledForBucket=True' in services["minio-bucket"]["command"][-1]
    assert s3.endpoint_url == "http://minio:9000"


def test_compose_config_accepted_by_docker_compose() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (v2) is not installed")
    out = subprocess.run(
        [exe, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


# --- kubernetes ------------------------------------------------------------------------------------------------
# Rendered with `kubectl kustomize` per overlay, validated against the pinned Kubernetes schemas, then checked
# against the code: `_problems` names every volume, port, key or file the gateway expects and the pod lacks.

KEY_FILES = {"signing.key", "session.key"}  # the keys volume's files (Secret mcp-extproc-keys, deploy/README.md)


def _config_of(overlay: str) -> settings.Settings:
    return settings.load(OVERLAYS[overlay] / "gateway.yaml")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_validates_against_pinned_schemas(overlay: str) -> None:
    import kubernetes_validate

    objects = _rendered(overlay)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"mcp-extproc"}


def _kustomization_files(folder: Path) -> Iterator[Path]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for res in k.get("resources", []):
        yield folder / res
    for patch in k.get("patches", []):
        if "path" in patch:
            yield folder / patch["path"]
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        yield from (folder / f for f in gen.get("files", []))


@pytest.mark.parametrize("folder", [K8S_BASE, *OVERLAYS.values()], ids=["base", *sorted(OVERLAYS)])
def test_kustomizations_reference_files_that_exist(folder: Path) -> None:
    for path in _kustomization_files(folder):
        assert path.exists(), f"{folder.name}/kustomization.yaml names {path}, which does not exist"
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for gen in k.get("configMapGenerator", []):
        if gen["name"] == "mcp-extproc-policies":
            listed = {folder / f for f in gen["files"]}
            policy_dir = next(iter(listed)).parent
            assert listed == set(policy_files(policy_dir)), "every policy file must be listed in the ConfigMap"
            assert gen["options"]["disableNameSuffixHash"] is True, "a renamed ConfigMap would roll pods, not reload"


def _problems(objects: tuple[dict[str, Any], ...], s: settings.Settings) -> list[str]:
    """What the gateway of ``s`` needs from these objects and does not get (empty: all there)."""
    out: list[str] = []
    deploy = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mcp-extproc")
    pod = deploy["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    processor, envoy = containers.get("processor"), containers.get("envoy")
    if processor is None or envoy is None:
        return ["the pod needs a processor and an envoy container"]
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for c in (processor, envoy):
        m = _mount_at(c, CONFIG_PATH)
        if not m or m.get("subPath") != "gateway.yaml" or volumes[m["name"]]["configMap"]["name"] not in config_maps:
            out.append(f"{c['name']}: gateway.yaml not mounted at {CONFIG_PATH} from a rendered ConfigMap")
    for path in _absolute_paths(s.model_dump()):
        m = _mount_at(processor, path)
        if m is None or m["name"] not in volumes:
            out.append(f"processor: nothing mounted at {path}")
    socket_dir = str(PurePosixPath(s.processor.unix_path or "").parent)
    shared = {(_mount_at(c, socket_dir) or {}).get("name") for c in (processor, envoy)}
    if len(shared) != 1 or "emptyDir" not in volumes.get(next(iter(shared)) or "", {}):
        out.append(f"the socket directory {socket_dir} is not one emptyDir shared by both containers")
    policies = _mount_at(processor, POLICY_DIR)
    if not policies or "subPath" in policies or "configMap" not in volumes.get(policies["name"], {}):
        out.append("policies must be a whole ConfigMap directory mount (subPath never sees updates)")
    keys = {str(p) for p in (s.recording.signing_key, s.auth and s.auth.session_secret_file) if p}
    for key in keys:
        m = _mount_at(processor, key)
        if PurePosixPath(key).name not in KEY_FILES or m is None:
            out.append(f"key {key}: not a file of the keys volume ({sorted(KEY_FILES)})")
        elif (secret := volumes[m["name"]].get("secret")) and secret["secretName"] != "mcp-extproc-keys":
            out.append(f"key {key}: from Secret {secret['secretName']}, not mcp-extproc-keys")
    ports = {p["name"]: p["containerPort"] for c in containers.values() for p in c.get("ports", [])}
    expected = {"mcp": s.listen.port, "metrics": s.processor.metrics_port, "envoy-stats": s.admin.stats_port}
    for name, port in expected.items():
        if ports.get(name) != port:
            out.append(f"port {name}: the pod says {ports.get(name)}, gateway.yaml {port}")
    if s.admin.port in ports.values():
        out.append("Envoy's admin port must stay on loopback")
    ready = processor.get("readinessProbe", {}).get("httpGet", {})
    if ready.get("path") != "/ready" or ready.get("port") != "metrics":
        out.append("processor readiness must be /ready on the metrics port")
    for probe in ("startupProbe", "livenessProbe"):
        if processor.get(probe, {}).get("exec", {}).get("command") != [
            "mcp-extproc-healthcheck", "grpc", s.processor.address,
        ]:  # fmt: skip
            out.append(f"processor {probe} must be the gRPC health check on {s.processor.address}")
    pre_stop = envoy.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if pre_stop[:3] != ["mcp-extproc-healthcheck", "drain", f"http://127.0.0.1:{s.admin.port}"]:
        out.append("Envoy's preStop must drain its listeners through the admin port")
    elif pod.get("terminationGracePeriodSeconds", 30) < float(pre_stop[pre_stop.index("--wait") + 1]) + 30:
        out.append("terminationGracePeriodSeconds must cover Envoy's drain and the processor's 30 s flush")
    for svc in (o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "mcp-extproc"):
        if [p["targetPort"] for p in svc["spec"]["ports"]] != ["mcp"]:
            out.append("Service mcp-extproc must target Envoy's mcp port")
    return out


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pod_provides_every_volume_port_key_and_file_the_config_needs(overlay: str) -> None:
    assert _problems(_rendered(overlay), _config_of(overlay)) == []


def _without(objects: tuple[dict[str, Any], ...], edit: Any) -> tuple[dict[str, Any], ...]:
    import copy

    objects = copy.deepcopy(objects)
    pod = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mcp-extproc")
    edit(pod["spec"]["template"]["spec"])
    return objects


def _processor(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["initContainers"] if c["name"] == "processor")


def _envoy(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == "envoy")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        pytest.param(
            lambda p: _processor(p).update(
                volumeMounts=[m for m in _processor(p)["volumeMounts"] if m["name"] != "keys"]
            ),
            "key /etc/mcp-extproc/keys/signing.key",
            id="keys-mount",
        ),
        pytest.param(
            lambda p: _processor(p).update(
                volumeMounts=[m for m in _processor(p)["volumeMounts"] if m["name"] != "spool"]
            ),
            "nothing mounted at /var/lib/mcp-extproc/spool",
            id="spool-mount",
        ),
        pytest.param(lambda p: _processor(p).update(ports=[]), "port metrics", id="metrics-port"),
        pytest.param(
            lambda p: _envoy(p)["ports"].__setitem__(1, {"name": "envoy-stats", "containerPort": 1}),
            "port envoy-stats",
            id="stats-port",
        ),
        pytest.param(
            lambda p: _envoy(p).update(volumeMounts=[m for m in _envoy(p)["volumeMounts"] if m["name"] != "socket"]),
            "socket directory",
            id="socket",
        ),
        pytest.param(lambda p: p.update(terminationGracePeriodSeconds=20), "terminationGracePeriodSeconds", id="grace"),
        pytest.param(lambda p: _processor(p).pop("readinessProbe"), "readiness", id="readiness"),
    ],
)
def test_a_missing_piece_is_named(edit: Any, named: str) -> None:
    problems = _problems(_without(_rendered("eks"), edit), _config_of("eks"))
    assert any(named in p for p in problems), problems


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_container_is_locked_down(overlay: str) -> None:
    pod = _pod(overlay)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _image_uid()
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname",
    }  # fmt: skip
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
        assert c["command"][0] in _image_commands(), f"{c['name']}: {c['command'][0]} is not in the image"
        assert ":" in c["image"], f"{c['name']}: image without a tag"
    processor = _container("processor", overlay)
    assert processor in pod["initContainers"] and processor["restartPolicy"] == "Always"  # native sidecar


def test_dev_overlay_makes_its_own_keys_and_issuer() -> None:
    pod = _pod("dev")
    assert pod["initContainers"][0]["name"] == "dev-keys", "keys exist before the processor starts"
    script = pod["initContainers"][0]["command"][-1]
    assert 'generate_keys(Path("/etc/mcp-extproc/keys"))' in script and "/etc/mcp-extproc/keys/session.key" in script
    with tempfile.TemporaryDirectory() as tmp:  # generate_keys names the private key as the keys volume expects
        from extproc.recording.manifest import generate_keys

        assert generate_keys(Path(tmp))[0].name == "signing.key"
    assert {v["name"]: v for v in pod["volumes"]}["keys"].keys() == {"name", "emptyDir"}
    issuer = _config_of("dev").auth.issuers[0].issuer  # type: ignore[union-attr]
    command = _container("dev-issuer", "dev")["command"]
    assert f"http://{command[command.index('--host') + 1]}:{command[command.index('--port') + 1]}" == issuer
    kinds = {o["kind"] for o in _rendered("dev")}
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds, "one replica, file store"
    for server in _config_of("dev").servers:  # the demo upstream is the demo-mcp Service shipped alongside
        host, port = split_hostport(server.upstream)
        svc = _one("Service", host, "dev")
        assert port in [p["port"] for p in svc["spec"]["ports"]]
        backend = next(o for o in _rendered("dev") if o["kind"] == "Deployment" and o["metadata"]["name"] == host)
        assert backend["spec"]["template"]["metadata"]["labels"]["mcp-extproc.io/server"] == "true"


def test_eks_scales_with_a_budget_and_keys_from_the_secret() -> None:
    deploy = _one("Deployment", "mcp-extproc", "eks")
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    pdb = _one("PodDisruptionBudget", "mcp-extproc", "eks")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one("HorizontalPodAutoscaler", "mcp-extproc", "eks")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mcp-extproc"}
    assert hpa["minReplicas"] >= 2
    keys = {v["name"]: v for v in _pod("eks")["volumes"]}["keys"]
    assert keys["secret"]["secretName"] == "mcp-extproc-keys" and keys["secret"]["defaultMode"] == 0o440


def test_eks_front_door_identity_and_bucket_lifecycle() -> None:
    s = _config_of("eks")
    sa = _one("ServiceAccount", "mcp-extproc", "eks")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    ing = _one("Ingress", "mcp-extproc", "eks")
    notes = ing["metadata"]["annotations"]
    assert notes["alb.ingress.kubernetes.io/healthcheck-port"] == str(s.processor.metrics_port)
    assert notes["alb.ingress.kubernetes.io/healthcheck-path"] == "/ready"
    assert "HTTPS" in notes["alb.ingress.kubernetes.io/listen-ports"]
    host = s.auth.public_url.removeprefix("https://")  # type: ignore[union-attr]
    assert ing["spec"]["tls"][0]["hosts"] == [host] and ing["spec"]["rules"][0]["host"] == host
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["port"]["name"] in [p["name"] for p in _one("Service", backend["name"], "eks")["spec"]["ports"]]
    rules = json.loads((OVERLAYS["eks"] / "s3-lifecycle.json").read_text())["Rules"]
    main = next(r for r in rules if r["Filter"]["Prefix"] == f"{s.recording.s3.prefix}/")  # type: ignore[union-attr]
    lock_days = s.recording.s3.object_lock.retain_days  # type: ignore[union-attr]
    assert main["Expiration"]["Days"] > lock_days, "objects expire only after their Object Lock retention"
    assert main["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_force_traffic_through_the_gateway(overlay: str) -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in _rendered(overlay) if o["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    gateway = {"app.kubernetes.io/name": "mcp-extproc"}
    servers = policies["mcp-servers-from-gateway-only"]
    assert servers["podSelector"]["matchLabels"] == {"mcp-extproc.io/server": "true"}
    assert [f["podSelector"]["matchLabels"] for r in servers["ingress"] for f in r["from"]] == [gateway]
    egress = policies["mcp-extproc-egress"]["egress"]
    ports = {(p["port"], p["protocol"]) for rule in egress for p in rule.get("ports", [])}
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    assert any(t.get("podSelector", {}).get("matchLabels") == servers["podSelector"]["matchLabels"]
               for rule in egress for t in rule["to"])  # fmt: skip
    blocked = next(t["ipBlock"]["except"] for rule in egress for t in rule["to"] if "ipBlock" in t)
    assert "169.254.0.0/16" in blocked, "no node credentials through the metadata service"
    named = {
        p["name"] for c in _pod(overlay)["initContainers"] + _pod(overlay)["containers"] for p in c.get("ports", [])
    }
    for spec in policies.values():
        for rule in spec.get("ingress", []):
            for p in rule.get("ports", []):
                assert not isinstance(p["port"], str) or p["port"] in named, f"no container port {p['port']}"

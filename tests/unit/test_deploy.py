"""deploy/: the image, Compose and Kubernetes files agree with the code and with each other. No Docker needed.

What cannot run here (building the image, starting containers, applying to a cluster) is checked by reading:
every path, port, command and socket the manifests name must be one the config, the Dockerfile or the package
actually provides.
"""

from __future__ import annotations

import importlib.util
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
from extproc.launcher import can_connect, envoy_binary, wait_until
from extproc.policy.loader import load_policy, policy_files

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_CONFIG = DEPLOY / "gateway.compose.yaml"
K8S_CONFIG = K8S / "gateway.yaml"
CONFIG_PATH = "/etc/mcp-extproc/gateway.yaml"  # where both containers find gateway.yaml
POLICY_DIR = "/etc/mcp-extproc/policies"
BIN = Path(sys.executable).parent  # the venv's bin: mcp-extproc and python, as on the image's PATH

GATEWAY_CONFIGS = [pytest.param(COMPOSE_CONFIG, id="compose"), pytest.param(K8S_CONFIG, id="k8s")]
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for res in kustomization["resources"] for doc in _docs(K8S / res)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod() -> dict[str, Any]:
    return _one("Deployment", "mcp-extproc")["spec"]["template"]["spec"]


def _container(name: str) -> dict[str, Any]:
    pod = _pod()
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


def test_only_the_local_stack_runs_without_authentication() -> None:
    assert settings.load(COMPOSE_CONFIG).allow_anonymous  # published on 127.0.0.1 only (test_compose_wires_...)
    k8s = settings.load(K8S_CONFIG)
    assert k8s.auth is not None and not k8s.allow_anonymous
    assert k8s.auth.public_url.startswith("https://")


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


def test_policies_load_for_the_configured_servers() -> None:
    known = {srv.name for srv in settings.load(K8S_CONFIG).servers}
    load_policy(K8S / "policies", known_servers=known)
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
    return set(scripts) | copied | {"python", "sleep"}


def test_dockerfile_default_command_serves_the_mounted_config() -> None:
    cmd = next(line for line in _dockerfile() if line.startswith("CMD "))
    assert yaml.safe_load(cmd[4:]) == ["mcp-extproc", "serve", "--config", CONFIG_PATH]


def test_dockerfile_creates_the_writable_directories() -> None:
    """Compose copies an image directory's owner into an empty named volume: these must belong to the user."""
    install = " ".join(line for line in _dockerfile() if "install -d -o" in line)
    s = settings.load(COMPOSE_CONFIG)
    for path in (str(PurePosixPath(s.processor.unix_path or "").parent), str(s.recording.directory)):
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
    doc["recording"]["directory"] = str(tmp_path / "recordings")
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


# --- compose ---------------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_compose_references_files_that_exist() -> None:
    services = _compose()["services"]
    assert set(services) == {"processor", "envoy", "demo-mcp"}
    build = services["processor"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for name, svc in services.items():
        assert svc["image"] == services["processor"]["image"], f"{name} runs the one image"
        for target, source in _compose_mounts(svc).items():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_compose_wires_gateway_config() -> None:
    services = _compose()["services"]
    s = settings.load(COMPOSE_CONFIG)
    socket_dir = str(PurePosixPath(s.processor.unix_path or "").parent)
    processor, envoy = _compose_mounts(services["processor"]), _compose_mounts(services["envoy"])
    for mounts in (processor, envoy):
        assert mounts[CONFIG_PATH] == "./gateway.compose.yaml"
        assert mounts[socket_dir] == "socket", "the socket directory is the volume both containers share"
    assert processor[str(s.recording.directory)] in _compose()["volumes"]
    assert processor[POLICY_DIR] == "./k8s/policies"
    assert "/tmp" in services["envoy"]["tmpfs"], "the entrypoint writes the bootstrap to /tmp on a read-only root"
    for name in ("processor", "envoy"):
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
    assert services["processor"]["healthcheck"]["test"][-1] == s.processor.address
    assert services["envoy"]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{s.admin.port}/ready"
    assert services["envoy"]["ports"] == [f"127.0.0.1:{s.listen.port}:{s.listen.port}"]
    for server in s.servers:
        host, port = settings.split_hostport(server.upstream)
        assert host in services and str(port) in services[host]["command"], f"upstream {server.upstream}"
    for name, svc in services.items():
        assert svc["command"][0] in _image_commands(), f"{name}: {svc['command'][0]} is not in the image"


def test_compose_config_accepted_by_docker_compose() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (v2) is not installed")
    out = subprocess.run(
        [exe, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


# --- kubernetes ------------------------------------------------------------------------------------------------


def test_kustomization_references_files_that_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kustomization["resources"]:
        assert (K8S / res).is_file(), res
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    assert generated["mcp-extproc-config"] == ["gateway.yaml"]
    listed = {K8S / f for f in generated["mcp-extproc-policies"]}
    assert listed == set(policy_files(K8S / "policies")), "every policy file must be listed in the ConfigMap"
    policies = next(g for g in kustomization["configMapGenerator"] if g["name"] == "mcp-extproc-policies")
    assert policies["options"]["disableNameSuffixHash"] is True, "a renamed ConfigMap would roll pods, not reload"


def test_deployment_mounts_what_the_config_references() -> None:
    s = settings.load(K8S_CONFIG)
    pod = _pod()
    volumes = {v["name"]: v for v in pod["volumes"]}
    processor, envoy = _container("processor"), _container("envoy")

    socket_dir = str(PurePosixPath(s.processor.unix_path or "").parent)
    shared = {c["name"]: (_mount_at(c, socket_dir) or {}).get("name") for c in (processor, envoy)}
    assert shared["processor"] and shared["processor"] == shared["envoy"], f"socket dir mounts: {shared}"
    assert "emptyDir" in volumes[shared["processor"]]

    for c in (processor, envoy):
        m = _mount_at(c, CONFIG_PATH)
        assert m and m["mountPath"] == CONFIG_PATH and m["subPath"] == "gateway.yaml", c["name"]
        assert volumes[m["name"]]["configMap"]["name"] == "mcp-extproc-config"
    assert processor["command"] == ["mcp-extproc", "serve", "--config", CONFIG_PATH]
    assert envoy["command"] == ["envoy-entrypoint"] and not any(
        e["name"] in ("MCP_EXTPROC_CONFIG", "ENVOY_BOOTSTRAP") for e in envoy.get("env", [])
    ), "the entrypoint's defaults are the paths mounted here"

    for path in _absolute_paths(s.model_dump()):  # any path a future key adds is checked too
        assert _mount_at(processor, path), f"the processor does not mount {path}"
    policies = _mount_at(processor, POLICY_DIR)
    assert policies and "subPath" not in policies, "subPath mounts never see ConfigMap updates"
    assert volumes[policies["name"]]["configMap"]["name"] == "mcp-extproc-policies"
    assert _mount_at(envoy, "/tmp/envoy.yaml"), "the entrypoint writes the bootstrap to /tmp"


def test_deployment_is_locked_down() -> None:
    pod = _pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _image_uid()
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
        assert c["command"][0] in _image_commands(), f"{c['name']}: {c['command'][0]} is not in the image"
    assert {c["name"] for c in pod["containers"] + pod["initContainers"]} == {"envoy", "processor"}


def test_probes_match_the_config() -> None:
    s = settings.load(K8S_CONFIG)
    processor, envoy = _container("processor"), _container("envoy")
    # Native sidecar: started (and startup-probed) before Envoy, stopped after it.
    assert processor in _pod()["initContainers"] and processor["restartPolicy"] == "Always"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert processor[probe]["exec"]["command"] == ["mcp-extproc-healthcheck", "grpc", s.processor.address]
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports[envoy["readinessProbe"]["tcpSocket"]["port"]] == s.listen.port
    assert s.admin.port not in ports.values(), "Envoy's admin port stays on loopback"


def test_services_reach_the_right_ports() -> None:
    s = settings.load(K8S_CONFIG)
    pod_labels = _one("Deployment", "mcp-extproc")["spec"]["template"]["metadata"]["labels"]
    svc = _one("Service", "mcp-extproc")["spec"]
    assert svc["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in _container("envoy")["ports"]}
    assert [ports[p["targetPort"]] for p in svc["ports"]] == [s.listen.port]
    for server in s.servers:  # the demo upstream is the demo-mcp Service shipped alongside
        host, port = settings.split_hostport(server.upstream)
        assert port in [p["port"] for p in _one("Service", host)["spec"]["ports"]]


def test_service_account_leaves_irsa_placeholder() -> None:
    text = (K8S / "serviceaccount.yaml").read_text()
    assert "eks.amazonaws.com/role-arn" in text
    assert _one("ServiceAccount", "mcp-extproc")["automountServiceAccountToken"] is False


def test_kustomize_build() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    objects = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"mcp-extproc"}
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mcp-extproc")
    referenced = {v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert referenced <= config_maps and "mcp-extproc-policies" in referenced

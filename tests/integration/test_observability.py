"""deploy/observability: the alert rules are valid Prometheus rules (promtool), and every metric the rules and
the Grafana dashboard name is exported by a running gateway (the processor's /metrics or Envoy's stats listener),
with the label values their selectors use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from otlp_receiver import OtlpReceiver

from extproc.demo.mcp_client import connect
from extproc.launcher import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
METRIC = re.compile(r"\b((?:mcp_extproc|envoy)_[a-z0-9_]+)\b(?!\s*[=!]~?)(\{[^}]*\})?")  # not a label name
POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list]}
"""


def _expressions() -> list[str]:
    rules = yaml.safe_load((OBS / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample names exactly as Prometheus stores them (a client parser would add `_total` to Envoy's counters)."""
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s", line)
            assert m, line
            out.setdefault(m[1], []).append(dict(re.findall(r'(\w+)="([^"]*)"', m[2] or "")))
    return out


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_alert_rules_pass_promtool() -> None:
    run = subprocess.run(["promtool", "check", "rules", str(OBS / "alerts.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_alert_rules_fire_as_their_unit_tests_say() -> None:
    """alerts.test.yaml: recording unavailable, SIEM export dropping and failing, trace export errors."""
    run = subprocess.run(["promtool", "test", "rules", "alerts.test.yaml"], capture_output=True, text=True, cwd=OBS)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_summary_and_severity() -> None:
    rules = yaml.safe_load((OBS / "alerts.yaml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"], r["alert"]
    for topic in ("NotDurable", "SpoolGrowing", "UploadFailures", "JwksFetchFailures", "5xx", "PolicyReloadFailed"):
        assert any(topic in n for n in names), topic


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


async def test_dashboard_and_alerts_name_only_exported_metrics(
    start_mcp_server, start_authed, issuer, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    metrics_port, stats_port = free_port(), free_port()
    # With export and tracing on: their series exist only then.
    gw = start_authed(
        [start_mcp_server("demo")],
        policy=POLICY,
        gateway={
            "processor": {"metrics_port": metrics_port},
            "admin": {"stats_port": stats_port},
            "export": {"file": {"path": str(tmp_path / "ocsf.jsonl")}},
            "telemetry": {"endpoint": otlp.endpoint},
        },
    )
    async with connect(gw.url(), token=issuer.mint("alice", aud=gw.endpoint)) as conn:
        await conn.client.list_tools()
    assert httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 401  # a refusal
    processor = f"http://127.0.0.1:{metrics_port}/metrics"
    wait_until(lambda: "mcp_extproc_recording_upload_seconds_count 0.0" not in httpx.get(processor).text, 20, "upload")
    exported = _samples(httpx.get(processor, timeout=5).text)
    envoy = httpx.get(f"http://127.0.0.1:{stats_port}/stats/prometheus", timeout=5)
    assert envoy.status_code == 200
    exported.update(_samples(envoy.text))
    # The stats listener exposes nothing else of the admin interface.
    assert httpx.get(f"http://127.0.0.1:{stats_port}/config_dump", timeout=5).status_code == 404
    assert httpx.post(f"http://127.0.0.1:{stats_port}/quitquitquit", timeout=5).status_code == 404

    missing = []
    for expr in _expressions():
        expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # label names, not metrics
        for name, selector in METRIC.findall(expr):
            if name not in exported:
                missing.append(name)
                continue
            for label, value in re.findall(r'(\w+)="([^"$]*)"', selector):  # literal equality matchers only
                if not any(s.get(label) == value for s in exported[name]):
                    missing.append(f'{name}{{{label}="{value}"}}')
    assert not missing, f"named in deploy/observability but not exported: {sorted(set(missing))}"

"""envoy/envoy.example.yaml is what the renderer produces for the example gateway.yaml, and Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from extproc import settings
from extproc.envoy.bootstrap import render
from extproc.envoy.process import envoy_binary

ROOT = Path(__file__).resolve().parents[3]


def test_example_matches_renderer() -> None:
    example = yaml.safe_load((ROOT / "envoy" / "envoy.example.yaml").read_text())
    assert example == render(settings.load(ROOT / "gateway.yaml")), "re-render: mcp-extproc envoy-config -o ..."


def test_envoy_validates_example() -> None:
    out = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(ROOT / "envoy" / "envoy.example.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK" in out.stdout + out.stderr

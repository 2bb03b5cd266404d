"""Policy benchmark: load/compile time and decisions per second of a 1,000-rule policy, on this machine.

The policy is generated with a fixed seed: 10 files of 100 rules over 20 servers, 300 users, 60 groups and 400
tool names; a mix of exact tools, tool globs, method globs, '*' servers, claim conditions, argument conditions
and about 12 % deny rules. The request mix (also seeded) is 80 % tools/call (listed tools, glob-matched tools,
unknown tools), plus tools/list, initialize, resources/read and prompts/get, from callers with 0-4 groups.

    python bench/policy_bench.py [--rules 1000] [--seconds 3] [--out bench/results/policy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from extproc.authn.principal import Principal
from extproc.mcp.jsonrpc import McpCall
from extproc.policy import decide, filter_list, load_policy
from extproc.policy.compiler import LoadedFile, compile_policy
from extproc.policy.loader import parse_yaml, policy_files, validate
from extproc.policy.model import PolicyFile

SERVERS = [f"srv-{i:02d}" for i in range(20)]
USERS = [f"user{i}" for i in range(300)]
GROUPS = [f"group{i}" for i in range(60)]
VERBS = ["get", "list", "search", "create", "update", "delete", "run", "sync"]
NOUNS = ["repo", "issue", "file", "branch", "ticket", "page", "job", "user", "secret", "report"]
TOOLS = [f"{v}_{n}_{i}" for v in VERBS for n in NOUNS for i in range(5)]  # 400 names


def generate(n_rules: int, rng: random.Random) -> list[dict[str, Any]]:
    """Rule documents for one policy of ``n_rules`` rules (without files)."""
    rules: list[dict[str, Any]] = [
        {
            "name": "basics",
            "effect": "allow",
            "subjects": {"users": ["*"]},
            "targets": {"servers": ["*"], "methods": ["initialize", "ping", "notifications/*", "tools/list"]},
        }
    ]
    while len(rules) < n_rules:
        i = len(rules)
        deny = rng.random() < 0.12
        subjects: dict[str, Any] = {}
        r = rng.random()
        if r < 0.35:
            subjects["users"] = rng.sample(USERS, rng.randint(1, 5))
        elif r < 0.85:
            subjects["groups"] = rng.sample(GROUPS, rng.randint(1, 3))
        else:
            subjects["groups"] = rng.sample(GROUPS, 1)
            subjects["claims"] = [{"claim": "tenant", "values": [f"t{rng.randint(0, 9)}"]}]
        targets: dict[str, Any] = {"servers": ["*"] if rng.random() < 0.05 else rng.sample(SERVERS, rng.randint(1, 2))}
        rule: dict[str, Any] = {"name": f"rule-{i:04d}", "effect": "deny" if deny else "allow"}
        kind = rng.random()
        if kind < 0.55:
            targets["tools"] = rng.sample(TOOLS, rng.randint(1, 4))
        elif kind < 0.80:
            targets["tools"] = [f"{rng.choice(VERBS)}_*"] + ([f"*_{rng.choice(NOUNS)}_*"] if rng.random() < 0.3 else [])
        elif kind < 0.90:
            targets["resources"] = [f"res://{rng.choice(NOUNS)}/**"]
        elif kind < 0.95:
            targets["prompts"] = [f"{rng.choice(NOUNS)}*"]
        else:
            targets["methods"] = [rng.choice(["tools/*", "resources/*", "prompts/*"])]
        if "tools" in targets and rng.random() < 0.2:
            rule["arguments"] = {"limit": {"min": 1, "max": 100, "optional": True}, "owner": {"pattern": "[a-z-]+"}}
        rule["subjects"] = subjects
        rule["targets"] = targets
        rules.append(rule)
    return rules


def principal(rng: random.Random) -> Principal:
    groups = tuple(rng.sample(GROUPS, rng.randint(0, 4)))
    user = rng.choice(USERS)
    return Principal("bench", user, user, groups, claims={"tenant": f"t{rng.randint(0, 9)}"})


def call(rng: random.Random) -> McpCall:
    r = rng.random()
    if r < 0.80:
        name = rng.choice(TOOLS) if rng.random() < 0.9 else f"unknown_tool_{rng.randint(0, 99)}"
        return McpCall("tools/call", 1, tool=name, arguments={"owner": "acme", "limit": rng.randint(1, 150)})
    if r < 0.88:
        return McpCall("tools/list", 1)
    if r < 0.92:
        return McpCall("initialize", 1)
    if r < 0.97:
        return McpCall("resources/read", 1, uri=f"res://{rng.choice(NOUNS)}/a/b.txt")
    return McpCall("prompts/get", 1, prompt=f"{rng.choice(NOUNS)}-summary")


def timed(fn: Any, repeat: int) -> float:
    """Median wall time of ``fn()`` in ms."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "policy.json")
    args = ap.parse_args()

    rng = random.Random(20261124)
    rules = generate(args.rules, rng)
    per_file = -(-len(rules) // args.files)
    with tempfile.TemporaryDirectory() as tmp:
        for f in range(args.files):
            chunk = rules[f * per_file : (f + 1) * per_file]
            doc = {"apiVersion": "mcp-extproc/v1", "rules": chunk}
            (Path(tmp) / f"policy-{f:02d}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        known = set(SERVERS)
        load_ms = timed(lambda: load_policy(tmp, known), 5)
        loaded = []
        for p in policy_files(tmp):
            doc, lines = parse_yaml(p.read_bytes(), str(p))
            loaded.append(LoadedFile(str(p), validate(PolicyFile, doc, str(p), lines), lines))
        compile_ms = timed(lambda: compile_policy(loaded, known), 5)
        policy = load_policy(tmp, known)

    requests = [(principal(rng), rng.choice(SERVERS), call(rng)) for _ in range(20_000)]
    for who, server, c in requests[:2000]:  # warm-up
        decide(policy, who, server, c)

    n = 0
    allowed = 0
    considered = 0
    t0 = time.perf_counter()
    deadline = t0 + args.seconds
    while time.perf_counter() < deadline:
        for who, server, c in requests:
            d = decide(policy, who, server, c)
            allowed += d.allowed
            considered += len(d.considered)
        n += len(requests)
    elapsed = time.perf_counter() - t0
    per_second = n / elapsed

    listing = {"tools": [{"name": t} for t in rng.sample(TOOLS, 50)]}
    who0, server0, _ = requests[0]
    list_ms = timed(lambda: filter_list(policy, who0, server0, "tools/list", listing), 200)

    result = {
        "benchmark": "policy",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rules": len(policy.rules),
        "files": args.files,
        "servers": len(SERVERS),
        "index_buckets": len(policy.index),
        "load_ms": round(load_ms, 1),
        "compile_ms": round(compile_ms, 1),
        "decisions": n,
        "seconds": round(elapsed, 2),
        "decisions_per_second": round(per_second),
        "us_per_decision": round(1e6 / per_second, 2),
        "allowed_fraction": round(allowed / n, 3),
        "mean_rules_considered": round(considered / n, 1),
        "filter_tools_list_50_items_ms": round(list_ms, 3),
    }
    print(f"policy: {result['rules']} rules in {args.files} files, {len(SERVERS)} servers")
    print(f"  load (read + parse + validate + compile): {result['load_ms']:>8.1f} ms")
    print(f"  compile only (index build):                {result['compile_ms']:>8.1f} ms")
    print(
        f"  decide: {result['decisions_per_second']:,} decisions/s ({result['us_per_decision']} µs each, "
        f"{result['mean_rules_considered']} rules considered on average, {result['allowed_fraction']:.0%} allowed)"
    )
    print(f"  filter_list (tools/list, 50 tools):        {result['filter_tools_list_50_items_ms']:>8.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {args.out}")


if __name__ == "__main__":
    main()

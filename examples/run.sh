#!/usr/bin/env bash
# `make run`: the demo backend plus the interceptor on the example manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
export KEDA_HTTP_PROXY_PORT="${KEDA_HTTP_PROXY_PORT:-8080}"
export KEDA_HTTP_ADMIN_PORT="${KEDA_HTTP_ADMIN_PORT:-9090}"
export OTEL_PROM_EXPORTER_PORT="${OTEL_PROM_EXPORTER_PORT:-2223}"
BACKEND_PORT=18080   # matches examples/manifests/example.yaml

.venv/bin/python examples/backend.py --port "$BACKEND_PORT" >/dev/null 2>&1 &
backend=$!
trap 'kill $backend 2>/dev/null || true' EXIT INT TERM

P=$KEDA_HTTP_PROXY_PORT A=$KEDA_HTTP_ADMIN_PORT M=$OTEL_PROM_EXPORTER_PORT
cat <<MSG

keda-interceptor is starting on the example manifests (examples/manifests/).
Try, from another terminal:

  curl -i http://127.0.0.1:$P/                         # routed to the demo backend
  curl -i -H 'Host: legacy.local' http://127.0.0.1:$P/  # an HTTPScaledObject route
  curl -N http://127.0.0.1:$P/slow                      # a streamed response
  curl -i http://127.0.0.1:$P/healthz                   # a static route
  curl -s --http2-prior-knowledge http://127.0.0.1:$P/  # the demo route over HTTP/2 (h2c)
  curl -i -H "Host: sleepy.local" http://127.0.0.1:$P/   # scaled to zero: a placeholder page
  curl -i -H 'Host: nowhere.example' http://127.0.0.1:$P/   # 404: no route
  curl -s http://127.0.0.1:$A/queue                     # KEDA's view: pending requests
  curl -s http://127.0.0.1:$M/metrics | grep interceptor_

Edit examples/manifests/*.yaml while it runs: changes apply within a second.
Ctrl-C stops both.

MSG
.venv/bin/twistd -n --pidfile= keda-interceptor --manifests examples/manifests

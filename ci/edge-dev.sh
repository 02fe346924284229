#!/usr/bin/env bash
# Runs the edge locally under `wrangler dev` (workerd from npm: no Cloudflare account, no
# internet), with the state of its Durable Object kept in $EDGE_STATE (default ./edge-state).
# Builds it first unless EDGE_SKIP_BUILD=1. Extra arguments go to wrangler, e.g.
#   ci/edge-dev.sh --port 8787 --var NODE_URLS:http://127.0.0.1:3000,http://127.0.0.1:3001
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

wrangler_dir=$TODO_CACHE/wrangler-$WRANGLER_VERSION
if [ ! -x "$wrangler_dir/node_modules/.bin/wrangler" ]; then
  command -v npm >/dev/null || apt_install npm
  echo "installing wrangler $WRANGLER_VERSION (npm) into $wrangler_dir"
  mkdir -p "$wrangler_dir"
  npm install --silent --no-audit --no-fund --prefix "$wrangler_dir" "wrangler@$WRANGLER_VERSION" >/dev/null
fi
if [ "${1:-}" = --install-only ]; then
  echo "$wrangler_dir/node_modules/.bin/wrangler"
  exit 0
fi
[ "${EDGE_SKIP_BUILD:-}" = 1 ] || ci/build-edge.sh

export WRANGLER_SEND_METRICS=false CI=true
exec "$wrangler_dir/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 \
  --persist-to "${EDGE_STATE:-./edge-state}" "$@"

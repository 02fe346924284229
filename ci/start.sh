#!/usr/bin/env bash
# Builds what is missing and starts the app on embedded defaults: a relay in the background
# (libp2p on TCP/QUIC 4001 and WebSocket 4002, /health and /addrs on http://127.0.0.1:4000,
# its identity in ./relay-data) and a node on http://127.0.0.1:3000 with its data in ./data,
# holding a reservation on that relay. Ctrl-C stops both.
#
# Node settings are env vars (PORT=3001 NODE_NAME=a ci/start.sh) or flags after the command
# (ci/start.sh --port 3001). The relay's are given here with a RELAY_ prefix, so that the two
# never share DATA_DIR or ports: RELAY_DATA_DIR, RELAY_HTTP_PORT, RELAY_TCP_PORT,
# RELAY_WS_PORT, RELAY_LOG; its limits keep their own names (MAX_CIRCUITS=… ci/start.sh).
# With RELAY_ADDRS already set, the node uses those relays and none is started here.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

# Each long step says what it does and how long it takes the first time (2 cores); once built,
# all four take a few seconds.
step "1/4 Debian packages (libclang-dev, curl; a minute if missing)"
apt_install libclang-dev curl
step "2/4 cr-sqlite 0.16.3 (built once from the npm package: about 35 s, after installing its pinned nightly toolchain: about 1 min)"
ci/build-crsqlite.sh >/dev/null
step "3/4 the browser peer (first run: wasm-bindgen-cli about 3 min, binaryen seconds, the wasm build about 2 min)"
ci/build-wasm.sh
step "4/4 todo-node and todo-relay, release build (first run: about 10 min; after a change: about 1 min)"
cargo build --release --locked -p todo-node -p todo-relay

relay_pid=""
node_pid=""
# Whatever ends this script (Ctrl-C, SIGTERM, the node stopping, an error) stops both,
# gracefully: SIGTERM, then wait.
stop_all() {
  for pid in $node_pid $relay_pid; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $node_pid $relay_pid; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${RELAY_ADDRS:-}" ]; then
  relay_http=${RELAY_HTTP_PORT:-4000}
  relay_tcp=${RELAY_TCP_PORT:-4001}
  relay_ws=${RELAY_WS_PORT:-4002}
  DATA_DIR="${RELAY_DATA_DIR:-./relay-data}" \
    HOST=127.0.0.1 HTTP_PORT="$relay_http" LOG="${RELAY_LOG:-info}" \
    P2P_LISTEN="/ip4/0.0.0.0/tcp/$relay_tcp,/ip4/0.0.0.0/udp/$relay_tcp/quic-v1,/ip4/0.0.0.0/tcp/$relay_ws/ws" \
    "$CARGO_TARGET_DIR/release/todo-relay" &
  relay_pid=$!

  relay_id=""
  for _ in $(seq 100); do
    kill -0 "$relay_pid" 2>/dev/null || { echo "the relay did not start" >&2; exit 1; }
    relay_id=$(curl -sf "http://127.0.0.1:$relay_http/health" |
      sed -n 's/.*"peer_id":"\([^"]*\)".*/\1/p') || true
    [ -n "$relay_id" ] && break
    sleep 0.1
  done
  [ -n "$relay_id" ] || { echo "the relay did not answer on port $relay_http" >&2; exit 1; }
  export RELAY_ADDRS="/ip4/127.0.0.1/tcp/$relay_tcp/p2p/$relay_id"
  echo "relay $relay_id: addresses at http://127.0.0.1:$relay_http/addrs"
fi

step "starting todo-node"
"$CARGO_TARGET_DIR/release/todo-node" "$@" &
node_pid=$!
node_url="http://${HOST:-127.0.0.1}:${PORT:-3000}"
[ "${HOST:-}" = 0.0.0.0 ] && node_url="http://127.0.0.1:${PORT:-3000}"
for _ in $(seq 100); do
  kill -0 "$node_pid" 2>/dev/null || break
  curl -sf "$node_url/health" >/dev/null && {
    printf '\nThe app is up (%d s since this script started):\n' "$SECONDS"
    printf '  open      %s/\n' "$node_url"
    printf '  node      %s/health   %s/api/peers\n' "$node_url" "$node_url"
    [ -n "$relay_pid" ] && printf '  relay     http://127.0.0.1:%s/health   http://127.0.0.1:%s/addrs\n' "$relay_http" "$relay_http"
    printf '  data      %s   (Ctrl-C stops everything)\n\n' "${DATA_DIR:-./data}"
    break
  }
  sleep 0.1
done
set +e
wait "$node_pid"
status=$?
node_pid=""
exit "$status"

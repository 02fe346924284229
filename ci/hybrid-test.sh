#!/usr/bin/env bash
# The deployment of docker-compose.hybrid.yml, exercised without a Docker engine: the same
# services (relay, node-a, node-b), each in its own network namespace with the address the
# compose file gives it on a bridge for todo-network (172.20.0.0/16), run from the release
# binaries the Docker image ships, with the environment read from the compose file itself (so
# the two cannot drift apart). Data folders stand in for the volumes; the host port mappings
# (3001/3002 -> 3000) are Docker's and not reproduced: the checks talk to each service's own
# address and container port.
#
# Checks, in order, each reported on one line: build; the compose file validates; start all
# three; health; reservations on the relay; mDNS discovery; SSR of / on both; PWA assets; a todo added on A reaches B; A
# killed: B serves and takes writes; A restarted: it catches up; a partition with writes on both
# sides, healed: both converge. Everything started is stopped, and every namespace deleted, also
# on failure. Needs root (ip netns).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

COMPOSE_FILE=docker-compose.hybrid.yml
RUN_ID=hy$$
SWITCH=$RUN_ID-sw
WORK=$(mktemp -d /tmp/todo-hybrid-test.XXXXXX)
CONVERGE_SECS=60
declare -A PIDS=() ADDRESS=() NS=()
step_no=0
started=$SECONDS

cleanup() {
  local status=$?
  for service in "${!PIDS[@]}"; do kill -TERM "${PIDS[$service]}" 2>/dev/null || true; done
  for service in "${!PIDS[@]}"; do
    timeout 10 tail --pid="${PIDS[$service]}" -f /dev/null 2>/dev/null || kill -9 "${PIDS[$service]}" 2>/dev/null || true
    wait "${PIDS[$service]}" 2>/dev/null || true
  done
  for ns in "${NS[@]}" "$SWITCH"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ $status -ne 0 ]; then
    echo "hybrid test FAILED; last log lines of each service:"
    for log in "$WORK"/*.log; do [ -f "$log" ] && { echo "--- $log"; tail -n 15 "$log"; }; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# `check "what" command...`: runs the command, reports the step with its time, stops on failure.
check() {
  local what=$1; shift
  step_no=$((step_no + 1))
  local t0=$SECONDS
  if "$@"; then
    printf '[hybrid %2d] ok    %-62s (%ds)\n' "$step_no" "$what" $((SECONDS - t0))
  else
    printf '[hybrid %2d] FAIL  %-62s (%ds)\n' "$step_no" "$what" $((SECONDS - t0))
    exit 1
  fi
}

# `eventually SECS command...`: retries the command every half second for SECS seconds.
eventually() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { "$@" || true; return 1; }
    sleep 0.5
  done
}

in_ns() { local service=$1; shift; ip netns exec "${NS[$service]}" "$@"; }
http() { local service=$1 from=$2 path=$3; in_ns "$from" curl -sf --max-time 5 "http://${ADDRESS[$service]}:$(port_of "$service")$path"; }
port_of() { case $1 in relay) echo 4000 ;; *) echo 3000 ;; esac; }

build() {
  [ "$(id -u)" = 0 ] || { echo "needs root for ip netns"; return 1; }
  apt_install libclang-dev curl iproute2 docker-compose >/dev/null
  ci/build-crsqlite.sh >/dev/null
  ci/build-wasm.sh >/dev/null
  cargo build --quiet --release --locked -p todo-node -p todo-relay
}

# Reads each service's environment and address from `docker-compose config` into $WORK.
read_compose() {
  docker-compose -f "$COMPOSE_FILE" config > "$WORK/compose.yml" || return 1
  /usr/bin/python3 - "$WORK" <<'PY'
import sys, yaml
work = sys.argv[1]
config = yaml.safe_load(open(f"{work}/compose.yml"))
assert config["networks"]["todo-network"]["ipam"]["config"][0]["subnet"] == "172.20.0.0/16"
for name in ("relay", "node-a", "node-b"):
    service = config["services"][name]
    with open(f"{work}/{name}.env", "w") as env:
        for key, value in service["environment"].items():
            env.write(f"{key}={value}\n")
    with open(f"{work}/{name}.address", "w") as f:
        f.write(service["networks"]["todo-network"]["ipv4_address"])
PY
}

make_network() {
  ip netns add "$SWITCH"
  ip -n "$SWITCH" link set lo up
  ip -n "$SWITCH" link add br0 type bridge
  ip -n "$SWITCH" link set br0 up
  local i=0
  for service in relay node-a node-b; do
    i=$((i + 1))
    local ns=$RUN_ID-$service inside=$RUN_ID-i$i outside=$RUN_ID-o$i
    NS[$service]=$ns
    ADDRESS[$service]=$(cat "$WORK/$service.address")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "$inside" type veth peer name "$outside"
    ip link set "$inside" netns "$ns"
    ip link set "$outside" netns "$SWITCH"
    ip -n "$SWITCH" link set "$outside" master br0 up
    ip -n "$ns" link set "$inside" name eth0
    ip -n "$ns" addr add "${ADDRESS[$service]}/16" dev eth0
    ip -n "$ns" link set eth0 up
    # A default route, so 0.0.0.0 listeners have an interface address to report.
    ip -n "$ns" route add default dev eth0
  done
}

# Starts a service from its compose environment, with DATA_DIR as its volume.
start() {
  local service=$1 binary=$2
  mkdir -p "$WORK/$service-data"
  local env=()
  while IFS= read -r line; do env+=("$line"); done < "$WORK/$service.env"
  env+=("DATA_DIR=$WORK/$service-data")
  ip netns exec "${NS[$service]}" env "${env[@]}" "$CARGO_TARGET_DIR/release/$binary" \
    >> "$WORK/$service.log" 2>&1 &
  PIDS[$service]=$!
}

start_all() {
  start relay todo-relay
  eventually 30 http relay relay /health || return 1
  start node-a todo-node
  start node-b todo-node
}

healthy() {
  eventually 30 http relay relay /health && eventually 30 http node-a node-a /health \
    && eventually 30 http node-b node-b /health
}

reserved() { http "$1" "$1" /api/peers | grep -q '"reservation":"active"'; }
reservations() { eventually 30 reserved node-a && eventually 30 reserved node-b; }

peers_name() { http "$1" "$1" /api/peers | grep -q "\"node\":\"$2\""; }
discovered() { eventually 30 peers_name node-a node-b && eventually 30 peers_name node-b node-a; }

ssr() {
  http node-a node-a / | grep -q 'served by <strong>node-a</strong>' \
    && http node-b node-b / | grep -q 'served by <strong>node-b</strong>'
}

pwa_assets() {
  local service
  for service in node-a node-b; do
    http "$service" "$service" /static/manifest.webmanifest | grep -q '"display": "standalone"' || return 1
    http "$service" "$service" /sw.js | grep -q 'const VERSION = "' || return 1
    http "$service" "$service" /static/wasm/wasm_peer_bg.wasm >/dev/null || return 1
  done
}

add_todo() {
  local service=$1 title=$2
  local code
  code=$(in_ns "$service" curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    --data-urlencode "title=$title" "http://${ADDRESS[$service]}:3000/todos")
  [ "$code" = 303 ]
}
has_todo() { http "$1" "$1" /api/todos | grep -qF "\"title\":\"$2\""; }
write_reaches() { add_todo "$1" "$3" && eventually "$CONVERGE_SECS" has_todo "$2" "$3"; }

kill_a_then_b_serves() {
  kill -9 "${PIDS[node-a]}"
  wait "${PIDS[node-a]}" 2>/dev/null || true  # (bash reports the kill; that is this step)
  unset 'PIDS[node-a]'
  ! http node-a node-a /health >/dev/null 2>&1 \
    && http node-b node-b / >/dev/null \
    && add_todo node-b "written on B while A is down" && has_todo node-b "written on B while A is down"
}

restart_a_catches_up() {
  start node-a todo-node
  eventually 30 http node-a node-a /health && eventually "$CONVERGE_SECS" has_todo node-a "written on B while A is down"
}

set_a_link() { ip -n "$SWITCH" link set "$RUN_ID-o2" "$1"; }
partition_with_writes() {
  set_a_link down
  add_todo node-a "written on A in the partition" && add_todo node-b "written on B in the partition" \
    && ! has_todo node-b "written on A in the partition"
}

same_todos() { [ "$(http node-a node-a /api/todos)" = "$(http node-b node-b /api/todos)" ]; }
healed_converge() {
  set_a_link up
  eventually "$CONVERGE_SECS" has_todo node-b "written on A in the partition" \
    && eventually "$CONVERGE_SECS" has_todo node-a "written on B in the partition" \
    && eventually "$CONVERGE_SECS" same_todos
}

check "build (cr-sqlite, browser peer, release todo-node and todo-relay)" build
check "$COMPOSE_FILE validates (docker-compose config)" read_compose
check "namespaces and bridge for todo-network (172.20.0.0/16)" make_network
check "start relay, node-a, node-b with the compose environment" start_all
check "health of relay, node-a and node-b" healthy
check "both nodes hold a reservation on the relay (RELAY_ADDRS)" reservations
check "mDNS discovery between the nodes" discovered
check "SSR of / on both nodes" ssr
check "PWA assets (manifest, service worker, wasm) on both nodes" pwa_assets
check "a todo added on node A appears on node B" write_reaches node-a node-b "added on A"
check "node A killed: node B keeps serving and accepting writes" kill_a_then_b_serves
check "node A restarted: it catches up with node B" restart_a_catches_up
check "partition A | B with writes on both sides" partition_with_writes
check "partition healed: both nodes converge to the same todos" healed_converge
echo "hybrid test passed: $step_no steps in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Builds what is missing and starts the app on embedded defaults: a node on
# http://127.0.0.1:3000 with its data in ./data. Any setting can be given as an env var
# (PORT=3001 NODE_NAME=a ci/start.sh) or as a flag after the command (ci/start.sh --port 3001).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

apt_install libclang-dev
ci/build-crsqlite.sh >/dev/null
ci/build-wasm.sh >/dev/null
cargo build --release --locked -p todo-node
echo "starting todo-node: open http://${HOST:-127.0.0.1}:${PORT:-3000}/  (Ctrl-C stops it)"
exec "$CARGO_TARGET_DIR/release/todo-node" "$@"

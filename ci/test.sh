#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then format, lint, unit and
# integration tests (browser tests in headless Chromium among them, the edge worker under
# wrangler dev), the wasm32 build of the shared crates, the browser peer and the edge worker,
# and the cr-sqlite oracle self-test.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
started=$SECONDS

step "prerequisites (Debian packages, rust targets, cr-sqlite $CRSQLITE_DIR)"
apt_install libclang-dev python3 sqlite3 curl iproute2 chromium chromium-driver
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown >/dev/null
ci/build-crsqlite.sh >/dev/null

step "set-up from scratch: cr-sqlite rebuilt in a temporary folder, binaryen installed into an empty cache"
fresh_crsqlite=$(ci/check-setup.sh)

step "the browser peer's bundle ($WASM_BUNDLE_DIR)"
ci/build-wasm.sh

step "the edge worker (ci/build-edge.sh) and wrangler for its tests (ci/edge-dev.sh --install-only)"
ci/build-edge.sh
ci/edge-dev.sh --install-only >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the shared crates, the browser's modules and the edge worker build for wasm32-unknown-unknown, clippy-clean there too"
cargo clippy --locked -p changeset -p app -p p2p-protocol -p wasm-peer -p browser-p2p -p todo-edge \
  --target wasm32-unknown-unknown -- -D warnings
cargo clippy --locked -p browser-p2p --features probe --target wasm32-unknown-unknown -- -D warnings

step "the relay binary (node/tests/relay.rs runs it next to the node's)"
cargo build --locked -p todo-relay

step "unit and integration tests"
NETNS_TESTS=require EDGE_TESTS=require cargo test --workspace --locked

if [ -f ../shared/tools/test_crsqlite_oracle.py ]; then
  step "the cr-sqlite oracle agrees with the extension built from scratch in this run"
  CRSQLITE_EXT=$fresh_crsqlite /usr/bin/python3 ../shared/tools/test_crsqlite_oracle.py | tail -1
fi

step "the hybrid deployment (docker-compose.hybrid.yml) in network namespaces"
ci/hybrid-test.sh

step "all tests passed in $((SECONDS - started)) s"

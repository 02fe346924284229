#!/usr/bin/env bash
# Builds the edge worker (edge/, a workers-rs crate) for wrangler.toml: the wasm and its JS
# shim into edge/build/ (worker-build 0.7.4, cargo profile wasm-release), and the node's own
# assets (PWA files, browser peer, /sw.js) into edge/public/ (todo-export-assets), which
# wrangler.toml's [assets] serves. Prints the wasm's raw and gzip sizes.
#
# Works offline once the tools are cached: worker-build would download wasm-bindgen, esbuild
# and wasm-opt at run time, so it is pointed at local ones (WASM_BINDGEN_BIN, ESBUILD_BIN,
# WASM_OPT_BIN): wasm-bindgen-cli of the version in Cargo.lock (installed by
# ci/build-wasm.sh), esbuild and binaryen from npm. Each tool is cached under
# $TODO_CACHE/<tool>-<version>/ and installed when missing. binaryen is 125, not the 132 the
# browser bundle uses: 132 under worker-build's --all-features emits a module wrangler 3's
# workerd refuses (../shared/research/edge-worker.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
bindgen_bin=$TODO_CACHE/wasm-bindgen-$bindgen_version/bin/wasm-bindgen
worker_build_dir=$TODO_CACHE/worker-build-$WORKER_BUILD_VERSION
esbuild_dir=$TODO_CACHE/esbuild-$ESBUILD_VERSION
binaryen_dir=$TODO_CACHE/binaryen-$EDGE_BINARYEN_VERSION

npm_install() { # dir package@version
  command -v npm >/dev/null || apt_install npm
  echo "installing $2 (npm) into $1"
  mkdir -p "$1"
  npm install --silent --no-audit --no-fund --prefix "$1" "$2" >/dev/null
}

[ -x "$bindgen_bin" ] || ci/build-wasm.sh >/dev/null
if [ ! -x "$worker_build_dir/bin/worker-build" ]; then
  echo "installing worker-build $WORKER_BUILD_VERSION into $worker_build_dir (a few minutes, once)"
  # --debug: it only drives other tools, and an optimised build takes several times longer.
  env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    cargo install --quiet --locked --debug worker-build --version "$WORKER_BUILD_VERSION" --root "$worker_build_dir"
fi
[ -x "$esbuild_dir/node_modules/.bin/esbuild" ] || npm_install "$esbuild_dir" "esbuild@$ESBUILD_VERSION"
[ -x "$binaryen_dir/node_modules/.bin/wasm-opt" ] || npm_install "$binaryen_dir" "binaryen@$EDGE_BINARYEN_VERSION"

(
  cd edge
  WASM_BINDGEN_BIN=$bindgen_bin \
  ESBUILD_BIN=$esbuild_dir/node_modules/.bin/esbuild \
  WASM_OPT_BIN=$binaryen_dir/node_modules/.bin/wasm-opt \
    "$worker_build_dir/bin/worker-build" --profile wasm-release --quiet
)

# The node's assets, from a node built with the same bundle.
cargo build --quiet --locked -p todo-node --bin todo-export-assets
rm -rf edge/public
"$CARGO_TARGET_DIR/debug/todo-export-assets" edge/public

wasm=edge/build/index_bg.wasm
printf 'edge worker %s: %d bytes raw, %d bytes gzip\n' "$(basename "$wasm")" \
  "$(stat -c %s "$wasm")" "$(gzip -9c "$wasm" | wc -c)"

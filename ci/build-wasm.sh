#!/usr/bin/env bash
# Builds the browser's two modules into $WASM_BUNDLE_DIR: the offline replica (wasm-peer/,
# every page in offline mode and the service worker's cache) and the libp2p peer
# (browser-p2p/, loaded only in offline mode). Each: cargo for wasm32 with the
# size-optimised wasm-release profile, wasm-bindgen (the CLI of exactly the version in
# Cargo.lock, installed under ~/.cache when missing), then wasm-opt -Oz from npm's binaryen
# (Debian's is too old and emits broken modules). Prints raw and gzip sizes. Also builds the
# probe bundle for the WebRTC interoperability test (see below). Quick when
# nothing changed: each step is skipped when its input is the same as last time.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
[ -n "$bindgen_version" ] || { echo "wasm-bindgen is not in Cargo.lock" >&2; exit 1; }
bindgen_dir=$TODO_CACHE/wasm-bindgen-$bindgen_version
binaryen_dir=$TODO_CACHE/binaryen-$BINARYEN_VERSION

install_binaryen() {
  [ -x "$binaryen_dir/node_modules/.bin/wasm-opt" ] && return 0
  command -v npm >/dev/null || apt_install npm
  echo "installing binaryen $BINARYEN_VERSION (npm) into $binaryen_dir"
  mkdir -p "$binaryen_dir"
  npm install --silent --no-audit --no-fund --prefix "$binaryen_dir" "binaryen@$BINARYEN_VERSION" >/dev/null
}

install_bindgen() {
  [ -x "$bindgen_dir/bin/wasm-bindgen" ] && return 0
  echo "installing wasm-bindgen-cli $bindgen_version into $bindgen_dir (about 3 minutes, once)"
  # In a target dir of its own (cargo install's default), not the project's.
  env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    cargo install --quiet --locked wasm-bindgen-cli --version "$bindgen_version" --root "$bindgen_dir"
}

# ci/check-setup.sh exercises this install step alone, into an empty cache.
if [ "${1:-}" = --install-binaryen-only ]; then
  install_binaryen
  exit 0
fi

rustup target add wasm32-unknown-unknown >/dev/null 2>&1
install_bindgen
install_binaryen

# wasm-bindgen and wasm-opt for each module given, into $1; skipped when the inputs are the
# same as last time.
bundle() {
  local out=$1; shift
  local inputs=("$@")
  local input_sum
  input_sum=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
  [ "$(cat "$out/.input.sha256" 2>/dev/null)" = "$input_sum" ] && return 0
  work=$(mktemp -d "$TODO_CACHE/wasm-bundle.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  for input in "${inputs[@]}"; do
    m=$(basename "$input" .wasm)
    "$bindgen_dir/bin/wasm-bindgen" --target web --no-typescript --out-dir "$work" "$input"
    "$binaryen_dir/node_modules/.bin/wasm-opt" -Oz --enable-bulk-memory --enable-sign-ext \
      --enable-nontrapping-float-to-int --enable-mutable-globals --enable-reference-types \
      --enable-multivalue -o "$work/${m}_bg.opt.wasm" "$work/${m}_bg.wasm"
    mv "$work/${m}_bg.opt.wasm" "$work/${m}_bg.wasm"
  done
  echo "$input_sum" > "$work/.input.sha256"
  # Replace the bundle in one step, so a half-written one is never embedded.
  rm -rf "$out.old"
  [ -d "$out" ] && mv "$out" "$out.old"
  mv "$work" "$out"
  rm -rf "$out.old"
  trap - EXIT
}

release=$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release
# First the probe: browser-p2p with its `probe` feature (a bare libp2p peer that the WebRTC
# interoperability test with js-libp2p drives), into $WASM_BUNDLE_DIR-probe; the node never
# serves it. Built first because it shares its output file with the app's build below.
cargo build --quiet --locked -p browser-p2p --features probe --target wasm32-unknown-unknown --profile wasm-release
bundle "$WASM_BUNDLE_DIR-probe" "$release/browser_p2p.wasm"

cargo build --quiet --locked -p wasm-peer -p browser-p2p --target wasm32-unknown-unknown --profile wasm-release
modules=(wasm_peer browser_p2p)
inputs=()
for m in "${modules[@]}"; do inputs+=("$release/$m.wasm"); done
bundle "$WASM_BUNDLE_DIR" "${inputs[@]}"

for m in "${modules[@]}"; do
  for f in "${m}_bg.wasm" "$m.js"; do
    printf '%-22s %8d bytes raw, %7d bytes gzip\n' "$f" \
      "$(stat -c %s "$WASM_BUNDLE_DIR/$f")" "$(gzip -9c "$WASM_BUNDLE_DIR/$f" | wc -c)"
  done
done

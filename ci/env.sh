# Sourced by the ci/ scripts: where the expensive, reusable things live (outside the clone, so a
# fresh clone on a machine that built them before is quick, and a fresh machine builds them all).
export TODO_CACHE=${TODO_CACHE:-$HOME/.cache/todo-hybrid}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TODO_CACHE/target}
export CRSQLITE_DIR=${CRSQLITE_DIR:-$TODO_CACHE/crsqlite-0.16.3}
export CRSQLITE_EXT=${CRSQLITE_EXT:-$CRSQLITE_DIR/crsqlite.so}

step() { printf '\n==> %s\n' "$*"; }

# Installs Debian packages that are missing (one apt-get update per run, only when needed).
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The browser peer's bundle (wasm-bindgen output, wasm-opt'd), built by ci/build-wasm.sh and
# embedded into the node by node/build.rs.
export WASM_BUNDLE_DIR=${WASM_BUNDLE_DIR:-$TODO_CACHE/wasm-bundle}
# wasm-opt comes from npm's binaryen (Debian's is too old and emits broken modules).
export BINARYEN_VERSION=132.0.0

# The edge worker's build and local runtime (ci/build-edge.sh, ci/edge-dev.sh), each cached
# under $TODO_CACHE/<tool>-<version>/.
export WORKER_BUILD_VERSION=0.7.4
export ESBUILD_VERSION=0.27.2
export EDGE_BINARYEN_VERSION=125.0.0
export WRANGLER_VERSION=3.114.17

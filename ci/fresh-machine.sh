#!/usr/bin/env bash
# Runs the whole suite as a new machine would: every cached artefact (cr-sqlite, wasm-bindgen-cli,
# binaryen, the browser peer's bundle, the cargo target dir) is built or installed from nothing
# into an empty TODO_CACHE, which is deleted afterwards (KEEP_CACHE=1 keeps it). What this
# script cannot undo are machine-wide installs: Debian packages and rustup toolchains and
# targets stay installed (ci/test.sh installs them when missing, on a new machine).
#
# Takes about 30 min on 2 cores (the ~15-min cold build dominates); run it before resolving
# anything that touches set-up. Arguments go to ci/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=$(mktemp -d /tmp/todo-fresh-cache.XXXXXX)
[ "${KEEP_CACHE:-}" = 1 ] || trap 'rm -rf "$cache"' EXIT
echo "==> the suite with an empty cache: TODO_CACHE=$cache"
started=$SECONDS
# Everything ci/env.sh derives from TODO_CACHE must be derived again, not inherited.
env -u CARGO_TARGET_DIR -u CRSQLITE_DIR -u CRSQLITE_EXT -u WASM_BUNDLE_DIR \
  TODO_CACHE="$cache" ci/test.sh "$@"
echo "==> fresh-machine run passed in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Proves, on every CI run, that the set-up steps work from nothing, so that a warm cache can no
# longer hide a broken install step (it once did: ci/env.sh's CARGO_TARGET_DIR leaked into
# cr-sqlite's make, which failed on every new machine while CI, with the extension cached, stayed
# green).
#
# 1. cr-sqlite (cheap: ~35 s) is built from scratch in a temporary folder, with an empty cargo
#    home, under an environment made hostile on purpose (a foreign CARGO_TARGET_DIR, bad
#    RUSTFLAGS, make variables the Makefile reads), and must behave as the cached build the node
#    embeds: same version in crsql_master, same crsql_changes for the same writes. Its path is
#    printed last, so ci/test.sh points the cr-sqlite oracle's self-test at it.
# 2. binaryen (seconds) is installed by ci/build-wasm.sh's own install step into an empty cache.
#
# What is too slow for every run (wasm-bindgen-cli: ~3 min; the cargo target dir: ~10 min) is
# exercised by ci/fresh-machine.sh, which runs the whole suite with an empty TODO_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

scratch=$(mktemp -d /tmp/todo-setup-check.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

fresh_dir=$scratch/crsqlite-0.16.3
echo "[setup] building cr-sqlite from scratch in $scratch (hostile environment, empty cargo home)" >&2
env CRSQLITE_DIR="$fresh_dir" CRSQLITE_CARGO_HOME="$scratch/cargo-home" \
  CARGO_TARGET_DIR="$scratch/elsewhere" CARGO_BUILD_TARGET_DIR="$scratch/elsewhere2" \
  RUSTFLAGS="-C opt-level=not-a-level" CARGO_BUILD_RUSTFLAGS="-C opt-level=not-a-level" \
  RUSTC_WRAPPER=/bin/false prefix=/nonexistent bundle=nonexistent CI_MAYBE_TARGET=not-a-target \
  ci/build-crsqlite.sh >/dev/null

# What a build does: its version, and the crsql_changes it records for a fixed set of writes
# (the site id is random per database, so it is left out).
fingerprint() {
  /usr/bin/python3 - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(":memory:")
db.enable_load_extension(True)
db.load_extension(sys.argv[1])
db.executescript("""
CREATE TABLE todos(id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL DEFAULT '',
  completed INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL DEFAULT 0);
SELECT crsql_as_crr('todos');
INSERT INTO todos VALUES ('a', 'milk', 0, 1), ('b', 'bread', 0, 2);
UPDATE todos SET completed = 1 WHERE id = 'a';
DELETE FROM todos WHERE id = 'b';
INSERT INTO todos(id, title) VALUES ('b', 'again');
""")
print("version", db.execute("SELECT value FROM crsql_master WHERE key = 'crsqlite_version'").fetchone())
for row in db.execute('SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq '
                      'FROM crsql_changes ORDER BY db_version, seq'):
    print(row)
db.execute("SELECT crsql_finalize()")
PY
}
cached=$(fingerprint "$CRSQLITE_EXT")
built=$(fingerprint "$fresh_dir/crsqlite.so")
if [ "$cached" != "$built" ]; then
  echo "[setup] FAIL: the cr-sqlite built from scratch behaves unlike the cached one ($CRSQLITE_EXT)" >&2
  diff <(echo "$cached") <(echo "$built") >&2 || true
  exit 1
fi
echo "[setup] ok: the fresh cr-sqlite build matches the cached one ($(echo "$cached" | head -1))" >&2

echo "[setup] installing binaryen into an empty cache with ci/build-wasm.sh's install step" >&2
TODO_CACHE=$scratch/cache ci/build-wasm.sh --install-binaryen-only >&2
[ -x "$scratch/cache/binaryen-$BINARYEN_VERSION/node_modules/.bin/wasm-opt" ] ||
  { echo "[setup] FAIL: binaryen did not install" >&2; exit 1; }
echo "[setup] ok: binaryen installs from nothing" >&2

# Keep the fresh build for the caller (ci/test.sh runs the oracle's self-test on it).
keep=$TODO_CACHE/setup-check
rm -rf "$keep"
mkdir -p "$keep"
cp "$fresh_dir/crsqlite.so" "$keep/crsqlite.so"
echo "$keep/crsqlite.so"

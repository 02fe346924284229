#!/usr/bin/env bash
# Builds the cr-sqlite loadable extension from the npm registry package, once per machine.
#
# Output: $CRSQLITE_DIR/crsqlite.so and crsqlite.so.sha256 (default
# ~/.cache/todo-hybrid/crsqlite-$VERSION). The node embeds that .so (node/build.rs checks it
# against the .sha256 file), so a stale or half-written build fails the Rust build loudly.
#
# Needs: npm, rustup, gcc, make, Debian's libclang-dev (bindgen). Installs the pinned nightly
# toolchain and libclang-dev when missing. Prints the directory it built on stdout (last line).
set -euo pipefail

VERSION=0.16.3
# sha256 of the published npm tarball: a changed tarball must never build silently.
TARBALL_SHA256=e16e462763ebe38c30a466e53b979dc2464de1e2ebc0e2255c04266ca232a012
# cr-sqlite 0.16.3's Rust core needs this exact nightly (feature flags that later nightlies removed).
NIGHTLY=nightly-2023-10-05

CRSQLITE_DIR=${CRSQLITE_DIR:-$HOME/.cache/todo-hybrid/crsqlite-$VERSION}
# Cargo's registry cache for this build alone (see the build step for why it is not the caller's).
CRSQLITE_CARGO_HOME=${CRSQLITE_CARGO_HOME:-$(dirname "$CRSQLITE_DIR")/crsqlite-cargo-home}
log() { printf '[crsqlite] %s\n' "$*" >&2; }

if [[ -f $CRSQLITE_DIR/crsqlite.so && -f $CRSQLITE_DIR/crsqlite.so.sha256 ]] &&
  (cd "$CRSQLITE_DIR" && sha256sum --quiet -c crsqlite.so.sha256 >/dev/null 2>&1); then
  log "cached build is intact: $CRSQLITE_DIR/crsqlite.so"
  echo "$CRSQLITE_DIR"
  exit 0
fi

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  log "installing Debian libclang-dev (bindgen needs it)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >&2
fi
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  log "installing rust toolchain $NIGHTLY"
  rustup toolchain install "$NIGHTLY" --profile minimal >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "fetching @vlcn.io/crsqlite@$VERSION from the npm registry"
(cd "$work" && npm pack --silent "@vlcn.io/crsqlite@$VERSION" >/dev/null)
tarball=$(ls "$work"/*.tgz)
echo "$TARBALL_SHA256  $tarball" | sha256sum --quiet -c - ||
  { log "ERROR: the npm tarball's sha256 is not $TARBALL_SHA256; refusing to build"; exit 1; }
tar xzf "$tarball" -C "$work"

log "building the loadable extension (make loadable, ~35 s on 2 cores)"
# make runs in a scrubbed environment, whatever the caller exported: make turns every variable
# into a make variable (cr-sqlite's Makefile reads prefix, bundle, CI_MAYBE_TARGET, CI_GCC, ...),
# and cargo obeys CARGO_TARGET_DIR, CARGO_BUILD_*, RUSTFLAGS, RUSTC_WRAPPER and the config.toml of
# any CARGO_HOME, any of which moves or changes what the Makefile then copies
# (./rs/bundle_static/target/release/). ci/env.sh exports CARGO_TARGET_DIR, which once broke
# every fresh machine this way. Kept: PATH (cargo, gcc), HOME and RUSTUP_HOME (rustup's
# toolchains), the CA certificates (cargo fetches crates). Cargo gets a home of its own under
# the cache, so no config.toml of the caller's applies, and the target dir is named outright.
# The package's rust-toolchain files are not shipped in the tarball: pin the toolchain here.
build_env=(PATH="$PATH" HOME="$HOME" RUSTUP_TOOLCHAIN="$NIGHTLY"
  CARGO_HOME="$CRSQLITE_CARGO_HOME"
  CARGO_TARGET_DIR="$work/package/rs/bundle_static/target")
for keep in RUSTUP_HOME SSL_CERT_FILE SSL_CERT_DIR CARGO_HTTP_CAINFO http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY; do
  [ -n "${!keep:-}" ] && build_env+=("$keep=${!keep}")
done
mkdir -p "$CRSQLITE_CARGO_HOME"
(cd "$work/package" && env -i "${build_env[@]}" make loadable >"$work/build.log" 2>&1) ||
  { tail -40 "$work/build.log" >&2; log "ERROR: make loadable failed (log above)"; exit 1; }

mkdir -p "$CRSQLITE_DIR"
# Write then rename, so an interrupted build never leaves a file that looks finished.
cp "$work/package/dist/crsqlite.so" "$CRSQLITE_DIR/crsqlite.so.tmp"
mv "$CRSQLITE_DIR/crsqlite.so.tmp" "$CRSQLITE_DIR/crsqlite.so"
(cd "$CRSQLITE_DIR" && sha256sum crsqlite.so >crsqlite.so.sha256.tmp && mv crsqlite.so.sha256.tmp crsqlite.so.sha256)
log "built $CRSQLITE_DIR/crsqlite.so ($(stat -c %s "$CRSQLITE_DIR/crsqlite.so") bytes)"
echo "$CRSQLITE_DIR"

#!/usr/bin/env bash
# The js-libp2p browser peer the WebRTC interoperability test runs against
# (node/tests/webrtc_interop.rs): installs the pinned npm packages into
# $TODO_CACHE/js-libp2p-<hash of the pins> (once), and bundles node/tests/js/interop.js with
# esbuild into interop.js there. Prints the bundle's path, then its raw and gzip sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

packages=(
  libp2p@3.3.11
  @libp2p/webrtc@6.0.33
  @libp2p/circuit-relay-v2@4.2.13
  @libp2p/websockets@10.1.21
  @libp2p/identify@4.1.14
  @libp2p/ping@3.1.13
  @libp2p/echo@3.1.0
  @libp2p/peer-id@6.0.15
  @chainsafe/libp2p-noise@17.0.0
  @chainsafe/libp2p-yamux@8.0.1
  @multiformats/multiaddr@13.0.3
  esbuild@0.28.2
)
key=$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-12)
dir=$TODO_CACHE/js-libp2p-$key
if [ ! -x "$dir/node_modules/.bin/esbuild" ]; then
  command -v npm >/dev/null || apt_install npm
  echo "installing js-libp2p (npm) into $dir" >&2
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  npm install --silent --no-audit --no-fund --prefix "$dir.tmp" "${packages[@]}" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
# Bundled from beside its node_modules, where esbuild resolves the packages.
cp node/tests/js/interop.js "$dir/entry.js"
"$dir/node_modules/.bin/esbuild" "$dir/entry.js" --bundle --minify --format=iife \
  --target=chrome120 --log-level=warning --outfile="$dir/interop.js" >&2
echo "$dir/interop.js"
printf 'js-libp2p bundle %d bytes raw, %d bytes gzip\n' "$(stat -c %s "$dir/interop.js")" \
  "$(gzip -9c "$dir/interop.js" | wc -c)" >&2

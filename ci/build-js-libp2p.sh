#!/usr/bin/env bash
# The js-libp2p browser peer the WebRTC interoperability test runs against
# (node/tests/webrtc_interop.rs): installs the npm packages node/tests/js/package-lock.json
# pins into $TODO_CACHE/js-libp2p-<hash of it> (once), and bundles node/tests/js/interop.js with
# esbuild into interop.js there. Prints the bundle's path, then its raw and gzip sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

# The packages and every transitive version are pinned by node/tests/js/package-lock.json
# (`npm ci` installs exactly that tree): a new release upstream cannot change the test.
key=$(cat node/tests/js/package.json node/tests/js/package-lock.json | sha256sum | cut -c1-12)
dir=$TODO_CACHE/js-libp2p-$key
if [ ! -x "$dir/node_modules/.bin/esbuild" ]; then
  command -v npm >/dev/null || apt_install npm
  echo "installing js-libp2p (npm ci) into $dir" >&2
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  cp node/tests/js/package.json node/tests/js/package-lock.json "$dir.tmp/"
  npm ci --silent --no-audit --no-fund --prefix "$dir.tmp" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
# Bundled from beside its node_modules, where esbuild resolves the packages.
cp node/tests/js/interop.js "$dir/entry.js"
"$dir/node_modules/.bin/esbuild" "$dir/entry.js" --bundle --minify --format=iife \
  --target=chrome120 --log-level=warning --outfile="$dir/interop.js" >&2
echo "$dir/interop.js"
printf 'js-libp2p bundle %d bytes raw, %d bytes gzip\n' "$(stat -c %s "$dir/interop.js")" \
  "$(gzip -9c "$dir/interop.js" | wc -c)" >&2

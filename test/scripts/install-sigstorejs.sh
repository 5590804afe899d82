#!/usr/bin/env bash
# install-sigstorejs.sh: installs the sigstore-js packages the interop test
# runs (@sigstore/verify and @sigstore/bundle, pinned in
# test/interop/sigstorejs/package-lock.json) into that directory's
# git-ignored node_modules, with `npm ci` from the npm registry. Skipped
# when node_modules matches the lockfile already.
#
# Needs Node.js and npm. @sigstore/verify 4.x declares Node >= 22; the
# machines have Node 20, on which it runs (the test shows it), so the
# engine warning npm prints is expected.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/test/interop/sigstorejs"
stamp="$dir/node_modules/.hallmark-lock.sha256"

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "sigstore-js: node and npm are needed (apt-get install nodejs npm)" >&2
  exit 1
}
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "sigstore-js: npm ci in $dir (node $(node --version))..."
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"

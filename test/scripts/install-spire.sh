#!/usr/bin/env bash
# install-spire.sh: makes spire-server and spire-agent v1.13.3 available in .tools/bin.
#
# Uses binaries already in .tools/bin, then ones on PATH at v1.13.3, and only then builds
# them from the Go module proxy through the tools/spire module (11-15 minutes
# cold on 2 cores, ~4 GB of build cache; once).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/.tools/bin"
mkdir -p "$bin"

# Only at the version the docs and tests name (test/harness.SPIREVersion):
# "1.13.3", or a build of it ("1.13.3-dev-unk"), not 1.13.30.
want=1.13.3
right() {
  local v
  v=$("$1" --version 2>&1) && case "$v" in "$want" | "$want"-*) true ;; *) false ;; esac
}
have() { [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ] && right "$bin/spire-server" && right "$bin/spire-agent"; }
if have; then exit 0; fi
if [ -e "$bin/spire-server" ] || [ -e "$bin/spire-agent" ]; then
  echo "spire: $bin holds another version than v$want ($("$bin/spire-server" --version 2>&1 || true)); replacing it"
  rm -f "$bin/spire-server" "$bin/spire-agent"
fi

if command -v spire-server >/dev/null && command -v spire-agent >/dev/null; then
  if right spire-server && right spire-agent; then
    echo "spire: using $(command -v spire-server) and $(command -v spire-agent) from PATH ($(spire-server --version 2>&1))"
    ln -sf "$(command -v spire-server)" "$bin/spire-server"
    ln -sf "$(command -v spire-agent)" "$bin/spire-agent"
    exit 0
  fi
  echo "spire: $(command -v spire-server) on PATH is $(spire-server --version 2>&1), not v$want: not used"
fi

echo "spire: building spire-server and spire-agent v$want from the module proxy (11-15 minutes cold, once)..."
start=$(date +%s)
cd "$root/tools/spire"
GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$bin/" \
  github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
echo "spire: built in $(( $(date +%s) - start ))s into $bin"

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

have() { [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ]; }
if have; then exit 0; fi

# Those on PATH only at the version the docs and tests name.
onpath() { v=$("$1" --version 2>&1) && case "$v" in 1.13.3*) true ;; *) false ;; esac; }
if command -v spire-server >/dev/null && command -v spire-agent >/dev/null &&
  onpath spire-server && onpath spire-agent; then
  echo "spire: using $(command -v spire-server) and $(command -v spire-agent) from PATH ($(spire-server --version 2>&1))"
  ln -sf "$(command -v spire-server)" "$bin/spire-server"
  ln -sf "$(command -v spire-agent)" "$bin/spire-agent"
  exit 0
fi

echo "spire: building spire-server and spire-agent v1.13.3 from the module proxy (11-15 minutes cold, once)..."
start=$(date +%s)
cd "$root/tools/spire"
GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$bin/" \
  github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
echo "spire: built in $(( $(date +%s) - start ))s into $bin"

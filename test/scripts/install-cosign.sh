#!/usr/bin/env bash
# install-cosign.sh: makes the cosign CLI v3.1.3 (the newest v3 release the Go
# module proxy serves) available in .tools/bin for the interop tests.
#
# Uses a binary already in .tools/bin, and only then builds it from the Go
# module proxy through the tools/cosign module, whose go.sum pins every
# dependency (once; 48 minutes measured cold on a 2-core machine busy with
# other builds). A cosign on PATH is not
# used: the tests name the version they run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/.tools/bin"
want=v3.1.3
mkdir -p "$bin"

if [ -x "$bin/cosign" ] && "$bin/cosign" version 2>/dev/null | grep -q "GitVersion:.*${want#v}"; then
  exit 0
fi

echo "cosign: building cosign $want from the module proxy (cold: minutes to tens of minutes on 2 cores; once)..."
start=$(date +%s)
cd "$root/tools/cosign"
tmp=$(mktemp -d "$bin/.cosign.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The version is stamped the way cosign's own release build stamps it, so
# `cosign version` names what the tests run.
GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath \
  -ldflags="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$want" \
  -o "$tmp/cosign" github.com/sigstore/cosign/v3/cmd/cosign
mv "$tmp/cosign" "$bin/cosign"
echo "cosign: built in $(( $(date +%s) - start ))s into $bin"

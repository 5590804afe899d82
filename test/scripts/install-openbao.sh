#!/usr/bin/env bash
# install-openbao.sh: makes a Vault-API server binary available as .tools/bin/bao
# for the tests and the demo, which run against a real Vault, never an emulator.
#
# Uses, in this order: one already in .tools/bin; `bao` or `vault` on PATH;
# the OpenBao copy in ../shared/tools/openbao next to the repository, or next
# to its main checkout when this is a linked git worktree (xz, checked
# against the sha256 its README gives). Otherwise it stops and says
# where to get one. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/.tools/bin"
mkdir -p "$bin"

works() { [ -x "$1" ] && "$1" version >/dev/null 2>&1; }
if works "$bin/bao"; then exit 0; fi

for name in bao vault; do
  if p=$(command -v "$name") && [ "$p" != "$bin/bao" ] && works "$p"; then
    echo "openbao: using $p from PATH ($("$p" version))"
    ln -sf "$p" "$bin/bao"
    exit 0
  fi
done

shared="$root/../shared/tools/openbao"
if [ ! -d "$shared" ] && common=$(git -C "$root" rev-parse --path-format=absolute --git-common-dir 2>/dev/null); then
  shared="$(dirname "$common")/../shared/tools/openbao"
fi
if [ -f "$shared/bao.xz" ] && [ -f "$shared/README.md" ]; then
  shared=$(cd "$shared" && pwd)
  want=$(grep -oE '\b[0-9a-f]{64}\b' "$shared/README.md" | head -1)
  [ -n "$want" ] || { echo "openbao: $shared/README.md gives no sha256 to check bao.xz against" >&2; exit 1; }
  command -v xz >/dev/null || "$root/test/scripts/apt-install.sh" xz-utils
  tmp="$bin/bao.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  xz -dc "$shared/bao.xz" >"$tmp"
  got=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "openbao: $shared/bao.xz unpacks to sha256 $got, but its README says $want: not installed" >&2
    exit 1
  fi
  chmod 0755 "$tmp"
  mv "$tmp" "$bin/bao"
  echo "openbao: installed $("$bin/bao" version) from $shared into $bin"
  exit 0
fi

cat >&2 <<'MSG'
openbao: no Vault-API server found. The tests and `make demo` run against a real one.
Install either, so that `bao` or `vault` is on PATH, then run `make tools` again:
  - OpenBao: https://openbao.org/downloads/ (or https://github.com/openbao/openbao/releases)
  - HashiCorp Vault: https://developer.hashicorp.com/vault/install
MSG
exit 1

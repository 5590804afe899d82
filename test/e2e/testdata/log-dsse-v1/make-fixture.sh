#!/usr/bin/env bash
# make-fixture.sh: regenerates this fixture with the hallmark release that
# logged dsse entries (commit 0965f2e): it extracts that commit's tree,
# adds make_fixture_test.go.txt to its end-to-end suite, runs it on real
# SPIRE (the repository's .tools/bin) and copies the server's log (the
# SQLite store, the log key, the timestamp key), three bundles with their
# artifacts, the trusted root and the last checkpoint here. The local key
# manager's CA is left out: the upgraded server makes its own, and the old
# one stays in the store's signing CAs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
old=$(mktemp -d)
out=$(mktemp -d)
trap 'rm -rf "$old" "$out"' EXIT
git -C "$root" archive 0965f2e | tar -x -C "$old"
ln -s "$root/.tools" "$old/.tools"
cp "$here/make_fixture_test.go.txt" "$old/test/e2e/zz_fixture_test.go"
(cd "$old" && GOTOOLCHAIN=local FIXTURE_OUT="$out" go test -count=1 -run TestMakeLogFixture ./test/e2e/)
rm -rf "$here/data" "$here/bundles" "$here/artifacts"
mkdir -p "$here/data/log"
cp -r "$out/bundles" "$out/artifacts" "$out/checkpoint" "$out/trusted_root.json" "$here/"
cp "$out/data/hallmark.db" "$here/data/"
cp "$out/data/log/key" "$out/data/log/tsa.pem" "$here/data/log/"

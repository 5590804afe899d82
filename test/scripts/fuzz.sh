#!/usr/bin/env bash
# fuzz.sh: runs every fuzz target of the module (each `func Fuzz...` in a
# _test.go file) with `go test -fuzz`, one after another, for FUZZTIME each
# (default 60s). Each starts from its committed corpus,
# PKG/testdata/fuzz/TARGET, plus what earlier runs found (Go's fuzz cache).
# With FUZZ_SAVE=1 the inputs fuzzing found (at most FUZZ_SAVE_MAX per
# target, default 100: `go test` runs every committed one) are copied into
# the committed corpus. An input that fails is written to testdata/fuzz by
# Go; the script goes on with the other targets and fails at the end,
# naming them.
#
#   FUZZTIME=10m FUZZ_ONLY=FuzzOpen ./test/scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
fuzztime=${FUZZTIME:-60s}
only=${FUZZ_ONLY:-} # a target name, or DIR:NAME (./attest/tsa:FuzzVerify)
# The outbox and store targets write files: on tmpfs fsync costs nothing.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
module=$(go list -m)
cache=$(go env GOCACHE)/fuzz
failed=()
ran=0
while IFS=: read -r file name; do
  [ -n "$only" ] && [ "$name" != "$only" ] && [ "$(dirname "$file"):$name" != "$only" ] && continue
  dir=$(dirname "$file")
  pkg=$module/${dir#./}
  [ "$dir" = . ] && pkg=$module
  echo "fuzz: $pkg $name for $fuzztime" >&2
  ran=$((ran + 1))
  if ! nice go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime 10s -timeout 3h "$dir"; then
    failed+=("$pkg $name")
  fi
  if [ "${FUZZ_SAVE:-}" = 1 ] && [ -d "$cache/$pkg/$name" ]; then
    mkdir -p "$dir/testdata/fuzz/$name"
    have=$(ls "$dir/testdata/fuzz/$name" | wc -l)
    ls "$cache/$pkg/$name" | head -n $(( ${FUZZ_SAVE_MAX:-100} > have ? ${FUZZ_SAVE_MAX:-100} - have : 0 )) |
      while read -r f; do cp -n "$cache/$pkg/$name/$f" "$dir/testdata/fuzz/$name/"; done
  fi
done < <(grep -rHo --include='*_test.go' --exclude-dir=.tools --exclude-dir=.git '^func Fuzz[A-Za-z0-9_]*' . |
  sed 's/:func /:/' | sort -u)
[ "$ran" -gt 0 ] || { echo "fuzz: no target ran" >&2; exit 1; }
if [ ${#failed[@]} -gt 0 ]; then
  printf 'fuzz: FAILED %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "fuzz: $ran targets, $fuzztime each, no failure" >&2

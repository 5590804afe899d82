#!/usr/bin/env bash
# install-postgres.sh: installs Debian's PostgreSQL server when its programs
# (initdb, postgres) are missing, for the tests' private instances
# (test/pgtest). The package's own cluster is not used.
set -euo pipefail
have() {
  { command -v initdb && command -v postgres; } >/dev/null 2>&1 && return 0
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && return 0
  done
  return 1
}
have && exit 0
echo "install-postgres: installing Debian's postgresql package" >&2
"$(dirname "$0")/apt-install.sh" postgresql
have || { echo "install-postgres: initdb and postgres still not found" >&2; exit 1; }

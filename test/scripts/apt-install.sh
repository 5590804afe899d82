#!/usr/bin/env bash
# apt-install.sh PKG...: installs Debian packages, refreshing the index once if needed.
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "$@" >/dev/null 2>&1 || {
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q "$@" >/dev/null
}

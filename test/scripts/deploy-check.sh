#!/usr/bin/env bash
# deploy-check.sh: checks deploy/systemd. `systemd-analyze verify` on the
# units (warnings count as failures), the sandboxing every unit must keep,
# and `validate --config` of the sample configs by freshly built daemons.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GOTOOLCHAIN=local
dir=deploy/systemd

command -v systemd-analyze >/dev/null || ./test/scripts/apt-install.sh systemd

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/bin/" ./cmd/hallmark-server ./cmd/hallmark-agent

# The units name /usr/local/bin, where nothing need be installed here:
# verify copies that name the binaries just built (verify checks that
# every Exec* command exists and is executable).
for unit in hallmark-server hallmark-agent; do
  sed "s#/usr/local/bin/#$tmp/bin/#g" "$dir/$unit.service" >"$tmp/$unit.service"
done
out=$(cd "$tmp" && systemd-analyze verify --man=no ./hallmark-server.service ./hallmark-agent.service 2>&1) || {
  echo "$out"; echo "deploy-check: systemd-analyze verify failed"; exit 1; }
[ -z "$out" ] || { echo "$out"; echo "deploy-check: systemd-analyze verify warned"; exit 1; }

# require UNIT LINE...: each line must appear in the unit exactly.
require() {
  local unit=$1; shift
  for line in "$@"; do
    grep -qxF "$line" "$dir/$unit" || { echo "deploy-check: $unit lacks '$line'"; exit 1; }
  done
}
for unit in hallmark-server.service hallmark-agent.service; do
  require "$unit" NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes
done
require hallmark-server.service ProtectHome=yes CapabilityBoundingSet= AmbientCapabilities= StateDirectory=hallmark-server
require hallmark-agent.service ProtectHome=read-only \
  "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_SETUID CAP_SETGID CAP_NET_ADMIN" \
  "AmbientCapabilities=CAP_SYS_PTRACE CAP_SETUID CAP_SETGID CAP_NET_ADMIN" \
  "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" \
  RuntimeDirectory=hallmark RuntimeDirectoryMode=0750 StateDirectory=hallmark-agent
grep -q 'socket_path *= *"/run/hallmark/agent.sock"' "$dir/agent.hcl" || { echo "deploy-check: agent.hcl: socket_path is not in RuntimeDirectory"; exit 1; }

"$tmp/bin/hallmark-server" validate --config "$dir/server.hcl"
# socket_group must name a group that exists where the agent runs (group
# "ci" on a runner); on a host without it, validate the same file with
# the current user's primary group instead, and say so.
agentconf=$dir/agent.hcl
if ! getent group ci >/dev/null; then
  group=$(id -gn)
  sed "s/socket_group *= *\"ci\"/socket_group        = \"$group\"/" "$agentconf" >"$tmp/agent.hcl"
  echo "deploy-check: no group ci here; validating agent.hcl with socket_group = \"$group\""
  agentconf=$tmp/agent.hcl
fi
"$tmp/bin/hallmark-agent" validate --config "$agentconf"
echo "deploy-check: ok"

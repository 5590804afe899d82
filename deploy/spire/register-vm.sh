#!/bin/sh
# register-vm.sh PARENT_ID: SPIRE registration entries for hallmark-server
# and hallmark-agent on VMs (deploy/systemd). Each daemon is pinned to what
# a build step cannot be: the daemons' own uid (user hallmark, which no step
# runs as), the binary's path, and its sha256 (re-run after every upgrade;
# the old entries then match nothing). The test harness runs this very
# script, so what the docs say is what the tests exercise.
#
# Environment:
#   HALLMARK_TRUST_DOMAIN  trust domain (default example.org)
#   HALLMARK_UID           the daemons' uid (default: that of user hallmark)
#   HALLMARK_SERVER_BIN    hallmark-server (default /usr/local/bin/hallmark-server)
#   HALLMARK_AGENT_BIN     hallmark-agent (default /usr/local/bin/hallmark-agent)
#   HALLMARK_AGENT_NAME    the agent's name in its SPIFFE ID (default: short host name)
#   HALLMARK_SVID_TTL      X509-SVID lifetime in seconds (default: SPIRE's)
#   SPIRE_SERVER           the spire-server command (default spire-server)
#   SPIRE_SERVER_SOCKET    its admin socket (default: spire-server's)
set -eu
[ $# -eq 1 ] || { echo "usage: $0 PARENT_ID" >&2; exit 2; }
parent=$1
td=${HALLMARK_TRUST_DOMAIN:-example.org}
uid=${HALLMARK_UID:-$(id -u hallmark)}
server_bin=${HALLMARK_SERVER_BIN:-/usr/local/bin/hallmark-server}
agent_bin=${HALLMARK_AGENT_BIN:-/usr/local/bin/hallmark-agent}
name=${HALLMARK_AGENT_NAME:-$(hostname -s)}

sha256() { sha256sum "$1" | cut -d' ' -f1; }
entry() {
  ${SPIRE_SERVER:-spire-server} entry create -parentID "$parent" "$@" \
    ${SPIRE_SERVER_SOCKET:+-socketPath "$SPIRE_SERVER_SOCKET"} ${HALLMARK_SVID_TTL:+-x509SVIDTTL "$HALLMARK_SVID_TTL"}
}

entry -spiffeID "spiffe://$td/hallmark/server" -dns hallmark-server \
  -selector "unix:uid:$uid" -selector "unix:path:$server_bin" -selector "unix:sha256:$(sha256 "$server_bin")"
entry -spiffeID "spiffe://$td/hallmark/agent/$name" \
  -selector "unix:uid:$uid" -selector "unix:path:$agent_bin" -selector "unix:sha256:$(sha256 "$agent_bin")"

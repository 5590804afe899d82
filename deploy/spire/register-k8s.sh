#!/bin/sh
# register-k8s.sh PARENT_ID: SPIRE registration entries for hallmark-server
# and hallmark-agent on Kubernetes (deploy/kubernetes), with SPIRE's k8s
# workload attestor. Each daemon is pinned to what a build pod cannot be:
# the hallmark namespace, the daemon's own service account and its
# container's name. Keep build pods out of the hallmark namespace (and out
# of reach of its service accounts).
#
# PARENT_ID is the SPIFFE ID the entries hang under: a node's, or a node
# alias that covers every node running the agent.
#
# Environment:
#   HALLMARK_TRUST_DOMAIN  trust domain (default example.org)
#   HALLMARK_NAMESPACE     the daemons' namespace (default hallmark)
#   HALLMARK_AGENT_NAME    the agent's name in its SPIFFE ID (default node)
#   SPIRE_SERVER           the spire-server command (default spire-server)
#   SPIRE_SERVER_SOCKET    its admin socket (default: spire-server's)
set -eu
[ $# -eq 1 ] || { echo "usage: $0 PARENT_ID" >&2; exit 2; }
parent=$1
td=${HALLMARK_TRUST_DOMAIN:-example.org}
ns=${HALLMARK_NAMESPACE:-hallmark}
name=${HALLMARK_AGENT_NAME:-node}

entry() {
  ${SPIRE_SERVER:-spire-server} entry create -parentID "$parent" "$@" \
    ${SPIRE_SERVER_SOCKET:+-socketPath "$SPIRE_SERVER_SOCKET"}
}

entry -spiffeID "spiffe://$td/hallmark/server" -dns hallmark-server \
  -selector "k8s:ns:$ns" -selector "k8s:sa:hallmark-server" -selector "k8s:container-name:hallmark-server"
entry -spiffeID "spiffe://$td/hallmark/agent/$name" \
  -selector "k8s:ns:$ns" -selector "k8s:sa:hallmark-agent" -selector "k8s:container-name:hallmark-agent"

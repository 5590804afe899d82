#!/usr/bin/env bash
# verify-step.sh STEP "PRODUCT..."
#
# Verifies offline that the bundle attest-step.sh wrote for STEP attests
# every product (files, relative to the current directory), was signed by a
# Hallmark agent for step STEP, and is in the server's transparency log.
#
# Environment:
#   HALLMARK_TRUSTED_ROOT        trusted root file; when unset it is fetched from
#   HALLMARK_SERVER_HEALTH_ADDR  hallmark-server's HTTP address (host:port)
#   HALLMARK_BUILDER_PREFIX      SPIFFE ID prefix of the agents to accept (optional,
#                                e.g. spiffe://example.org/hallmark/agent)
#   HALLMARK_BUNDLE_DIR          where the bundles are (default .hallmark)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 STEP \"PRODUCT...\"" >&2; exit 2; }
step=$1 products=$2
dir=${HALLMARK_BUNDLE_DIR:-.hallmark}
mkdir -p "$dir"

root=${HALLMARK_TRUSTED_ROOT:-}
if [ -z "$root" ]; then
  [ -n "${HALLMARK_SERVER_HEALTH_ADDR:-}" ] || { echo "$0: set HALLMARK_TRUSTED_ROOT or HALLMARK_SERVER_HEALTH_ADDR" >&2; exit 2; }
  root=$dir/trusted_root.json
  curl -fsS -o "$root" "http://$HALLMARK_SERVER_HEALTH_ADDR/trust/trusted_root.json"
fi

policy=$dir/$step.policy.json
if [ -n "${HALLMARK_BUILDER_PREFIX:-}" ]; then
  printf '{"steps": ["%s"], "builder_id_prefixes": ["%s"]}\n' "$step" "$HALLMARK_BUILDER_PREFIX" >"$policy"
else
  printf '{"steps": ["%s"]}\n' "$step" >"$policy"
fi
# shellcheck disable=SC2086 # products is a list
exec hallmark verify $products --bundle "$dir/$step.hallmark.json" --trusted-root "$root" --policy "$policy"

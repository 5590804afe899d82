#!/usr/bin/env bash
# verify-step.sh STEP "PRODUCT..."
#
# Verifies offline that the bundle attest-step.sh wrote for STEP attests
# every product (files, relative to the current directory), was signed by
# one of the agents named by HALLMARK_BUILDER_PREFIX for step STEP, and is
# in the server's transparency log.
#
# The trusted root is trust material: it is taken from a file you got over a
# channel you trust, or fetched over HTTPS (the server's certificate checked),
# or fetched over anything else only with its pinned SHA-256, which is
# checked before it is used.
#
# Environment:
#   HALLMARK_BUILDER_PREFIX       required: SPIFFE ID prefix of the agents to accept
#                                 (e.g. spiffe://example.org/hallmark/agent)
#   HALLMARK_TRUSTED_ROOT         trusted root file; when unset it is fetched from
#   HALLMARK_TRUSTED_ROOT_URL     https://... (or http://... with the digest below)
#   HALLMARK_TRUSTED_ROOT_CA      CA bundle for an https URL (default: the system's)
#   HALLMARK_TRUSTED_ROOT_SHA256  the trusted root's SHA-256 (hex): required unless
#                                 the URL is https; checked whenever it is set
#   HALLMARK_BUNDLE_DIR           where the bundles are (default .hallmark)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 STEP \"PRODUCT...\"" >&2; exit 2; }
step=$1 products=$2
dir=${HALLMARK_BUNDLE_DIR:-.hallmark}
mkdir -p "$dir"
[ -n "${HALLMARK_BUILDER_PREFIX:-}" ] || { echo "$0: set HALLMARK_BUILDER_PREFIX: the agents whose attestations to accept" >&2; exit 2; }
pin=${HALLMARK_TRUSTED_ROOT_SHA256:-}

root=${HALLMARK_TRUSTED_ROOT:-}
if [ -z "$root" ]; then
  url=${HALLMARK_TRUSTED_ROOT_URL:-}
  [ -n "$url" ] || { echo "$0: set HALLMARK_TRUSTED_ROOT or HALLMARK_TRUSTED_ROOT_URL" >&2; exit 2; }
  root=$dir/trusted_root.json
  case $url in
    https://*)
      curl -fsS --proto '=https' --tlsv1.2 ${HALLMARK_TRUSTED_ROOT_CA:+--cacert "$HALLMARK_TRUSTED_ROOT_CA"} -o "$root" "$url" ;;
    *)
      [ -n "$pin" ] || { echo "$0: $url is not authenticated: set HALLMARK_TRUSTED_ROOT_SHA256 to the trusted root's pinned digest, or use https" >&2; exit 2; }
      curl -fsS -o "$root" "$url" ;;
  esac
fi
if [ -n "$pin" ]; then
  got=$(sha256sum "$root" | cut -d' ' -f1)
  [ "$got" = "$pin" ] || { echo "$0: trusted root $root has digest $got, not the pinned $pin: refusing it" >&2; exit 1; }
fi

policy=$dir/$step.policy.json
printf '{"steps": ["%s"], "builder_id_prefixes": ["%s"]}\n' "$step" "$HALLMARK_BUILDER_PREFIX" >"$policy"
# shellcheck disable=SC2086 # products is a list
exec hallmark verify $products --bundle "$dir/$step.hallmark.json" --trusted-root "$root" --policy "$policy"

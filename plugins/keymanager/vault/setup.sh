#!/usr/bin/env bash
# setup.sh: sets Vault (or OpenBao) up for Hallmark's vault key manager: a PKI
# mount with an EC root, the agents' role, the server's policies, and the
# auth method the server logs in with (its X509-SVID by cert auth, or a
# JWT-SVID by jwt auth). The tests run exactly this script against a real
# OpenBao server. Safe to run again: it creates what is missing and rewrites
# the role, policies and auth role.
#
# Needs the `vault` (or `bao`) CLI and, as for that CLI, VAULT_ADDR,
# VAULT_TOKEN (a token that may mount and write policies) and VAULT_CACERT.
# Settings (environment; defaults in brackets):
#   TRUST_DOMAIN       SPIFFE trust domain [example.org]
#   AGENT_PATH_PREFIX  agents' SPIFFE ID path prefix [/hallmark/agent]
#   SERVER_ID          hallmark-server's SPIFFE ID [spiffe://TRUST_DOMAIN/hallmark/server]
#   PKI_MOUNT          PKI mount path (key manager pki_mount) [pki]
#   ROLE               PKI role (key manager role) [hallmark-agent]
#   CA_COMMON_NAME     the root's common name [Hallmark signing CA]
#   MAX_TTL            longest agent certificate Vault issues [1h]
#   POLICY             the server's policy; POLICY-rotation is the rotation one [hallmark-server]
#   ROTATION           yes: the server may also rotate the signing CA [no]
#   AUTH               cert or jwt [cert]
#   AUTH_MOUNT         auth mount path (key manager auth mount) [AUTH]
#   AUTH_ROLE          auth role (key manager auth role) [hallmark-server]
#   TOKEN_TTL          lifetime of the server's Vault token [10m]
#   SPIRE_BUNDLE       cert: PEM file of SPIRE's X.509 authorities (spire-server bundle show -format pem)
#   JWT_KEYS           jwt: PEM file of the public keys of SPIRE's JWT authorities
#   JWT_AUDIENCE       jwt: audience of the server's JWT-SVID (key manager audience) [vault]
set -euo pipefail

vault=${VAULT_CLI:-$(command -v vault || command -v bao || echo vault)}
TRUST_DOMAIN=${TRUST_DOMAIN:-example.org}
AGENT_PATH_PREFIX=${AGENT_PATH_PREFIX:-/hallmark/agent}
SERVER_ID=${SERVER_ID:-spiffe://$TRUST_DOMAIN/hallmark/server}
PKI_MOUNT=${PKI_MOUNT:-pki}
ROLE=${ROLE:-hallmark-agent}
CA_COMMON_NAME=${CA_COMMON_NAME:-Hallmark signing CA}
MAX_TTL=${MAX_TTL:-1h}
POLICY=${POLICY:-hallmark-server}
ROTATION=${ROTATION:-no}
AUTH=${AUTH:-cert}
AUTH_MOUNT=${AUTH_MOUNT:-$AUTH}
AUTH_ROLE=${AUTH_ROLE:-hallmark-server}
TOKEN_TTL=${TOKEN_TTL:-10m}
JWT_AUDIENCE=${JWT_AUDIENCE:-vault}

# 1. PKI: a mount with an EC P-256 root that stays the default issuer
#    until `hallmark admin rotate signing activate` moves it.
if ! "$vault" secrets list -format=json | grep -F "\"$PKI_MOUNT/\"" >/dev/null; then
  "$vault" secrets enable -path="$PKI_MOUNT" -max-lease-ttl=87600h pki
fi
if ! "$vault" read -field=issuer_id "$PKI_MOUNT/issuer/default" >/dev/null 2>&1; then
  "$vault" write -field=issuer_id "$PKI_MOUNT/root/generate/internal" \
    common_name="$CA_COMMON_NAME" key_type=ec key_bits=256 ttl=87600h issuer_name=root-1
  echo
fi
"$vault" write "$PKI_MOUNT/config/issuers" \
  default="$("$vault" read -field=default "$PKI_MOUNT/config/issuers")" default_follows_latest_issuer=false >/dev/null

# 2. The agents' role: EC keys, the agent's SPIFFE ID as the only name
#    (the server passes it; nothing in a CSR is used), code signing only.
"$vault" write "$PKI_MOUNT/roles/$ROLE" \
  key_type=ec key_bits=256 key_usage=DigitalSignature ext_key_usage="" \
  code_signing_flag=true server_flag=false client_flag=false \
  allowed_uri_sans="spiffe://$TRUST_DOMAIN$AGENT_PATH_PREFIX/*" \
  allowed_domains="" allow_bare_domains=false allow_subdomains=false allow_localhost=false \
  allow_ip_sans=false allow_any_name=false enforce_hostnames=true \
  require_cn=false use_csr_common_name=false use_csr_sans=false \
  issuer_ref=default max_ttl="$MAX_TTL" no_store=true >/dev/null

# 3. Policies. The server signs with the role and reads the issuers at
#    start (LIST PKI_MOUNT/issuers needs no token).
"$vault" policy write "$POLICY" - <<POLICY
path "$PKI_MOUNT/sign/$ROLE"     { capabilities = ["update"] }
path "$PKI_MOUNT/config/issuers" { capabilities = ["read"] }
path "$PKI_MOUNT/issuer/+"       { capabilities = ["read"] }
POLICY
# Signing-CA rotation (hallmark admin rotate signing prepare|activate|revoke),
# granted only where the server drives rotation (ROTATION=yes).
"$vault" policy write "$POLICY-rotation" - <<POLICY
path "$PKI_MOUNT/root/rotate/internal" { capabilities = ["update"] }
path "$PKI_MOUNT/config/issuers"       { capabilities = ["read", "update"] }
path "$PKI_MOUNT/issuer/+/revoke"      { capabilities = ["update"] }
POLICY
policies=$POLICY
[ "$ROTATION" = yes ] && policies="$POLICY,$POLICY-rotation"

# 4. How the server logs in.
if ! "$vault" auth list -format=json | grep -F "\"$AUTH_MOUNT/\"" >/dev/null; then
  "$vault" auth enable -path="$AUTH_MOUNT" "$AUTH"
fi
case $AUTH in
cert)
  # Trust SPIRE's bundle, for the server's SPIFFE ID only. Vault names the
  # login after the certificate's CN, so the server's SVID needs one:
  # register hallmark-server with -dns (its first DNS name becomes the CN).
  # Run again when SPIRE's X.509 authorities change.
  : "${SPIRE_BUNDLE:?cert auth needs SPIRE_BUNDLE, a PEM file of the X.509 authorities of SPIRE}"
  "$vault" write "auth/$AUTH_MOUNT/certs/$AUTH_ROLE" certificate=@"$SPIRE_BUNDLE" \
    allowed_uri_sans="$SERVER_ID" token_policies="$policies" token_no_default_policy=true \
    token_ttl="$TOKEN_TTL" token_max_ttl="$TOKEN_TTL"
  ;;
jwt)
  # Verify JWT-SVIDs with the public keys of SPIRE's JWT authorities (ES256
  # for SPIRE's default EC P-256 keys). Run again when SPIRE's JWT
  # authorities change.
  : "${JWT_KEYS:?jwt auth needs JWT_KEYS, a PEM file of the public keys of the JWT authorities of SPIRE}"
  keys=$(awk '/-----END/ { print; printf "," ; next } { print }' "$JWT_KEYS" | sed '$ s/,$//')
  "$vault" write "auth/$AUTH_MOUNT/config" jwt_validation_pubkeys="$keys" jwt_supported_algs=ES256,ES384,RS256
  "$vault" write "auth/$AUTH_MOUNT/role/$AUTH_ROLE" role_type=jwt user_claim=sub \
    bound_subject="$SERVER_ID" bound_audiences="$JWT_AUDIENCE" \
    token_policies="$policies" token_no_default_policy=true token_ttl="$TOKEN_TTL" token_max_ttl="$TOKEN_TTL"
  ;;
*)
  echo "setup.sh: AUTH must be cert or jwt, not $AUTH" >&2
  exit 1
  ;;
esac

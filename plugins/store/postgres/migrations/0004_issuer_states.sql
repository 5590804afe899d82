-- 0004: signing-CA rotation's decisions per issuing CA (by the SHA-256 of
-- its certificate): when it was tainted and from when it is revoked, Unix
-- seconds, 0 for none.
CREATE TABLE issuer_states (
  fingerprint BYTEA  PRIMARY KEY,
  tainted_at  BIGINT NOT NULL DEFAULT 0,
  revoked_at  BIGINT NOT NULL DEFAULT 0
);

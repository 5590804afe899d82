-- 0002: the RFC 3161 timestamp of each entry's signature (DER
-- TimeStampResp), granted by the server's timestamp authority when the
-- log accepted the entry. Entries of version 1 have none (empty).
ALTER TABLE entries ADD COLUMN signed_timestamp BYTEA NOT NULL DEFAULT ''::bytea;

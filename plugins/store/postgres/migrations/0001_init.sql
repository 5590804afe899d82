-- 0001: the log and the signing CAs, the shape of the sqlite store's
-- schema with PostgreSQL's types.
--
--   entries:         one row per log entry; dedupe_key makes a
--                    resubmission find the entry it already has.
--   nodes:           the hash of every perfect subtree (level 0 are the
--                    leaves), so that proofs are lookups.
--   checkpoints:     one signed checkpoint per appended batch; the largest
--                    size is the log's head.
--   signing_roots:   the signing CA chains the server has issued with.
--   subject_digests: sha256 subject digests of each entry's statement.
CREATE TABLE entries (
  idx             BIGINT PRIMARY KEY,
  leaf_hash       BYTEA  NOT NULL,
  dedupe_key      BYTEA  NOT NULL UNIQUE,
  body            BYTEA  NOT NULL,
  envelope        BYTEA  NOT NULL,
  certificate     BYTEA  NOT NULL,
  spiffe_id       TEXT   NOT NULL,
  integrated_time BIGINT NOT NULL
);
CREATE TABLE nodes (
  level INTEGER NOT NULL,
  idx   BIGINT  NOT NULL,
  hash  BYTEA   NOT NULL,
  PRIMARY KEY (level, idx)
);
CREATE TABLE checkpoints (
  size BIGINT PRIMARY KEY,
  note BYTEA  NOT NULL
);
CREATE TABLE signing_roots (
  id         BYTEA  PRIMARY KEY,
  der        BYTEA  NOT NULL,
  not_before BIGINT NOT NULL,
  not_after  BIGINT NOT NULL,
  first_seen BIGINT NOT NULL
);
CREATE TABLE subject_digests (
  digest BYTEA  NOT NULL,
  idx    BIGINT NOT NULL,
  PRIMARY KEY (digest, idx)
);

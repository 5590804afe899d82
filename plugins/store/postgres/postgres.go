// Package postgres is hallmark-server's PostgreSQL store
// (github.com/jackc/pgx/v5), for several server replicas sharing one log.
//
// The log stays one linear Merkle log however many processes append: an
// append takes a transaction-scoped advisory lock (pg_advisory_xact_lock)
// before it reads the log's head, so appenders run one at a time, and a
// batch that does not continue the head it finds is refused with
// store.ErrConflict before anything is written. Both happen in a function
// the migrations create (hallmark_begin_append), so that a whole append
// (BEGIN, lock and check, inserts, COMMIT) is one pipelined round trip. The primary keys on
// entries.idx, nodes and checkpoints.size back the lock up: two batches
// for the same index can never both commit. Commits are synchronous (as
// the server's synchronous_commit says; keep it on): a signed checkpoint
// the log has returned is on disk.
//
// The schema is versioned: forward-only migrations embedded in the binary
// (migrations/NNNN_name.sql) are applied at Open in one transaction under
// another advisory lock, so replicas starting together apply each once,
// and recorded in schema_migrations. A database newer than the binary is
// refused. Tables live in the first schema of the connection's
// search_path.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hallmark-dev/hallmark/plugins/store"
	"github.com/hallmark-dev/hallmark/plugins/store/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations are the schema versions this binary knows, in order.
func Migrations() []migrate.Migration {
	ms, err := migrate.Parse(migrationFiles, "migrations")
	if err != nil { // the files are embedded: a broken one fails every test
		panic(err)
	}
	return ms
}

// Advisory lock keys: (lockClass, hash of the schema and the purpose), so
// logs in different schemas of one database do not wait for each other.
const lockClass = 0x484c4d4b // "HLMK"

// Config configures the store.
type Config struct {
	// DSN is a libpq connection string (keyword/value or URL); pgxpool's
	// pool_* parameters are accepted. It is never logged.
	DSN string
	// MustExist refuses a database without the current schema instead
	// of creating or migrating it (for offline tools such as trust
	// export).
	MustExist bool
	// SchemaVersion, if not zero, holds the schema at that version: the
	// migrations after it are not applied (upgrade tests, and rollouts
	// that keep an older binary working on the database for a while).
	SchemaVersion int
}

// Store is a PostgreSQL-backed store. Its methods are safe for concurrent
// use, also from several processes on one database.
type Store struct {
	pool    *pgxpool.Pool
	logLock int32 // the advisory lock appenders take
}

// Open connects to cfg.DSN and brings the schema up to date.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.DSN == "" {
		return nil, errors.New("postgres: dsn is required")
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN) // its errors redact the password
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	known := Migrations()
	if v := cfg.SchemaVersion; v != 0 {
		if v < 0 || v > len(known) {
			pool.Close()
			return nil, fmt.Errorf("postgres: schema version %d: this binary knows 1 to %d", v, len(known))
		}
		known = known[:v]
	}
	s := &Store{pool: pool}
	if err := s.init(ctx, cfg.MustExist, known); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// CheckDSN reports whether dsn parses, without connecting. Its error
// never holds the password.
func CheckDSN(dsn string) error {
	_, err := pgxpool.ParseConfig(dsn)
	return err
}

func lockKey(schema, purpose string) int32 {
	h := fnv.New32a()
	h.Write([]byte(schema + "\x00" + purpose))
	return int32(h.Sum32())
}

func (s *Store) init(ctx context.Context, mustExist bool, known []migrate.Migration) error {
	var schema *string
	if err := s.pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return fmt.Errorf("postgres: connect: %w", err)
	}
	if schema == nil {
		return errors.New("postgres: no schema to use: the search_path names no existing schema")
	}
	s.logLock = lockKey(*schema, "log")
	if mustExist {
		return checkSchema(ctx, s.pool, known)
	}
	return migrateSchema(ctx, s.pool, lockKey(*schema, "migrate"), known)
}

// schemaVersion is the database's schema version: 0 when it has none.
func schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass(quote_ident(current_schema()) || '.schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("postgres: schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := q.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("postgres: schema version: %w", err)
	}
	return v, nil
}

func checkSchema(ctx context.Context, pool *pgxpool.Pool, known []migrate.Migration) error {
	v, err := schemaVersion(ctx, pool)
	if err != nil {
		return err
	}
	switch {
	case v == 0:
		return errors.New("postgres: the database has no hallmark schema (hallmark-server creates it when it starts)")
	case v < len(known):
		return fmt.Errorf("postgres: the database schema is at version %d, this binary's is %d (hallmark-server migrates it when it starts)", v, len(known))
	case v > len(known):
		_, err := migrate.Plan(v, known)
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

// migrateSchema applies the migrations the database lacks, all in one
// transaction under an advisory lock: concurrent starters wait, and then
// find nothing left to do.
func migrateSchema(ctx context.Context, pool *pgxpool.Pool, lock int32, known []migrate.Migration) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, int32(lockClass), lock); err != nil {
			return fmt.Errorf("postgres: lock for migrations: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT    NOT NULL,
  applied_at BIGINT  NOT NULL
)`); err != nil {
			return fmt.Errorf("postgres: create schema_migrations: %w", err)
		}
		v, err := schemaVersion(ctx, tx)
		if err != nil {
			return err
		}
		plan, err := migrate.Plan(v, known)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		for _, m := range plan {
			// The simple protocol runs a file of several statements.
			if _, err := tx.Conn().PgConn().Exec(ctx, m.SQL).ReadAll(); err != nil {
				return fmt.Errorf("postgres: migration %s: %w", m.Name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
				m.Version, m.Name, time.Now().Unix()); err != nil {
				return fmt.Errorf("postgres: record migration %s: %w", m.Name, err)
			}
		}
		return nil
	})
}

// Close closes the connection pool.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// The batch inserts take one array per column (unnest), so each is one
// statement, prepared once, whatever the batch's size.
const (
	insertEntries = `INSERT INTO entries (idx, leaf_hash, dedupe_key, body, envelope, certificate, spiffe_id, integrated_time, signed_timestamp)
SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[], $7::text[], $8::bigint[], $9::bytea[])`
	insertDigests = `INSERT INTO subject_digests (digest, idx) SELECT * FROM unnest($1::bytea[], $2::bigint[]) ON CONFLICT DO NOTHING`
	insertNodes   = `INSERT INTO nodes (level, idx, hash) SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])`
)

// AppendBatch commits b in one transaction, after every other appender's
// (an advisory lock orders them). It fails with store.ErrConflict unless
// b continues the log from its latest checkpoint: entries numbered from
// that size on, and a checkpoint for the size they reach.
func (s *Store) AppendBatch(ctx context.Context, b store.Batch) error {
	n := len(b.Entries)
	var (
		idx                               = make([]int64, n)
		leaf, key, body, envelope, certif = make([][]byte, n), make([][]byte, n), make([][]byte, n), make([][]byte, n), make([][]byte, n)
		timestamp                         = make([][]byte, n)
		spiffeID                          = make([]string, n)
		integrated                        = make([]int64, n)
		digests                           [][]byte
		digestIdx                         []int64
		nodeLevel                         = make([]int32, len(b.Nodes))
		nodeIdx                           = make([]int64, len(b.Nodes))
		nodeHash                          = make([][]byte, len(b.Nodes))
	)
	for i, e := range b.Entries {
		idx[i], leaf[i], key[i], body[i], envelope[i], certif[i], spiffeID[i], integrated[i], timestamp[i] =
			int64(e.Index), e.LeafHash, e.DedupeKey, e.Body, e.Envelope, e.Certificate, e.SPIFFEID, e.IntegratedTime, nonNil(e.Timestamp)
		for _, d := range e.SubjectDigests {
			digests, digestIdx = append(digests, d), append(digestIdx, int64(e.Index))
		}
	}
	for i, nd := range b.Nodes {
		nodeLevel[i], nodeIdx[i], nodeHash[i] = int32(nd.Level), int64(nd.Index), nd.Hash
	}

	// The batch must continue the log from prev; whether the log is at
	// prev is checked under the lock (hallmark_begin_append).
	if b.Checkpoint.Size < uint64(n) {
		return fmt.Errorf("%w: batch of %d entries for size %d", store.ErrConflict, n, b.Checkpoint.Size)
	}
	prev := b.Checkpoint.Size - uint64(n)
	for i, e := range b.Entries {
		if e.Index != prev+uint64(i) {
			return fmt.Errorf("%w: entry %d in a batch from %d", store.ErrConflict, e.Index, prev)
		}
	}

	// One round trip: BEGIN, lock and check, inserts, COMMIT, pipelined.
	// The first error skips the rest (the server discards the pipeline
	// up to its end), and the transaction is rolled back.
	q := &pgx.Batch{}
	q.Queue(`BEGIN`)
	q.Queue(`SELECT hallmark_begin_append($1, $2, $3, $4)`, int32(lockClass), s.logLock, int64(prev), int64(n))
	if n > 0 {
		q.Queue(insertEntries, idx, leaf, key, body, envelope, certif, spiffeID, integrated, timestamp)
	}
	if len(digests) > 0 {
		q.Queue(insertDigests, digests, digestIdx)
	}
	if len(b.Nodes) > 0 {
		q.Queue(insertNodes, nodeLevel, nodeIdx, nodeHash)
	}
	q.Queue(`INSERT INTO checkpoints (size, note) VALUES ($1, $2)`, int64(b.Checkpoint.Size), b.Checkpoint.Note)
	q.Queue(`COMMIT`).Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" { // a COMMIT of a failed transaction rolls back
			return fmt.Errorf("postgres: the append was rolled back (%s)", tag)
		}
		return nil
	})

	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	// Released with a transaction open (after a failure whose rollback
	// failed too), the connection is closed rather than reused.
	defer conn.Release()
	if err := conn.SendBatch(ctx, q).Close(); err != nil {
		if conn.Conn().PgConn().TxStatus() != 'I' {
			conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`) //nolint:errcheck // see Release above
		}
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe) && pe.Code == headMoved:
			return fmt.Errorf("%w: %s", store.ErrConflict, pe.Message)
		case errors.As(err, &pe) && pe.Code == uniqueViolation && pe.ConstraintName == "entries_dedupe_key_key":
			return fmt.Errorf("%w (in entries %d to %d)", store.ErrDuplicate, prev, prev+uint64(n)-1)
		case errors.As(err, &pe) && pe.Code == uniqueViolation:
			// Only a writer that ignored the lock gets here.
			return fmt.Errorf("%w: %s", store.ErrConflict, pe.Message)
		}
		return fmt.Errorf("postgres: append: %w", err)
	}
	return nil
}

// headMoved is the SQLSTATE hallmark_begin_append raises for a batch
// that does not continue the log.
const headMoved = "HL409"

// uniqueViolation is SQLSTATE unique_violation.
const uniqueViolation = "23505"

// LatestCheckpoint returns the checkpoint of the largest tree, or
// store.ErrNotFound on a new database.
func (s *Store) LatestCheckpoint(ctx context.Context) (store.Checkpoint, error) {
	var size int64
	var note []byte
	err := s.pool.QueryRow(ctx, `SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1`).Scan(&size, &note)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Checkpoint{}, store.ErrNotFound
	}
	if err != nil {
		return store.Checkpoint{}, fmt.Errorf("postgres: latest checkpoint: %w", err)
	}
	return store.Checkpoint{Size: uint64(size), Note: note}, nil
}

// Nodes returns the hashes of ids, in order, from one statement (one
// snapshot). A missing node is an error wrapping store.ErrNotFound.
func (s *Store) Nodes(ctx context.Context, ids []store.NodeID) ([][]byte, error) {
	if len(ids) == 0 {
		return [][]byte{}, nil
	}
	levels, idxs := make([]int32, len(ids)), make([]int64, len(ids))
	for i, id := range ids {
		levels[i], idxs[i] = int32(id.Level), int64(id.Index)
	}
	rows, err := s.pool.Query(ctx, `SELECT n.hash FROM unnest($1::integer[], $2::bigint[]) WITH ORDINALITY AS q(level, idx, ord)
LEFT JOIN nodes n ON n.level = q.level AND n.idx = q.idx ORDER BY q.ord`, levels, idxs)
	if err != nil {
		return nil, fmt.Errorf("postgres: nodes: %w", err)
	}
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, fmt.Errorf("postgres: nodes: %w", err)
	}
	if len(hashes) != len(ids) {
		return nil, fmt.Errorf("postgres: nodes: %d rows for %d ids", len(hashes), len(ids))
	}
	for i, h := range hashes {
		if h == nil {
			return nil, fmt.Errorf("postgres: node (%d, %d): %w", ids[i].Level, ids[i].Index, store.ErrNotFound)
		}
	}
	return hashes, nil
}

const entryColumns = `e.idx, e.leaf_hash, e.dedupe_key, e.body, e.envelope, e.certificate, e.spiffe_id, e.integrated_time, e.signed_timestamp`

// nonNil keeps a NOT NULL bytea column from receiving NULL for an absent
// value.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// EntriesByDedupeKey returns the entries whose dedupe keys are among keys,
// in no particular order.
func (s *Store) EntriesByDedupeKey(ctx context.Context, keys [][]byte) ([]store.Entry, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return s.queryEntries(ctx, `SELECT `+entryColumns+` FROM entries e WHERE e.dedupe_key = ANY($1::bytea[])`, keys)
}

// EntriesBySubjectDigest returns the entries q selects (server.Store).
// With builders, it first takes at most q.MaxScan indexes naming the
// digest (a materialized scan, so that the planner cannot read every
// entry naming it to sort them), and keeps those whose builder is q's. A
// builder is compared byte for byte, whatever the database's collation:
// the entry's SPIFFE ID is the builder, or its first len(builder)+1 bytes
// are the builder and a slash.
func (s *Store) EntriesBySubjectDigest(ctx context.Context, q store.SubjectQuery) (store.SubjectPage, error) {
	if q.Limit <= 0 {
		return store.SubjectPage{}, nil
	}
	if len(q.Builders) == 0 {
		entries, err := s.queryEntriesWithin(ctx, q.MaxBytes, `SELECT `+entryColumns+`
FROM subject_digests d JOIN entries e ON e.idx = d.idx
WHERE d.digest = $1 AND d.idx >= $2 ORDER BY d.idx LIMIT $3`, q.Digest, int64(q.Start), q.Limit)
		return store.SubjectPage{Entries: entries}, err
	}
	var n, last int64
	if q.MaxScan > 0 {
		if err := s.pool.QueryRow(ctx, `SELECT count(*), coalesce(max(idx), 0) FROM
(SELECT idx FROM subject_digests WHERE digest = $1 AND idx >= $2 ORDER BY idx LIMIT $3) scan`, q.Digest, int64(q.Start), q.MaxScan).Scan(&n, &last); err != nil {
			return store.SubjectPage{}, fmt.Errorf("postgres: scan entries: %w", err)
		}
	}
	end, scannedTo := q.Window(n, last)
	args := []any{q.Digest, int64(q.Start), end}
	var or []string
	for _, b := range q.Builders {
		n := len(args)
		or = append(or, fmt.Sprintf(`e.spiffe_id = $%d OR substring(convert_to(e.spiffe_id, 'UTF8') from 1 for $%d) = $%d`, n+1, n+2, n+3))
		args = append(args, b, len(b)+1, []byte(b+"/"))
	}
	entries, err := s.queryEntriesWithin(ctx, q.MaxBytes, fmt.Sprintf(`WITH scan AS MATERIALIZED (SELECT idx FROM subject_digests WHERE digest = $1 AND idx >= $2 AND idx < $3)
SELECT `+entryColumns+` FROM scan JOIN entries e ON e.idx = scan.idx
WHERE `+strings.Join(or, ` OR `)+` ORDER BY e.idx LIMIT $%d`, len(args)+1), append(args, q.Limit)...)
	if err != nil {
		return store.SubjectPage{}, err
	}
	return store.SubjectPage{Entries: entries, ScannedTo: scannedTo}, nil
}

func (s *Store) queryEntries(ctx context.Context, q string, args ...any) ([]store.Entry, error) {
	return s.queryEntriesWithin(ctx, 0, q, args...)
}

// queryEntriesWithin reads the entries q selects, stopping before the one
// that would take their total size (store.Entry.Size) past maxBytes; the
// first is always read. maxBytes 0 is no bound.
func (s *Store) queryEntriesWithin(ctx context.Context, maxBytes int, q string, args ...any) ([]store.Entry, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: query entries: %w", err)
	}
	defer rows.Close()
	var out []store.Entry
	total := 0
	for rows.Next() {
		var e store.Entry
		var idx int64
		if err := rows.Scan(&idx, &e.LeafHash, &e.DedupeKey, &e.Body, &e.Envelope, &e.Certificate, &e.SPIFFEID, &e.IntegratedTime, &e.Timestamp); err != nil {
			return nil, fmt.Errorf("postgres: read entry: %w", err)
		}
		e.Index = uint64(idx)
		if total += e.Size(); maxBytes > 0 && len(out) > 0 && total > maxBytes {
			break
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: read entries: %w", err)
	}
	return out, nil
}

// AddSigningCA records ca unless a CA with its ID is already there (whose
// FirstSeen is then kept).
func (s *Store) AddSigningCA(ctx context.Context, ca store.SigningCA) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO signing_roots (id, der, not_before, not_after, first_seen) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING`,
		ca.ID, ca.DER, ca.NotBefore.Unix(), ca.NotAfter.Unix(), ca.FirstSeen.Unix())
	if err != nil {
		return fmt.Errorf("postgres: record signing CA: %w", err)
	}
	return nil
}

// SigningCAs returns every recorded signing CA, oldest first.
func (s *Store) SigningCAs(ctx context.Context) ([]store.SigningCA, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, der, not_before, not_after, first_seen FROM signing_roots ORDER BY first_seen, id`)
	if err != nil {
		return nil, fmt.Errorf("postgres: signing CAs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.SigningCA, error) {
		var ca store.SigningCA
		var nb, na, fs int64
		err := r.Scan(&ca.ID, &ca.DER, &nb, &na, &fs)
		ca.NotBefore, ca.NotAfter, ca.FirstSeen = time.Unix(nb, 0).UTC(), time.Unix(na, 0).UTC(), time.Unix(fs, 0).UTC()
		return ca, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read signing CAs: %w", err)
	}
	return out, nil
}

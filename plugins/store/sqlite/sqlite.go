// Package sqlite is hallmark-server's embedded store: one SQLite database
// file (modernc.org/sqlite, no cgo) in WAL mode, written through a single
// connection and read through a small pool. Commits are synchronous
// (synchronous=FULL): once a batch's checkpoint is signed and returned, it
// survives a crash or a power cut, so the log can never sign two different
// trees of the same size.
//
// The SQL is kept portable (no AUTOINCREMENT, no WITHOUT ROWID, no INSERT
// OR IGNORE, no SQLite-only functions) so that a PostgreSQL store can share
// the schema's shape; see Schema.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	sqlitedriver "modernc.org/sqlite" // also registers the "sqlite" driver

	"github.com/hallmark-dev/hallmark/internal/privdir"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// Schema is the DDL the store applies at open. The tables:
//
//   - entries: one row per log entry; dedupe_key makes a resubmission
//     find the entry it already has.
//   - nodes: the hash of every perfect subtree (level 0 are the leaves),
//     so that inclusion and consistency proofs are lookups.
//   - checkpoints: one signed checkpoint per appended batch.
//   - signing_roots: the signing CA chains the server has issued with,
//     for trust export and for checking submissions.
//   - subject_digests: sha256 subject digests of each entry's statement.
//   - issuer_states: signing-CA rotation's taint and revocation times.
//   - meta: the schema version.
const Schema = issuerStatesDDL + `;
CREATE TABLE IF NOT EXISTS meta (
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
  idx             INTEGER PRIMARY KEY,
  leaf_hash       BLOB    NOT NULL,
  dedupe_key      BLOB    NOT NULL UNIQUE,
  body            BLOB    NOT NULL,
  envelope        BLOB    NOT NULL,
  certificate     BLOB    NOT NULL,
  spiffe_id       TEXT    NOT NULL,
  integrated_time INTEGER NOT NULL,
  signed_timestamp BLOB   NOT NULL DEFAULT x''
);
CREATE TABLE IF NOT EXISTS nodes (
  level INTEGER NOT NULL,
  idx   INTEGER NOT NULL,
  hash  BLOB    NOT NULL,
  PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS checkpoints (
  size INTEGER PRIMARY KEY,
  note BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_roots (
  id         BLOB    PRIMARY KEY,
  der        BLOB    NOT NULL,
  not_before INTEGER NOT NULL,
  not_after  INTEGER NOT NULL,
  first_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subject_digests (
  digest BLOB    NOT NULL,
  idx    INTEGER NOT NULL,
  PRIMARY KEY (digest, idx)
);
-- An entry's builder, read without the entry: its blobs come first in
-- the row, and SQLite reads a column by walking what precedes it.
CREATE INDEX IF NOT EXISTS entries_builder ON entries (idx, spiffe_id);
`

// schemaVersion is recorded in meta; a database from a newer version is
// refused, one from an older version is migrated (migrations).
const schemaVersion = "3"

// migrations[v] takes a database from schema version v to v+1. Schema
// creates the latest shape directly.
var migrations = map[string]struct{ to, ddl string }{
	// 2: entries.signed_timestamp, the RFC 3161 timestamp of the
	// entry's signature (version 1 entries have none).
	"1": {"2", `ALTER TABLE entries ADD COLUMN signed_timestamp BLOB NOT NULL DEFAULT x''`},
	// 3: issuer_states, signing-CA rotation's taint and revocation times.
	"2": {"3", issuerStatesDDL},
}

// issuerStatesDDL creates the issuer_states table (times in Unix seconds,
// 0 for none).
const issuerStatesDDL = `CREATE TABLE IF NOT EXISTS issuer_states (
  fingerprint BLOB    PRIMARY KEY,
  tainted_at  INTEGER NOT NULL DEFAULT 0,
  revoked_at  INTEGER NOT NULL DEFAULT 0
)`

// readers bounds the read pool.
const readers = 4

// Config configures the store.
type Config struct {
	// Path is the database file. Its directory is created with mode 0700
	// when missing; the file is kept at mode 0600.
	Path string
	// MustExist refuses to create a missing database (for offline tools
	// such as trust export).
	MustExist bool
}

// Store is a SQLite-backed store. Its methods are safe for concurrent use;
// appends are serialized on the one writer connection.
type Store struct {
	w  *sql.DB // exactly one connection: the only writer
	r  *sql.DB // readers (query_only)
	ck *sql.DB // the checkpointer's connection

	kick     chan struct{} // a commit happened
	stopCk   chan struct{}
	ckDone   chan struct{}
	stopOnce sync.Once

	insertEntry, insertNode, insertDigest *multiInsert
	insertCheckpoint                      *sql.Stmt
}

// Open opens (creating if allowed) the database at cfg.Path and applies
// Schema.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlite: path is required")
	}
	if !filepath.IsAbs(cfg.Path) {
		return nil, fmt.Errorf("sqlite: path %q must be absolute", cfg.Path)
	}
	if err := prepareFile(cfg.Path, cfg.MustExist); err != nil {
		return nil, err
	}
	w, err := sql.Open("sqlite", dsn(cfg.Path, connWriter))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{w: w, kick: make(chan struct{}, 1), stopCk: make(chan struct{}), ckDone: make(chan struct{})}
	if err := s.init(ctx); err != nil {
		w.Close()
		return nil, err
	}
	ck, err := sql.Open("sqlite", dsn(cfg.Path, connCheckpointer))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: open: %w", err)
	}
	ck.SetMaxOpenConns(1)
	s.ck = ck
	go s.checkpointer()
	r, err := sql.Open("sqlite", dsn(cfg.Path, connReader))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: open: %w", err)
	}
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	s.r = r
	if err := r.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: open: %w", err)
	}
	return s, nil
}

// prepareFile creates the directory (0700) and the file (0600) itself, so
// that SQLite, which gives its -wal and -shm files the database file's
// mode, never creates anything more open.
func prepareFile(path string, mustExist bool) error {
	if err := privdir.CheckAncestors(filepath.Dir(path), "put a database of their own in its place, and the server would sign checkpoints over their entries"); err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && mustExist:
		return fmt.Errorf("sqlite: %s does not exist", path)
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("sqlite: create directory: %w", err)
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("sqlite: create database: %w", err)
		}
		return f.Close()
	case err != nil:
		return fmt.Errorf("sqlite: %w", err)
	case !info.Mode().IsRegular():
		return fmt.Errorf("sqlite: %s is not a regular file", path)
	case info.Mode().Perm()&0o077 != 0:
		// Tighten rather than refuse: the log is not secret, but what
		// agents built is nobody else's business on this host.
		if err := os.Chmod(path, 0o600); err != nil {
			return fmt.Errorf("sqlite: restrict %s: %w", path, err)
		}
	}
	return nil
}

// Connection roles.
const (
	connWriter = iota
	connReader
	connCheckpointer
)

func dsn(path string, role int) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	switch role {
	case connWriter:
		// Commits only append to the WAL; the checkpointer copies it
		// back into the database on its own connection, off the
		// appender's path.
		q.Add("_pragma", "wal_autocheckpoint(0)")
		q.Set("_txlock", "immediate")
	case connReader:
		q.Add("_pragma", "query_only(1)")
	}
	return (&url.URL{Scheme: "file", OmitHost: true, Path: path, RawQuery: q.Encode()}).String()
}

func (s *Store) init(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, Schema); err != nil {
		return fmt.Errorf("sqlite: apply schema: %w", err)
	}
	var v string
	err := s.w.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'schema_version'`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := s.w.ExecContext(ctx, `INSERT INTO meta (name, value) VALUES ('schema_version', ?)`, schemaVersion); err != nil {
			return fmt.Errorf("sqlite: record schema version: %w", err)
		}
	case err != nil:
		return fmt.Errorf("sqlite: schema version: %w", err)
	}
	for v != "" && v != schemaVersion {
		m, ok := migrations[v]
		if !ok {
			return fmt.Errorf("sqlite: database schema version %s, this server knows %s", v, schemaVersion)
		}
		if err := s.migrate(ctx, m.ddl, m.to); err != nil {
			return fmt.Errorf("sqlite: migrate schema %s to %s: %w", v, m.to, err)
		}
		v = m.to
	}
	s.insertEntry = newMultiInsert(s.w, `INSERT INTO entries (idx, leaf_hash, dedupe_key, body, envelope, certificate, spiffe_id, integrated_time, signed_timestamp) VALUES `, ``, 9)
	s.insertNode = newMultiInsert(s.w, `INSERT INTO nodes (level, idx, hash) VALUES `, ``, 3)
	s.insertDigest = newMultiInsert(s.w, `INSERT INTO subject_digests (digest, idx) VALUES `, ` ON CONFLICT DO NOTHING`, 2)
	stmt, err := s.w.PrepareContext(ctx, `INSERT INTO checkpoints (size, note) VALUES (?, ?)`)
	if err != nil {
		return fmt.Errorf("sqlite: prepare: %w", err)
	}
	s.insertCheckpoint = stmt
	return nil
}

// multiInsert inserts many rows per statement (a multi-row VALUES list,
// which SQLite and PostgreSQL both take): a few statements per batch
// instead of one per row. Statements are prepared once per row count,
// and row counts are powers of two or maxRows.
type multiInsert struct {
	db         *sql.DB
	head, tail string
	cols       int
	maxRows    int

	mu    sync.Mutex
	stmts map[int]*sql.Stmt
}

func newMultiInsert(db *sql.DB, head, tail string, cols int) *multiInsert {
	return &multiInsert{db: db, head: head, tail: tail, cols: cols, maxRows: maxParams / cols, stmts: make(map[int]*sql.Stmt)}
}

func (m *multiInsert) stmt(ctx context.Context, rows int) (*sql.Stmt, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st, ok := m.stmts[rows]; ok {
		return st, nil
	}
	row := "(?" + strings.Repeat(", ?", m.cols-1) + ")"
	q := m.head + row + strings.Repeat(", "+row, rows-1) + m.tail
	st, err := m.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("sqlite: prepare: %w", err)
	}
	m.stmts[rows] = st
	return st, nil
}

// prepare makes sure the statements that exec needs for rows rows are
// prepared. It must be called outside a transaction: the writer has one
// connection, which a transaction holds.
func (m *multiInsert) prepare(ctx context.Context, rows int) error {
	for off := 0; off < rows; {
		n := m.chunk(rows - off)
		if _, err := m.stmt(ctx, n); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// chunk is how many of rows one statement inserts: maxRows, or the
// largest power of two that fits, so that few statements are prepared.
func (m *multiInsert) chunk(rows int) int {
	if rows >= m.maxRows {
		return m.maxRows
	}
	return 1 << (bits.Len(uint(rows)) - 1)
}

// exec inserts the rows in args (cols values per row) within tx, with
// statements made ready by prepare.
func (m *multiInsert) exec(ctx context.Context, tx *sql.Tx, args []any) error {
	rows := len(args) / m.cols
	for off := 0; off < rows; {
		n := m.chunk(rows - off)
		m.mu.Lock()
		st, ok := m.stmts[n]
		m.mu.Unlock()
		if !ok {
			return fmt.Errorf("sqlite: no statement prepared for %d rows", n)
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args[off*m.cols:(off+n)*m.cols]...); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func (m *multiInsert) close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, st := range m.stmts {
		errs = append(errs, st.Close())
	}
	return errors.Join(errs...)
}

// checkpointInterval spaces WAL checkpoints while commits keep coming.
const checkpointInterval = 250 * time.Millisecond

// checkpointer copies committed WAL frames into the database (a PASSIVE
// checkpoint: it never blocks the writer or readers) after commits, at
// most every checkpointInterval.
func (s *Store) checkpointer() {
	defer close(s.ckDone)
	for {
		select {
		case <-s.stopCk:
			return
		case <-s.kick:
		}
		// Errors are left for the next round (and for SQLite's own
		// checkpoint when the last connection closes).
		s.ck.Exec(`PRAGMA wal_checkpoint(PASSIVE)`) //nolint:errcheck // see above
		select {
		case <-s.stopCk:
			return
		case <-time.After(checkpointInterval):
		}
	}
}

// Close closes the database.
func (s *Store) Close() error {
	var errs []error
	s.stopOnce.Do(func() {
		if s.ck != nil {
			close(s.stopCk)
			<-s.ckDone
			errs = append(errs, s.ck.Close())
		}
	})
	for _, m := range []*multiInsert{s.insertEntry, s.insertNode, s.insertDigest} {
		if m != nil {
			errs = append(errs, m.close())
		}
	}
	if s.insertCheckpoint != nil {
		errs = append(errs, s.insertCheckpoint.Close())
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	return errors.Join(errs...)
}

// AppendBatch commits b in one transaction. It fails with
// store.ErrConflict unless b continues the log from its latest checkpoint:
// entries numbered from that size on, and a checkpoint for the size they
// reach.
func (s *Store) AppendBatch(ctx context.Context, b store.Batch) (err error) {
	entryArgs := make([]any, 0, 8*len(b.Entries))
	var digestArgs []any
	for _, e := range b.Entries {
		entryArgs = append(entryArgs, int64(e.Index), e.LeafHash, e.DedupeKey, e.Body, e.Envelope, e.Certificate, e.SPIFFEID, e.IntegratedTime, nonNil(e.Timestamp))
		for _, d := range e.SubjectDigests {
			digestArgs = append(digestArgs, d, int64(e.Index))
		}
	}
	nodeArgs := make([]any, 0, 3*len(b.Nodes))
	for _, n := range b.Nodes {
		nodeArgs = append(nodeArgs, int64(n.Level), int64(n.Index), n.Hash)
	}
	for _, p := range []struct {
		m    *multiInsert
		rows int
	}{{s.insertEntry, len(b.Entries)}, {s.insertDigest, len(digestArgs) / 2}, {s.insertNode, len(b.Nodes)}} {
		if err := p.m.prepare(ctx, p.rows); err != nil {
			return err
		}
	}

	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback() //nolint:errcheck // the append error is what matters
		}
	}()
	var latest sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(size) FROM checkpoints`).Scan(&latest); err != nil {
		return fmt.Errorf("sqlite: latest checkpoint: %w", err)
	}
	prev := uint64(latest.Int64) // 0 when there is none
	if b.Checkpoint.Size != prev+uint64(len(b.Entries)) || (latest.Valid && len(b.Entries) == 0) {
		return fmt.Errorf("%w: batch of %d entries for size %d, the log is at %d", store.ErrConflict, len(b.Entries), b.Checkpoint.Size, prev)
	}
	for i, e := range b.Entries {
		if e.Index != prev+uint64(i) {
			return fmt.Errorf("%w: entry %d in a batch from %d", store.ErrConflict, e.Index, prev)
		}
	}
	if err := s.insertEntry.exec(ctx, tx, entryArgs); err != nil {
		if isUniqueViolation(err, "entries.dedupe_key") {
			return fmt.Errorf("%w (in entries %d to %d)", store.ErrDuplicate, prev, prev+uint64(len(b.Entries))-1)
		}
		return fmt.Errorf("sqlite: insert entries: %w", err)
	}
	if err := s.insertDigest.exec(ctx, tx, digestArgs); err != nil {
		return fmt.Errorf("sqlite: insert subject digests: %w", err)
	}
	if err := s.insertNode.exec(ctx, tx, nodeArgs); err != nil {
		return fmt.Errorf("sqlite: insert nodes: %w", err)
	}
	if _, err := tx.StmtContext(ctx, s.insertCheckpoint).ExecContext(ctx, int64(b.Checkpoint.Size), b.Checkpoint.Note); err != nil {
		return fmt.Errorf("sqlite: insert checkpoint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return nil
}

// sqliteConstraint is SQLITE_CONSTRAINT, the primary code of every
// constraint violation.
const sqliteConstraint = 19

// isUniqueViolation reports whether err is a violation of the unique
// constraint on column (table.column).
func isUniqueViolation(err error, column string) bool {
	var e *sqlitedriver.Error
	return errors.As(err, &e) && e.Code()&0xff == sqliteConstraint && strings.Contains(e.Error(), column)
}

// LatestCheckpoint returns the checkpoint of the largest tree, or
// store.ErrNotFound on a new database.
func (s *Store) LatestCheckpoint(ctx context.Context) (store.Checkpoint, error) {
	var size int64
	var note []byte
	err := s.r.QueryRowContext(ctx, `SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1`).Scan(&size, &note)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Checkpoint{}, store.ErrNotFound
	}
	if err != nil {
		return store.Checkpoint{}, fmt.Errorf("sqlite: latest checkpoint: %w", err)
	}
	return store.Checkpoint{Size: uint64(size), Note: note}, nil
}

// Nodes returns the hashes of ids, in order, from one consistent snapshot.
// A missing node is an error wrapping store.ErrNotFound.
func (s *Store) Nodes(ctx context.Context, ids []store.NodeID) ([][]byte, error) {
	if len(ids) == 0 {
		return [][]byte{}, nil
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("sqlite: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	stmt, err := tx.PrepareContext(ctx, `SELECT hash FROM nodes WHERE level = ? AND idx = ?`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: prepare: %w", err)
	}
	defer stmt.Close()
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		err := stmt.QueryRowContext(ctx, int64(id.Level), int64(id.Index)).Scan(&hashes[i])
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("sqlite: node (%d, %d): %w", id.Level, id.Index, store.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("sqlite: node (%d, %d): %w", id.Level, id.Index, err)
		}
	}
	return hashes, nil
}

const entryColumns = `idx, leaf_hash, dedupe_key, body, envelope, certificate, spiffe_id, integrated_time, signed_timestamp`

// maxParams bounds the parameters of one IN list (SQLite allows 32766,
// PostgreSQL 65535).
const maxParams = 500

// EntriesByDedupeKey returns the entries whose dedupe keys are among keys,
// in no particular order.
func (s *Store) EntriesByDedupeKey(ctx context.Context, keys [][]byte) ([]store.Entry, error) {
	var out []store.Entry
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), maxParams)]
		keys = keys[len(chunk):]
		args := make([]any, len(chunk))
		for i, k := range chunk {
			args[i] = k
		}
		q := `SELECT ` + entryColumns + ` FROM entries WHERE dedupe_key IN (?` + strings.Repeat(", ?", len(chunk)-1) + `)`
		entries, err := s.queryEntries(ctx, q, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, entries...)
	}
	return out, nil
}

// EntriesBySubjectDigest returns the entries q selects (server.Store).
// With builders, it first takes at most q.MaxScan indexes naming the
// digest, keeps those whose builder (read from entries_builder, not the
// row) is q's, and only then reads their entries. A builder is compared
// byte for byte: the entry's SPIFFE ID is the builder, or its first
// len(builder)+1 bytes are the builder and a slash.
func (s *Store) EntriesBySubjectDigest(ctx context.Context, q store.SubjectQuery) (store.SubjectPage, error) {
	const cols = `e.idx, e.leaf_hash, e.dedupe_key, e.body, e.envelope, e.certificate, e.spiffe_id, e.integrated_time, e.signed_timestamp`
	if len(q.Builders) == 0 {
		entries, err := s.queryEntriesWithin(ctx, q.MaxBytes, `SELECT `+cols+`
FROM subject_digests d JOIN entries e ON e.idx = d.idx
WHERE d.digest = ? AND d.idx >= ? ORDER BY d.idx LIMIT ?`, q.Digest, int64(q.Start), q.Limit)
		return store.SubjectPage{Entries: entries}, err
	}
	var n, last int64
	if q.MaxScan > 0 {
		if err := s.r.QueryRowContext(ctx, `SELECT count(*), coalesce(max(idx), 0) FROM
(SELECT idx FROM subject_digests WHERE digest = ? AND idx >= ? ORDER BY idx LIMIT ?)`, q.Digest, int64(q.Start), q.MaxScan).Scan(&n, &last); err != nil {
			return store.SubjectPage{}, fmt.Errorf("sqlite: scan entries: %w", err)
		}
	}
	end, scannedTo := q.Window(n, last)
	var or []string
	args := []any{q.Digest, int64(q.Start), end}
	for _, b := range q.Builders {
		or = append(or, `b.spiffe_id = ? OR substr(CAST(b.spiffe_id AS BLOB), 1, ?) = CAST(? AS BLOB)`)
		args = append(args, b, len(b)+1, b+"/")
	}
	entries, err := s.queryEntriesWithin(ctx, q.MaxBytes, `WITH scan AS (SELECT idx FROM subject_digests WHERE digest = ? AND idx >= ? AND idx < ?),
kept AS (SELECT b.idx FROM scan JOIN entries b INDEXED BY entries_builder ON b.idx = scan.idx
  WHERE `+strings.Join(or, ` OR `)+` ORDER BY b.idx LIMIT ?)
SELECT `+cols+` FROM kept JOIN entries e ON e.idx = kept.idx ORDER BY e.idx`, append(args, q.Limit)...)
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
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: query entries: %w", err)
	}
	defer rows.Close()
	var out []store.Entry
	total := 0
	for rows.Next() {
		var e store.Entry
		var idx int64
		if err := rows.Scan(&idx, &e.LeafHash, &e.DedupeKey, &e.Body, &e.Envelope, &e.Certificate, &e.SPIFFEID, &e.IntegratedTime, &e.Timestamp); err != nil {
			return nil, fmt.Errorf("sqlite: read entry: %w", err)
		}
		e.Index = uint64(idx)
		if total += e.Size(); maxBytes > 0 && len(out) > 0 && total > maxBytes {
			break
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read entries: %w", err)
	}
	return out, nil
}

// AddSigningCA records ca unless a CA with its ID is already there (whose
// FirstSeen is then kept).
func (s *Store) AddSigningCA(ctx context.Context, ca store.SigningCA) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO signing_roots (id, der, not_before, not_after, first_seen) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		ca.ID, ca.DER, ca.NotBefore.Unix(), ca.NotAfter.Unix(), ca.FirstSeen.Unix())
	if err != nil {
		return fmt.Errorf("sqlite: record signing CA: %w", err)
	}
	return nil
}

// SigningCAs returns every recorded signing CA, oldest first.
func (s *Store) SigningCAs(ctx context.Context) ([]store.SigningCA, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id, der, not_before, not_after, first_seen FROM signing_roots ORDER BY first_seen, id`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: signing CAs: %w", err)
	}
	defer rows.Close()
	var out []store.SigningCA
	for rows.Next() {
		var ca store.SigningCA
		var nb, na, fs int64
		if err := rows.Scan(&ca.ID, &ca.DER, &nb, &na, &fs); err != nil {
			return nil, fmt.Errorf("sqlite: read signing CA: %w", err)
		}
		ca.NotBefore, ca.NotAfter, ca.FirstSeen = time.Unix(nb, 0).UTC(), time.Unix(na, 0).UTC(), time.Unix(fs, 0).UTC()
		out = append(out, ca)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read signing CAs: %w", err)
	}
	return out, nil
}

// migrate applies one migration's DDL and records the version it reaches,
// in one transaction.
func (s *Store) migrate(ctx context.Context, ddl, to string) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, a no-op
	if _, err := tx.ExecContext(ctx, ddl); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE meta SET value = ? WHERE name = 'schema_version'`, to); err != nil {
		return err
	}
	return tx.Commit()
}

// nonNil keeps a NOT NULL blob column from receiving NULL for an absent
// value.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// SetIssuerState records st, replacing any earlier record for the same
// fingerprint.
func (s *Store) SetIssuerState(ctx context.Context, st store.IssuerState) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO issuer_states (fingerprint, tainted_at, revoked_at) VALUES (?, ?, ?)
ON CONFLICT (fingerprint) DO UPDATE SET tainted_at = excluded.tainted_at, revoked_at = excluded.revoked_at`,
		st.Fingerprint, store.UnixOrZero(st.TaintedAt), store.UnixOrZero(st.RevokedAt))
	if err != nil {
		return fmt.Errorf("sqlite: record issuer state: %w", err)
	}
	return nil
}

// IssuerStates returns every recorded issuer state.
func (s *Store) IssuerStates(ctx context.Context) ([]store.IssuerState, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT fingerprint, tainted_at, revoked_at FROM issuer_states ORDER BY fingerprint`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: issuer states: %w", err)
	}
	defer rows.Close()
	var out []store.IssuerState
	for rows.Next() {
		var st store.IssuerState
		var tainted, revoked int64
		if err := rows.Scan(&st.Fingerprint, &tainted, &revoked); err != nil {
			return nil, fmt.Errorf("sqlite: read issuer state: %w", err)
		}
		st.TaintedAt, st.RevokedAt = store.TimeOrZero(tainted), store.TimeOrZero(revoked)
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read issuer states: %w", err)
	}
	return out, nil
}

// Ping reports whether the database file answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.r.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hallmark-dev/hallmark/plugins/store/postgres"
	"github.com/hallmark-dev/hallmark/server"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// benchLogAppendPostgres is benchLogAppend on the postgres store: the
// same workload and submitters, against a private PostgreSQL server
// (test/pgtest; fsync, full_page_writes and synchronous_commit on, as in
// production) over its unix socket. The floor is the same rows replayed
// into a fresh database of the same server, in the same transactions,
// from one connection with prepared statements and nothing else to do:
// each batch is one pipelined implicit transaction (one round trip, one
// commit), without the store's lock and head check.
//
// HALLMARK_BENCH_POSTGRES_DSN names a server to use instead (its role
// must be allowed to create databases).
func benchLogAppendPostgres(ctx context.Context, _ string) ([]Result, error) {
	createDB, cleanup, err := benchPostgres(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var results []Result
	for _, n := range logAppendConcurrency {
		logDSN, err := createDB(ctx, fmt.Sprintf("log_c%d", n))
		if err != nil {
			return nil, err
		}
		floorDSN, err := createDB(ctx, fmt.Sprintf("floor_c%d", n))
		if err != nil {
			return nil, err
		}
		r, err := logAppendRun(ctx, "logappend-postgres", n, logStore{
			open: func(ctx context.Context) (server.Store, error) {
				return postgres.Open(ctx, postgres.Config{DSN: logDSN})
			},
			floor: func(ctx context.Context) (float64, int, error) {
				return logAppendFloorPostgres(ctx, logDSN, floorDSN)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("%d submitters: %w", n, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// benchPostgres starts a private durable PostgreSQL server, or uses
// HALLMARK_BENCH_POSTGRES_DSN's, and returns how to make a fresh database
// on it.
func benchPostgres(ctx context.Context) (func(context.Context, string) (string, error), func(), error) {
	if dsn := os.Getenv("HALLMARK_BENCH_POSTGRES_DSN"); dsn != "" {
		if _, err := pgx.ParseConfig(dsn); err != nil {
			return nil, nil, err
		}
		suffix := fmt.Sprintf("_%d", time.Now().UnixNano())
		var made []string
		create := func(ctx context.Context, name string) (string, error) {
			name = "hallmark_bench_" + name + suffix
			if err := execOn(ctx, dsn, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
				return "", err
			}
			made = append(made, name)
			return withDatabase(dsn, name)
		}
		cleanup := func() {
			for _, name := range made {
				execOn(context.Background(), dsn, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)") //nolint:errcheck // best effort
			}
		}
		return create, cleanup, nil
	}
	srv, err := pgtest.Start(ctx, pgtest.Options{Durable: true})
	if err != nil {
		return nil, nil, err
	}
	return srv.CreateDatabase, srv.Stop, nil
}

// withDatabase is dsn (a URL or keyword/value) naming database db.
func withDatabase(dsn, db string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		u.Path = "/" + db
		return u.String(), nil
	}
	return dsn + " dbname=" + db, nil // the last one counts
}

func execOn(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// logAppendFloorPostgres replays the rows the log wrote to the database
// at src into the one at dst (given the store's schema first), batch by
// batch as the checkpoints delimit them, and returns the entries per
// second and the number of batches.
func logAppendFloorPostgres(ctx context.Context, src, dst string) (float64, int, error) {
	in, err := pgx.Connect(ctx, src)
	if err != nil {
		return 0, 0, err
	}
	defer in.Close(ctx)
	type entryRow struct {
		idx                            int64
		leaf, key, body, env, cert, ts []byte
		spiffeID                       string
		integrated                     int64
	}
	rows, _ := in.Query(ctx, `SELECT idx, leaf_hash, dedupe_key, body, envelope, certificate, spiffe_id, integrated_time, signed_timestamp FROM entries ORDER BY idx`)
	entries, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (entryRow, error) {
		var e entryRow
		err := r.Scan(&e.idx, &e.leaf, &e.key, &e.body, &e.env, &e.cert, &e.spiffeID, &e.integrated, &e.ts)
		return e, err
	})
	if err != nil {
		return 0, 0, err
	}
	digests := make(map[int64][][]byte)
	rows, _ = in.Query(ctx, `SELECT digest, idx FROM subject_digests`)
	var d []byte
	var idx int64
	if _, err := pgx.ForEachRow(rows, []any{&d, &idx}, func() error {
		digests[idx] = append(digests[idx], d)
		return nil
	}); err != nil {
		return 0, 0, err
	}
	// A node belongs to the batch that appended its last leaf.
	type nodeRow struct {
		level int32
		idx   int64
		hash  []byte
	}
	nodesByLeaf := make(map[int64][]nodeRow)
	var n nodeRow
	rows, _ = in.Query(ctx, `SELECT level, idx, hash FROM nodes`)
	if _, err := pgx.ForEachRow(rows, []any{&n.level, &n.idx, &n.hash}, func() error {
		last := (n.idx+1)<<n.level - 1
		nodesByLeaf[last] = append(nodesByLeaf[last], n)
		return nil
	}); err != nil {
		return 0, 0, err
	}
	type checkpointRow struct {
		size int64
		note []byte
	}
	var checkpoints []checkpointRow
	var c checkpointRow
	rows, _ = in.Query(ctx, `SELECT size, note FROM checkpoints WHERE size > 0 ORDER BY size`)
	if _, err := pgx.ForEachRow(rows, []any{&c.size, &c.note}, func() error {
		checkpoints = append(checkpoints, c)
		return nil
	}); err != nil {
		return 0, 0, err
	}

	// The schema, as the store makes it.
	st, err := postgres.Open(ctx, postgres.Config{DSN: dst})
	if err != nil {
		return 0, 0, err
	}
	st.Close()
	out, err := pgx.Connect(ctx, dst)
	if err != nil {
		return 0, 0, err
	}
	defer out.Close(ctx)

	// Column arrays per batch, ready before the clock starts.
	var plan []*pgx.Batch
	prev := int64(0)
	for _, c := range checkpoints {
		var (
			idx, integrated                     []int64
			leaf, key, body, env, cert, ts, dig [][]byte
			spiffeID                            []string
			digIdx, nodeIdx                     []int64
			nodeLevel                           []int32
			nodeHash                            [][]byte
		)
		for _, e := range entries[prev:c.size] {
			idx, leaf, key, body, env, cert = append(idx, e.idx), append(leaf, e.leaf), append(key, e.key), append(body, e.body), append(env, e.env), append(cert, e.cert)
			spiffeID, integrated, ts = append(spiffeID, e.spiffeID), append(integrated, e.integrated), append(ts, e.ts)
			for _, d := range digests[e.idx] {
				dig, digIdx = append(dig, d), append(digIdx, e.idx)
			}
			for _, n := range nodesByLeaf[e.idx] {
				nodeLevel, nodeIdx, nodeHash = append(nodeLevel, n.level), append(nodeIdx, n.idx), append(nodeHash, n.hash)
			}
		}
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO entries (idx, leaf_hash, dedupe_key, body, envelope, certificate, spiffe_id, integrated_time, signed_timestamp)
SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[], $7::text[], $8::bigint[], $9::bytea[])`,
			idx, leaf, key, body, env, cert, spiffeID, integrated, ts)
		if len(dig) > 0 {
			b.Queue(`INSERT INTO subject_digests (digest, idx) SELECT * FROM unnest($1::bytea[], $2::bigint[])`, dig, digIdx)
		}
		if len(nodeIdx) > 0 {
			b.Queue(`INSERT INTO nodes (level, idx, hash) SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])`, nodeLevel, nodeIdx, nodeHash)
		}
		b.Queue(`INSERT INTO checkpoints (size, note) VALUES ($1, $2)`, c.size, c.note)
		plan = append(plan, b)
		prev = c.size
	}
	if int(prev) != len(entries) {
		return 0, 0, fmt.Errorf("checkpoints cover %d of %d entries", prev, len(entries))
	}

	start := time.Now()
	for _, b := range plan {
		// A pipeline without BEGIN is one implicit transaction.
		if err := out.SendBatch(ctx, b).Close(); err != nil {
			return 0, 0, err
		}
	}
	elapsed := time.Since(start)
	return float64(len(entries)) / elapsed.Seconds(), len(checkpoints), nil
}

package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/hallmark-dev/hallmark/internal/config"
	"github.com/hallmark-dev/hallmark/plugins/store"
	"github.com/hallmark-dev/hallmark/plugins/store/postgres"
	"github.com/hallmark-dev/hallmark/plugins/store/sqlite"
)

// Store keeps the transparency log and the signing CAs the server has seen.
// It is written by the log's single appender; see package
// plugins/store for the records and the contract.
type Store interface {
	// AppendBatch commits a batch atomically and durably, or fails with
	// store.ErrConflict when it does not continue the log and with
	// store.ErrDuplicate when one of its dedupe keys is already logged.
	// Any other failure may have committed the batch all the same (a
	// commit whose answer was lost): the next batch then fails with
	// store.ErrConflict, and the log reloads its tree.
	AppendBatch(ctx context.Context, b store.Batch) error
	// LatestCheckpoint is the checkpoint of the largest tree;
	// store.ErrNotFound when the log has none yet.
	LatestCheckpoint(ctx context.Context) (store.Checkpoint, error)
	// Nodes returns the hashes of ids in order; a missing one is an error.
	Nodes(ctx context.Context, ids []store.NodeID) ([][]byte, error)
	// EntriesByDedupeKey returns the entries with these dedupe keys.
	EntriesByDedupeKey(ctx context.Context, keys [][]byte) ([]store.Entry, error)
	// EntriesBySubjectDigest returns the entries q selects: up to
	// q.Limit from index q.Start on whose statements name q.Digest, by
	// the builders q names if it names any (examining at most
	// q.MaxScan), and fewer when their store.Entry.Size would add up to
	// more than q.MaxBytes (but always the first); MaxBytes 0 is no
	// bound.
	EntriesBySubjectDigest(ctx context.Context, q store.SubjectQuery) (store.SubjectPage, error)
	// AddSigningCA records a signing CA chain unless already there.
	AddSigningCA(ctx context.Context, ca store.SigningCA) error
	// SigningCAs returns every recorded signing CA chain.
	SigningCAs(ctx context.Context) ([]store.SigningCA, error)
	// SetIssuerState records rotation's decision about an issuer,
	// replacing the earlier one.
	SetIssuerState(ctx context.Context, st store.IssuerState) error
	// IssuerStates returns every recorded issuer state.
	IssuerStates(ctx context.Context) ([]store.IssuerState, error)
	// Ping reports whether the store answers (for readiness).
	Ping(ctx context.Context) error
	Close() error
}

// DefaultStoreFile is the sqlite store's database in data_dir.
const DefaultStoreFile = "hallmark.db"

// StoreConfig is a decoded store block.
type StoreConfig struct {
	Name string
	open func(ctx context.Context, o storeOptions) (Store, error)
}

// storeOptions are what openers other than the server itself ask for.
type storeOptions struct {
	// mustExist: offline tools read an existing store and never create one.
	mustExist bool
}

// stores lists the built-in stores by their block label.
var stores = map[string]func(body hcl.Body, dataDir string) (func(context.Context, storeOptions) (Store, error), error){
	"sqlite":   sqliteStore,
	"postgres": postgresStore,
}

func storeConfig(name string, body hcl.Body, dataDir string) (StoreConfig, error) {
	decode, ok := stores[name]
	if !ok {
		names := make([]string, 0, len(stores))
		for n := range stores {
			names = append(names, n)
		}
		sort.Strings(names)
		return StoreConfig{}, fmt.Errorf("store %q: unknown (built in: %s)", name, strings.Join(names, ", "))
	}
	open, err := decode(body, dataDir)
	if err != nil {
		return StoreConfig{}, fmt.Errorf("store %q: %w", name, err)
	}
	return StoreConfig{Name: name, open: open}, nil
}

func sqliteStore(body hcl.Body, dataDir string) (func(context.Context, storeOptions) (Store, error), error) {
	var b struct {
		Path string `hcl:"path,optional"`
	}
	if err := config.DecodeBlock(body, &b); err != nil {
		return nil, err
	}
	if b.Path != "" && !filepath.IsAbs(b.Path) {
		return nil, fmt.Errorf("path: %q must be an absolute path", b.Path)
	}
	path := or(b.Path, filepath.Join(dataDir, DefaultStoreFile)) // data_dir is checked to be absolute
	return func(ctx context.Context, o storeOptions) (Store, error) {
		return sqlite.Open(ctx, sqlite.Config{Path: path, MustExist: o.mustExist})
	}, nil
}

// postgresStore decodes store "postgres": the DSN in the file (dsn) or,
// to keep the password out of it, in an environment variable (dsn_env)
// read when the store is opened. The DSN is never logged.
func postgresStore(body hcl.Body, _ string) (func(context.Context, storeOptions) (Store, error), error) {
	var b struct {
		DSN    string `hcl:"dsn,optional"`
		DSNEnv string `hcl:"dsn_env,optional"`
	}
	if err := config.DecodeBlock(body, &b); err != nil {
		return nil, err
	}
	if (b.DSN == "") == (b.DSNEnv == "") {
		return nil, fmt.Errorf("exactly one of dsn and dsn_env is required")
	}
	if b.DSN != "" {
		if err := postgres.CheckDSN(b.DSN); err != nil {
			return nil, fmt.Errorf("dsn: %w", err)
		}
	}
	return func(ctx context.Context, o storeOptions) (Store, error) {
		dsn := b.DSN
		if b.DSNEnv != "" {
			if dsn = os.Getenv(b.DSNEnv); dsn == "" {
				return nil, fmt.Errorf("dsn_env: %s is not set", b.DSNEnv)
			}
		}
		return postgres.Open(ctx, postgres.Config{DSN: dsn, MustExist: o.mustExist})
	}, nil
}

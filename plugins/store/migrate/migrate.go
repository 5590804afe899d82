// Package migrate reads a store's versioned, forward-only schema
// migrations from an embedded directory and plans which to apply. Each
// store applies them itself, in one transaction, recording each version in
// its schema_migrations table:
//
//	CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)
//
// A migration is a file NNNN_name.sql; versions start at 1 and have no
// gaps. A released migration is never edited: a change is a new file.
package migrate

import (
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
)

// Migration is one schema version.
type Migration struct {
	Version int
	// Name is the file name without its extension (0001_init).
	Name string
	SQL  string
}

var fileName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

// Parse reads the migrations in dir of fsys, in version order.
func Parse(fsys fs.FS, dir string) ([]Migration, error) {
	files, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	var out []Migration
	for _, f := range files {
		m := fileName.FindStringSubmatch(f.Name())
		if m == nil || f.IsDir() {
			return nil, fmt.Errorf("migrate: %s: not a migration (NNNN_name.sql)", f.Name())
		}
		v, _ := strconv.Atoi(m[1])
		sql, err := fs.ReadFile(fsys, path.Join(dir, f.Name()))
		if err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
		out = append(out, Migration{Version: v, Name: f.Name()[:len(f.Name())-len(".sql")], SQL: string(sql)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migrate: %s: expected version %d (versions start at 1, without gaps or repeats)", m.Name, i+1)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("migrate: no migrations in %s", dir)
	}
	return out, nil
}

// Plan returns the migrations a database at version current still needs,
// and refuses a database newer than the binary knows.
func Plan(current int, known []Migration) ([]Migration, error) {
	latest := len(known)
	if current > latest {
		return nil, fmt.Errorf("the database schema is at version %d, newer than this binary knows (%d): run a newer hallmark-server", current, latest)
	}
	if current < 0 {
		return nil, fmt.Errorf("invalid schema version %d", current)
	}
	return known[current:], nil
}

package sqlite

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/plugins/store"
)

func openTest(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Path: path})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func hashOf(parts ...any) []byte {
	h := sha256.New()
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			h.Write([]byte(v))
		case uint64:
			h.Write(binary.BigEndian.AppendUint64(nil, v))
		case int:
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(v)))
		}
	}
	return h.Sum(nil)
}

// entry makes a distinct entry for index i with the given subject digests.
func entry(i uint64, digests ...[]byte) store.Entry {
	return store.Entry{
		Index: i, LeafHash: hashOf("leaf", i), DedupeKey: hashOf("key", i), Body: []byte("body"),
		Envelope: []byte(`{"payload":"e30="}`), Certificate: []byte("der"), SPIFFEID: "spiffe://example.org/a",
		IntegratedTime: 1700000000 + int64(i), SubjectDigests: digests,
	}
}

func checkpoint(size uint64) store.Checkpoint {
	return store.Checkpoint{Size: size, Note: []byte("note for " + string(rune('a'+size%26)))}
}

func TestAppendAndLookups(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "db", "hallmark.db"))

	_, err := s.LatestCheckpoint(ctx)
	require.ErrorIs(t, err, store.ErrNotFound)

	// The empty log's checkpoint, then two batches.
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: checkpoint(0)}))
	d1, d2 := hashOf("artifact 1"), hashOf("artifact 2")
	require.NoError(t, s.AppendBatch(ctx, store.Batch{
		Entries:    []store.Entry{entry(0, d1), entry(1, d1, d2)},
		Nodes:      []store.Node{{NodeID: store.NodeID{Level: 0, Index: 0}, Hash: hashOf("n00")}, {NodeID: store.NodeID{Level: 0, Index: 1}, Hash: hashOf("n01")}, {NodeID: store.NodeID{Level: 1, Index: 0}, Hash: hashOf("n10")}},
		Checkpoint: checkpoint(2),
	}))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{
		Entries:    []store.Entry{entry(2, d2)},
		Nodes:      []store.Node{{NodeID: store.NodeID{Level: 0, Index: 2}, Hash: hashOf("n02")}},
		Checkpoint: checkpoint(3),
	}))

	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, checkpoint(3), cp)

	hashes, err := s.Nodes(ctx, []store.NodeID{{Level: 1, Index: 0}, {Level: 0, Index: 2}})
	require.NoError(t, err)
	require.Equal(t, [][]byte{hashOf("n10"), hashOf("n02")}, hashes)
	_, err = s.Nodes(ctx, []store.NodeID{{Level: 0, Index: 0}, {Level: 1, Index: 1}})
	require.ErrorIs(t, err, store.ErrNotFound)

	found, err := s.EntriesByDedupeKey(ctx, [][]byte{hashOf("key", 2), hashOf("key", 0), hashOf("key", 99)})
	require.NoError(t, err)
	require.Len(t, found, 2)
	sort.Slice(found, func(i, j int) bool { return found[i].Index < found[j].Index })
	want0 := entry(0)
	want0.SubjectDigests = nil
	require.Equal(t, want0, found[0])
	require.Equal(t, uint64(2), found[1].Index)

	byDigest, err := s.EntriesBySubjectDigest(ctx, d1, 0, 10)
	require.NoError(t, err)
	require.Equal(t, []uint64{0, 1}, indexes(byDigest))
	byDigest, err = s.EntriesBySubjectDigest(ctx, d2, 0, 1)
	require.NoError(t, err)
	require.Equal(t, []uint64{1}, indexes(byDigest))
	byDigest, err = s.EntriesBySubjectDigest(ctx, d2, 2, 10)
	require.NoError(t, err)
	require.Equal(t, []uint64{2}, indexes(byDigest))
	byDigest, err = s.EntriesBySubjectDigest(ctx, hashOf("nothing"), 0, 10)
	require.NoError(t, err)
	require.Empty(t, byDigest)
}

func indexes(es []store.Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Index
	}
	return out
}

func TestManyDedupeKeys(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "hallmark.db"))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: checkpoint(0)}))
	var entries []store.Entry
	var keys [][]byte
	for i := range uint64(1200) { // more than one IN list
		entries = append(entries, entry(i))
		keys = append(keys, hashOf("key", i))
	}
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: entries, Checkpoint: checkpoint(1200)}))
	found, err := s.EntriesByDedupeKey(ctx, keys)
	require.NoError(t, err)
	require.Len(t, found, 1200)
}

func TestAppendBatchRefusesWhatDoesNotContinueTheLog(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "hallmark.db"))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: checkpoint(0)}))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{entry(0)}, Checkpoint: checkpoint(1)}))

	tests := []struct {
		name string
		b    store.Batch
	}{
		{name: "gap", b: store.Batch{Entries: []store.Entry{entry(2)}, Checkpoint: checkpoint(3)}},
		{name: "overlap", b: store.Batch{Entries: []store.Entry{entry(0)}, Checkpoint: checkpoint(1)}},
		{name: "wrong checkpoint size", b: store.Batch{Entries: []store.Entry{entry(1)}, Checkpoint: checkpoint(5)}},
		{name: "empty batch on a started log", b: store.Batch{Checkpoint: checkpoint(1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorIs(t, s.AppendBatch(ctx, tt.b), store.ErrConflict)
		})
	}

	// A failing batch leaves nothing behind: a unique key violation on
	// its second entry rolls back its first.
	dup := entry(2)
	dup.DedupeKey = hashOf("key", 0)
	err := s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{entry(1), dup}, Checkpoint: checkpoint(3)})
	require.ErrorIs(t, err, store.ErrDuplicate)
	require.NotErrorIs(t, err, store.ErrConflict)
	found, err := s.EntriesByDedupeKey(ctx, [][]byte{hashOf("key", 1)})
	require.NoError(t, err)
	require.Empty(t, found)
	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), cp.Size)
}

func TestSigningCAs(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "hallmark.db"))
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	a := store.SigningCA{ID: hashOf("a"), DER: []byte("chain a"), NotBefore: t0, NotAfter: t0.Add(time.Hour), FirstSeen: t0.Add(time.Minute)}
	b := store.SigningCA{ID: hashOf("b"), DER: []byte("chain b"), NotBefore: t0, NotAfter: t0.Add(2 * time.Hour), FirstSeen: t0.Add(2 * time.Minute)}
	require.NoError(t, s.AddSigningCA(ctx, b))
	require.NoError(t, s.AddSigningCA(ctx, a))
	again := a
	again.FirstSeen = t0.Add(time.Hour)
	require.NoError(t, s.AddSigningCA(ctx, again)) // first_seen is kept

	cas, err := s.SigningCAs(ctx)
	require.NoError(t, err)
	require.Equal(t, []store.SigningCA{a, b}, cas)
}

func TestPersistenceAndPermissions(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "hallmark.db")

	_, err := Open(ctx, Config{Path: path, MustExist: true})
	require.ErrorContains(t, err, "does not exist")
	_, err = Open(ctx, Config{Path: "relative.db"})
	require.ErrorContains(t, err, "absolute")

	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: checkpoint(0)}))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{entry(0)}, Checkpoint: checkpoint(1)}))

	for name, want := range map[string]os.FileMode{dir: 0o700, path: 0o600, path + "-wal": 0o600, path + "-shm": 0o600} {
		info, err := os.Stat(name)
		require.NoError(t, err, name)
		require.Equal(t, want, info.Mode().Perm(), name)
	}
	var mode string
	require.NoError(t, s.w.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.Equal(t, "wal", mode)
	require.NoError(t, s.Close())

	// Loose permissions are tightened on open.
	require.NoError(t, os.Chmod(path, 0o644))
	s, err = Open(ctx, Config{Path: path, MustExist: true})
	require.NoError(t, err)
	defer s.Close()
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), cp.Size)
}

func TestConcurrentReadersDuringAppends(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "hallmark.db"))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: checkpoint(0)}))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := s.LatestCheckpoint(ctx)
				require.NoError(t, err)
			}
		})
	}
	for i := range uint64(50) {
		require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{entry(i)}, Checkpoint: checkpoint(i + 1)}))
	}
	close(stop)
	wg.Wait()
}

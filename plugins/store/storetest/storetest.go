// Package storetest is the contract every store plugin passes: appends
// that continue the log and only those, dedupe keys, checkpoints, tree
// nodes, subject search, signing CAs, persistence across reopening, and
// several Store instances appending to one database concurrently without
// ever forking or losing the log. A plugin's tests call Run.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/plugins/store"
)

// Store is the interface under test: server.Store's methods (plugins do
// not import the server).
type Store interface {
	AppendBatch(ctx context.Context, b store.Batch) error
	LatestCheckpoint(ctx context.Context) (store.Checkpoint, error)
	Nodes(ctx context.Context, ids []store.NodeID) ([][]byte, error)
	EntriesByDedupeKey(ctx context.Context, keys [][]byte) ([]store.Entry, error)
	EntriesBySubjectDigest(ctx context.Context, q store.SubjectQuery) (store.SubjectPage, error)
	AddSigningCA(ctx context.Context, ca store.SigningCA) error
	SigningCAs(ctx context.Context) ([]store.SigningCA, error)
	SetIssuerState(ctx context.Context, st store.IssuerState) error
	IssuerStates(ctx context.Context) ([]store.IssuerState, error)
	Ping(ctx context.Context) error
	Close() error
}

// NewDB makes an empty database for one test and returns a function that
// opens a Store on it; it may be called several times, for instances
// open at once (closed by the suite or at the test's end).
type NewDB func(t *testing.T) (open func(t *testing.T) Store)

// Run runs the contract against the stores newDB makes.
func Run(t *testing.T, newDB NewDB) {
	tests := []struct {
		name string
		run  func(t *testing.T, newDB NewDB)
	}{
		{"AppendAndLookups", testAppendAndLookups},
		{"ManyDedupeKeys", testManyDedupeKeys},
		{"SubjectQueryByBuilder", testSubjectQueryByBuilder},
		{"RefusesWhatDoesNotContinueTheLog", testRefuses},
		{"SigningCAs", testSigningCAs},
		{"IssuerStates", testIssuerStates},
		{"Reopen", testReopen},
		{"ConcurrentReadersDuringAppends", testConcurrentReaders},
		{"StaleWriterConflicts", testStaleWriter},
		{"ConcurrentAppenders", testConcurrentAppenders},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newDB) })
	}
}

// HashOf hashes strings and integers: distinct test values.
func HashOf(parts ...any) []byte {
	h := sha256.New()
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			h.Write([]byte(v))
		case []byte:
			h.Write(v)
		case uint64:
			h.Write(binary.BigEndian.AppendUint64(nil, v))
		case int:
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(v)))
		default:
			panic(fmt.Sprintf("storetest: HashOf(%T)", p))
		}
	}
	return h.Sum(nil)
}

// Entry makes a distinct entry for index i with the given subject digests.
func Entry(i uint64, digests ...[]byte) store.Entry {
	return store.Entry{
		Index: i, LeafHash: HashOf("leaf", i), DedupeKey: HashOf("key", i), Body: []byte("body"),
		Envelope: []byte(`{"payload":"e30="}`), Certificate: []byte("der"), SPIFFEID: "spiffe://example.org/a",
		IntegratedTime: 1700000000 + int64(i), Timestamp: []byte("timestamp"), SubjectDigests: digests,
	}
}

// Checkpoint makes a checkpoint for size.
func Checkpoint(size uint64) store.Checkpoint {
	return store.Checkpoint{Size: size, Note: []byte("note for " + string(rune('a'+size%26)))}
}

func indexes(es []store.Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Index
	}
	return out
}

func testAppendAndLookups(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s := newDB(t)(t)

	_, err := s.LatestCheckpoint(ctx)
	require.ErrorIs(t, err, store.ErrNotFound)

	// The empty log's checkpoint, then two batches.
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	d1, d2 := HashOf("artifact 1"), HashOf("artifact 2")
	require.NoError(t, s.AppendBatch(ctx, store.Batch{
		Entries:    []store.Entry{Entry(0, d1), Entry(1, d1, d2)},
		Nodes:      []store.Node{{NodeID: store.NodeID{Level: 0, Index: 0}, Hash: HashOf("n00")}, {NodeID: store.NodeID{Level: 0, Index: 1}, Hash: HashOf("n01")}, {NodeID: store.NodeID{Level: 1, Index: 0}, Hash: HashOf("n10")}},
		Checkpoint: Checkpoint(2),
	}))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{
		Entries:    []store.Entry{Entry(2, d2, d2)}, // a digest named twice is indexed once
		Nodes:      []store.Node{{NodeID: store.NodeID{Level: 0, Index: 2}, Hash: HashOf("n02")}},
		Checkpoint: Checkpoint(3),
	}))

	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, Checkpoint(3), cp)

	hashes, err := s.Nodes(ctx, []store.NodeID{{Level: 1, Index: 0}, {Level: 0, Index: 2}, {Level: 1, Index: 0}})
	require.NoError(t, err)
	require.Equal(t, [][]byte{HashOf("n10"), HashOf("n02"), HashOf("n10")}, hashes)
	hashes, err = s.Nodes(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, hashes)
	_, err = s.Nodes(ctx, []store.NodeID{{Level: 0, Index: 0}, {Level: 1, Index: 1}})
	require.ErrorIs(t, err, store.ErrNotFound)

	found, err := s.EntriesByDedupeKey(ctx, [][]byte{HashOf("key", 2), HashOf("key", 0), HashOf("key", 99)})
	require.NoError(t, err)
	require.Len(t, found, 2)
	sort.Slice(found, func(i, j int) bool { return found[i].Index < found[j].Index })
	want0 := Entry(0)
	want0.SubjectDigests = nil
	require.Equal(t, want0, found[0])
	require.Equal(t, uint64(2), found[1].Index)
	found, err = s.EntriesByDedupeKey(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, found)

	size := want0.Size()
	for _, tt := range []struct {
		digest       []byte
		start        uint64
		limit        int
		maxBytes     int
		wantIndexes  []uint64
		wantFirstAll bool
	}{
		{d1, 0, 10, 0, []uint64{0, 1}, true},
		{d2, 0, 1, 0, []uint64{1}, false},
		{d2, 2, 10, 0, []uint64{2}, false},
		{d2, 3, 10, 0, []uint64{}, false},
		{HashOf("nothing"), 0, 10, 0, []uint64{}, false},
		// Bounded by bytes: the entries that fit, and always the first.
		{d1, 0, 10, 2 * size, []uint64{0, 1}, true},
		{d1, 0, 10, 2*size - 1, []uint64{0}, true},
		{d1, 0, 10, 1, []uint64{0}, true},
	} {
		page, err := s.EntriesBySubjectDigest(ctx, store.SubjectQuery{Digest: tt.digest, Start: tt.start, Limit: tt.limit, MaxBytes: tt.maxBytes})
		require.NoError(t, err)
		require.Equal(t, tt.wantIndexes, indexes(page.Entries))
		require.Zero(t, page.ScannedTo, "no builders: no scan bound")
		if tt.wantFirstAll {
			require.Equal(t, want0, page.Entries[0])
		}
	}
}

// testSubjectQueryByBuilder: a builder keeps its own entries and those of
// agents under it, at a segment boundary, byte for byte, and nothing
// else; each query agrees with underBuilder, the filter's definition.
func testSubjectQueryByBuilder(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s := newDB(t)(t)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	const td = "spiffe://example.org/hallmark/"
	ids := []string{
		td + "agent/a",                        // 0
		td + "agent/ab",                       // 1: a lookalike of agent/a
		td + "agent/a/b",                      // 2: under agent/a
		td + "agentx",                         // 3: a lookalike of agent
		td + "agent",                          // 4
		"spiffe://other.org/hallmark/agent/a", // 5: another trust domain
		td + "agent/a_",                       // 6: "_" matches any character in LIKE
		td + "Agent/a",                        // 7: LIKE and some collations ignore case
		td + "agent/a%",                       // 8
	}
	d, other := HashOf("artifact"), HashOf("another artifact")
	var entries []store.Entry
	for i, id := range ids {
		e := Entry(uint64(i), d)
		e.SPIFFEID = id
		entries = append(entries, e)
	}
	e := Entry(uint64(len(ids)), other) // agent/a, but another digest
	e.SPIFFEID = ids[0]
	entries = append(entries, e)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: entries, Checkpoint: Checkpoint(uint64(len(entries)))}))

	for _, tt := range []struct {
		builders []string
		start    uint64
		limit    int
		want     []uint64
	}{
		{nil, 0, 100, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8}},
		{[]string{td + "agent/a"}, 0, 100, []uint64{0, 2}},
		{[]string{td + "agent"}, 0, 100, []uint64{0, 1, 2, 4, 6, 8}},
		{[]string{td + "agent/a", td + "agentx"}, 0, 100, []uint64{0, 2, 3}},
		{[]string{"spiffe://example.org"}, 0, 100, []uint64{0, 1, 2, 3, 4, 6, 7, 8}},
		{[]string{td + "agent/a"}, 1, 100, []uint64{2}},
		{[]string{td + "agent"}, 0, 2, []uint64{0, 1}},
		{[]string{td + "agent/a_"}, 0, 100, []uint64{6}},
		{[]string{td + "nobody"}, 0, 100, []uint64{}},
	} {
		q := store.SubjectQuery{Digest: d, Start: tt.start, Limit: tt.limit, Builders: tt.builders}
		page, err := s.EntriesBySubjectDigest(ctx, q)
		require.NoError(t, err)
		require.Zero(t, page.ScannedTo)
		got := page.Entries
		require.Equal(t, tt.want, indexes(got), "builders %v from %d", tt.builders, tt.start)
		for _, e := range got {
			require.True(t, underBuilder(e.SPIFFEID, q.Builders), e.SPIFFEID)
		}
		if tt.limit == 100 {
			want := []uint64{}
			for i, id := range ids {
				if uint64(i) >= tt.start && underBuilder(id, q.Builders) {
					want = append(want, uint64(i))
				}
			}
			require.Equal(t, want, indexes(got), "as underBuilder decides")
		}
	}

	// MaxScan bounds the entries examined, other builders' included:
	// the page says how far it got, and the next query goes on from
	// there, until the digest's entries are all examined.
	for _, tt := range []struct {
		start, scan uint64
		want        []uint64
		scannedTo   uint64
	}{
		{0, 2, []uint64{0}, 2}, // 0 and 1 examined, 1 is agent/ab's
		{2, 2, []uint64{2}, 4}, // 2 and 3
		{4, 2, []uint64{}, 6},  // 4 (agent) and 5 (other.org): none of agent/a's
		{6, 2, []uint64{}, 8},  // 6 and 7
		{8, 2, []uint64{}, 0},  // 8 alone: all examined
		{0, uint64(len(ids)), []uint64{0, 2}, uint64(len(ids))}, // exactly MaxScan: more may follow
		{0, 100, []uint64{0, 2}, 0},
	} {
		page, err := s.EntriesBySubjectDigest(ctx, store.SubjectQuery{Digest: d, Start: tt.start, Limit: 100, Builders: []string{td + "agent/a"}, MaxScan: int(tt.scan)})
		require.NoError(t, err)
		require.Equal(t, tt.want, indexes(page.Entries), "from %d, %d at most", tt.start, tt.scan)
		require.Equal(t, tt.scannedTo, page.ScannedTo, "from %d, %d at most", tt.start, tt.scan)
	}
}

// underBuilder is store.SubjectQuery.Builders' definition: id is one of
// builders or under one, at a path segment (any id, when there are none).
func underBuilder(id string, builders []string) bool {
	if len(builders) == 0 {
		return true
	}
	for _, b := range builders {
		if id == b || strings.HasPrefix(id, b+"/") {
			return true
		}
	}
	return false
}

func testManyDedupeKeys(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s := newDB(t)(t)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	var entries []store.Entry
	var keys [][]byte
	for i := range uint64(1200) { // more than one IN list
		entries = append(entries, Entry(i, HashOf("digest", i)))
		keys = append(keys, HashOf("key", i))
	}
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: entries, Checkpoint: Checkpoint(1200)}))
	found, err := s.EntriesByDedupeKey(ctx, keys)
	require.NoError(t, err)
	require.Len(t, found, 1200)
}

func testRefuses(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s := newDB(t)(t)
	require.ErrorIs(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(0)}, Checkpoint: Checkpoint(2)}), store.ErrConflict)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	require.ErrorIs(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}), store.ErrConflict, "a second empty log")
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(0)}, Checkpoint: Checkpoint(1)}))

	tests := []struct {
		name string
		b    store.Batch
	}{
		{name: "gap", b: store.Batch{Entries: []store.Entry{Entry(2)}, Checkpoint: Checkpoint(3)}},
		{name: "overlap", b: store.Batch{Entries: []store.Entry{Entry(0)}, Checkpoint: Checkpoint(1)}},
		{name: "out of order", b: store.Batch{Entries: []store.Entry{Entry(2), Entry(1)}, Checkpoint: Checkpoint(3)}},
		{name: "wrong checkpoint size", b: store.Batch{Entries: []store.Entry{Entry(1)}, Checkpoint: Checkpoint(5)}},
		{name: "empty batch on a started log", b: store.Batch{Checkpoint: Checkpoint(1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorIs(t, s.AppendBatch(ctx, tt.b), store.ErrConflict)
		})
	}

	// A failing batch leaves nothing behind: a unique key violation on
	// its second entry rolls back its first.
	dup := Entry(2)
	dup.DedupeKey = HashOf("key", 0)
	err := s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(1, HashOf("d")), dup}, Checkpoint: Checkpoint(3)})
	require.ErrorIs(t, err, store.ErrDuplicate)
	require.NotErrorIs(t, err, store.ErrConflict)
	found, err := s.EntriesByDedupeKey(ctx, [][]byte{HashOf("key", 1)})
	require.NoError(t, err)
	require.Empty(t, found)
	page, err := s.EntriesBySubjectDigest(ctx, store.SubjectQuery{Digest: HashOf("d"), Limit: 10})
	require.NoError(t, err)
	require.Empty(t, page.Entries)
	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), cp.Size)

	// And the log goes on from where it was.
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(1), Entry(2)}, Checkpoint: Checkpoint(3)}))
}

func testSigningCAs(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s := newDB(t)(t)
	cas, err := s.SigningCAs(ctx)
	require.NoError(t, err)
	require.Empty(t, cas)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	a := store.SigningCA{ID: HashOf("a"), DER: []byte("chain a"), NotBefore: t0, NotAfter: t0.Add(time.Hour), FirstSeen: t0.Add(time.Minute)}
	b := store.SigningCA{ID: HashOf("b"), DER: []byte("chain b"), NotBefore: t0, NotAfter: t0.Add(2 * time.Hour), FirstSeen: t0.Add(2 * time.Minute)}
	require.NoError(t, s.AddSigningCA(ctx, b))
	require.NoError(t, s.AddSigningCA(ctx, a))
	again := a
	again.FirstSeen = t0.Add(time.Hour)
	require.NoError(t, s.AddSigningCA(ctx, again)) // first_seen is kept

	cas, err = s.SigningCAs(ctx)
	require.NoError(t, err)
	require.Equal(t, []store.SigningCA{a, b}, cas)
}

func testIssuerStates(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	open := newDB(t)
	s := open(t)
	require.NoError(t, s.Ping(ctx))
	states, err := s.IssuerStates(ctx)
	require.NoError(t, err)
	require.Empty(t, states)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	a := store.IssuerState{Fingerprint: HashOf("a"), TaintedAt: t0}
	require.NoError(t, s.SetIssuerState(ctx, a))
	a.RevokedAt = t0.Add(-time.Minute) // revoked from before the taint: allowed
	require.NoError(t, s.SetIssuerState(ctx, a))
	b := store.IssuerState{Fingerprint: HashOf("b"), TaintedAt: t0.Add(time.Hour)}
	require.NoError(t, s.SetIssuerState(ctx, b))
	require.NoError(t, s.Close())

	s = open(t)
	states, err = s.IssuerStates(ctx)
	require.NoError(t, err)
	want := []store.IssuerState{a, b}
	if bytes.Compare(a.Fingerprint, b.Fingerprint) > 0 {
		want = []store.IssuerState{b, a}
	}
	require.Equal(t, want, states)
}

func testReopen(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	open := newDB(t)
	s := open(t)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(0)}, Nodes: []store.Node{{Hash: HashOf("n00")}}, Checkpoint: Checkpoint(1)}))
	require.NoError(t, s.Close())

	s = open(t)
	cp, err := s.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, Checkpoint(1), cp)
	hashes, err := s.Nodes(ctx, []store.NodeID{{}})
	require.NoError(t, err)
	require.Equal(t, [][]byte{HashOf("n00")}, hashes)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(1)}, Checkpoint: Checkpoint(2)}))
}

func testConcurrentReaders(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s := newDB(t)(t)
	require.NoError(t, s.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			last := uint64(0)
			for {
				select {
				case <-stop:
					return
				default:
				}
				cp, err := s.LatestCheckpoint(ctx)
				if err == nil && cp.Size < last {
					err = fmt.Errorf("the latest checkpoint went back from %d to %d", last, cp.Size)
				}
				if err != nil {
					errs <- err
					return
				}
				last = cp.Size
			}
		})
	}
	for i := range uint64(50) {
		require.NoError(t, s.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(i)}, Checkpoint: Checkpoint(i + 1)}))
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// testStaleWriter: two instances see the same head; the second to append
// is refused and, having reloaded, continues the log.
func testStaleWriter(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	open := newDB(t)
	a, b := open(t), open(t)
	require.NoError(t, a.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}))
	require.ErrorIs(t, b.AppendBatch(ctx, store.Batch{Checkpoint: Checkpoint(0)}), store.ErrConflict)

	require.NoError(t, a.AppendBatch(ctx, store.Batch{Entries: []store.Entry{Entry(0)}, Checkpoint: Checkpoint(1)}))
	other := Entry(0)
	other.DedupeKey, other.LeafHash = HashOf("other"), HashOf("other leaf")
	require.ErrorIs(t, b.AppendBatch(ctx, store.Batch{Entries: []store.Entry{other}, Checkpoint: Checkpoint(1)}), store.ErrConflict)

	cp, err := b.LatestCheckpoint(ctx)
	require.NoError(t, err)
	other.Index = cp.Size
	require.NoError(t, b.AppendBatch(ctx, store.Batch{Entries: []store.Entry{other}, Checkpoint: Checkpoint(cp.Size + 1)}))
	found, err := a.EntriesByDedupeKey(ctx, [][]byte{HashOf("key", 0), HashOf("other")})
	require.NoError(t, err)
	sort.Slice(found, func(i, j int) bool { return found[i].Index < found[j].Index })
	require.Equal(t, []uint64{0, 1}, indexes(found))
	require.Equal(t, HashOf("key", 0), found[0].DedupeKey)
}

// testConcurrentAppenders runs appenders on separate Store instances of
// one database, each appending what it believes continues the log and
// reloading on store.ErrConflict. Each entry's leaf hash chains the
// previous entry's as its writer saw it, so a batch built on a stale head
// that got in would break the chain: the log must end up one unbroken
// chain holding every writer's every entry once.
func testConcurrentAppenders(t *testing.T, newDB NewDB) {
	const (
		writers   = 3
		perWriter = 60
	)
	ctx := context.Background()
	open := newDB(t)
	first := open(t)
	require.NoError(t, first.AppendBatch(ctx, store.Batch{Checkpoint: store.Checkpoint{Size: 0, Note: HashOf("genesis")}}))

	var wg sync.WaitGroup
	errs := make([]error, writers)
	conflicts := make([]int, writers)
	for w := range writers {
		s := first
		if w > 0 {
			s = open(t)
		}
		wg.Go(func() {
			errs[w] = appendAll(ctx, s, w, perWriter, &conflicts[w])
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	t.Logf("%d writers, %d entries each: %v conflicts", writers, perWriter, conflicts)

	total := uint64(writers * perWriter)
	cp, err := first.LatestCheckpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, total, cp.Size)
	var keys [][]byte
	for w := range writers {
		for k := range perWriter {
			keys = append(keys, HashOf("writer", w, "entry", k))
		}
	}
	found, err := first.EntriesByDedupeKey(ctx, keys)
	require.NoError(t, err)
	require.Len(t, found, int(total), "every entry, once")
	sort.Slice(found, func(i, j int) bool { return found[i].Index < found[j].Index })
	prevLeaf := HashOf("genesis")
	for i, e := range found {
		require.Equal(t, uint64(i), e.Index)
		require.Equal(t, HashOf(prevLeaf, e.DedupeKey), e.LeafHash, "entry %d does not continue entry %d", i, i-1)
		hashes, err := first.Nodes(ctx, []store.NodeID{{Index: e.Index}})
		require.NoError(t, err)
		require.Equal(t, e.LeafHash, hashes[0])
		prevLeaf = e.LeafHash
	}
	require.Equal(t, append(HashOf(prevLeaf), prevLeaf...), cp.Note, "the latest checkpoint covers the last entry")
}

// appendAll appends perWriter entries for writer w in batches of 1 to 3.
func appendAll(ctx context.Context, s Store, w, perWriter int, conflicts *int) error {
	for k := 0; k < perWriter; {
		cp, err := s.LatestCheckpoint(ctx)
		if err != nil {
			return err
		}
		prevLeaf := HashOf("genesis")
		if cp.Size > 0 {
			prevLeaf = lastLeaf(cp)
		}
		var b store.Batch
		for j := 0; j < 1+(k+w)%3 && k+j < perWriter; j++ {
			key := HashOf("writer", w, "entry", k+j)
			leaf := HashOf(prevLeaf, key)
			idx := cp.Size + uint64(j)
			b.Entries = append(b.Entries, store.Entry{
				Index: idx, LeafHash: leaf, DedupeKey: key, Body: []byte("body"), Envelope: []byte("{}"),
				Certificate: []byte("der"), SPIFFEID: fmt.Sprintf("spiffe://example.org/writer/%d", w), IntegratedTime: 1700000000,
				SubjectDigests: [][]byte{HashOf("writer", w)},
			})
			b.Nodes = append(b.Nodes, store.Node{NodeID: store.NodeID{Index: idx}, Hash: leaf})
			prevLeaf = leaf
		}
		// The checkpoint's note carries the last leaf, as a real one
		// carries the root: the next writer builds on what it says.
		b.Checkpoint = store.Checkpoint{Size: cp.Size + uint64(len(b.Entries)), Note: append(HashOf(prevLeaf), prevLeaf...)}
		err = s.AppendBatch(ctx, b)
		switch {
		case errors.Is(err, store.ErrConflict):
			*conflicts++
			continue
		case err != nil:
			return err
		}
		k += len(b.Entries)
	}
	return nil
}

// lastLeaf reads the last leaf hash back from a checkpoint note written
// by appendAll (or the genesis one).
func lastLeaf(cp store.Checkpoint) []byte {
	if len(cp.Note) == 64 {
		return cp.Note[32:]
	}
	return HashOf("genesis")
}

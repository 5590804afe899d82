package outbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func item(id string) Item {
	return Item{ID: id, Bundle: []byte("bundle-" + id), Envelope: []byte("env-" + id), Certificate: []byte("cert")}
}

func TestPutLoggedRefusedSurviveReopen(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, o.Put(item(id)))
	}
	require.NoError(t, o.MarkLogged("a", []byte(`{"logIndex":"1"}`)))
	require.NoError(t, o.MarkRefused("b", "unknown root"))
	require.NoError(t, o.Close())
	fi, err := os.Stat(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	a, ok := mustGet(t, o, "a")
	require.True(t, ok)
	require.Equal(t, Logged, a.State)
	require.Equal(t, `{"logIndex":"1"}`, string(a.Logged))
	b, _ := mustGet(t, o, "b")
	require.Equal(t, Refused, b.State)
	require.Equal(t, "unknown root", b.Reason)
	pending := o.Pending(10)
	require.Len(t, pending, 1)
	require.Equal(t, "c", pending[0].ID)
	require.Equal(t, []byte("env-c"), pending[0].Envelope)
}

func TestTornTailIsDropped(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	require.NoError(t, o.Put(item("a")))
	require.NoError(t, o.Put(item("b")))
	require.NoError(t, o.Close())
	path := filepath.Join(dir, "outbox.log")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, data[:len(data)-5], 0o600)) // crash mid-write of b

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Equal(t, 1, o.Len())
	_, ok := mustGet(t, o, "b")
	require.False(t, ok, "a torn record never counts")
	require.NoError(t, o.Put(item("c")), "appends after the cut")
	require.Equal(t, 2, o.Len())
}

func TestGroupCommitConcurrentPuts(t *testing.T) {
	o, err := Open(privateDir(t), Options{})
	require.NoError(t, err)
	defer o.Close()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() { require.NoError(t, o.Put(item(fmt.Sprint(i)))) })
	}
	wg.Wait()
	require.Equal(t, 200, o.Len())
}

func TestWait(t *testing.T) {
	o, err := Open(privateDir(t), Options{})
	require.NoError(t, err)
	defer o.Close()
	require.NoError(t, o.Put(item("a")))
	go func() {
		time.Sleep(50 * time.Millisecond)
		o.MarkLogged("a", []byte("{}")) //nolint:errcheck
	}()
	it, err := o.Wait(context.Background(), "a")
	require.NoError(t, err)
	require.Equal(t, Logged, it.State)

	require.NoError(t, o.Put(item("b")))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = o.Wait(ctx, "b")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	_, err = o.Wait(context.Background(), "nope")
	require.ErrorContains(t, err, "no attestation")
}

func TestCompactionKeepsLiveDropsExpired(t *testing.T) {
	dir := privateDir(t)
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }
	o, err := Open(dir, Options{CompactAt: 1 << 10, Retention: time.Hour, Now: clock})
	require.NoError(t, err)
	for i := range 50 {
		id := fmt.Sprint(i)
		require.NoError(t, o.Put(item(id)))
		if i%2 == 0 {
			require.NoError(t, o.MarkLogged(id, []byte("{}")))
		}
	}
	require.NoError(t, o.Close())
	now = now.Add(2 * time.Hour) // logged ones expire
	o, err = Open(dir, Options{CompactAt: 1 << 10, Retention: time.Hour, Now: clock})
	require.NoError(t, err)
	defer o.Close()
	require.Equal(t, 25, o.Len(), "pending items never expire")
	_, ok := mustGet(t, o, "0")
	require.False(t, ok, "expired logged item dropped")
	require.NoError(t, o.Put(item("new")))
	require.Equal(t, 26, o.Len())
}

func TestSettleManyInOneWrite(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	for i := range 10 {
		require.NoError(t, o.Put(item(fmt.Sprint(i))))
	}
	require.NoError(t, o.Settle([]Settlement{
		{ID: "0", Logged: []byte("{}")}, {ID: "5", Reason: "refused"}, {ID: "9", Logged: []byte("{}")},
	}))
	require.Equal(t, 7, o.Len())
	var ids []string
	for _, it := range o.Pending(100) {
		ids = append(ids, it.ID)
	}
	require.Equal(t, []string{"1", "2", "3", "4", "6", "7", "8"}, ids, "oldest first, settled skipped")
	require.Len(t, o.Pending(2), 2)
	require.NoError(t, o.Close())
	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Equal(t, 7, o.Len())
	it, _ := mustGet(t, o, "5")
	require.Equal(t, Refused, it.State)
}

func TestCompactionIsNotRepeatedForRetainedItems(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 1 << 10})
	require.NoError(t, err)
	defer o.Close()
	for i := range 300 {
		id := fmt.Sprint(i)
		require.NoError(t, o.Put(item(id)))
		require.NoError(t, o.MarkLogged(id, []byte("{}")))
	}
	// Everything is retained (24h), so the file keeps growing; the
	// threshold grows with it instead of rewriting on every write.
	o.mu.Lock()
	waitCompacted(o)
	size, next := o.size, o.compactAt
	o.mu.Unlock()
	require.Greater(t, next, int64(1<<10))
	require.LessOrEqual(t, size, next)
}

// waitCompacted waits for a compaction under way to end. Callers hold
// o.mu.
func waitCompacted(o *Outbox) {
	for o.compacting {
		o.cond.Wait()
	}
}

// mustGet is Get, its bytes read back without error.
func mustGet(t testing.TB, o *Outbox, id string) (Item, bool) {
	t.Helper()
	it, ok, err := o.Get(id)
	require.NoError(t, err)
	return it, ok
}

// Settled items leave memory: their bytes are read back from the file,
// the same before and after compactions and a reopen, and the heap does
// not grow with the items retained.
func TestSettledItemsAreReadFromDisk(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 256 << 10})
	require.NoError(t, err)
	const n, size = 2000, 10 << 10
	bundle := func(i int) []byte { return bytes.Repeat([]byte{byte(i), byte(i >> 8)}, size/2) }
	logged := func(i int) []byte { return fmt.Appendf(nil, `{"tlogEntries":[{"logIndex":"%d"}]}`, i) }

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	// Concurrent puts, settlements in batches: the group commit keeps
	// the fsyncs few.
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			require.NoError(t, o.Put(Item{ID: fmt.Sprint(i), Bundle: bundle(i), Certificate: []byte("cert")}))
		})
	}
	wg.Wait()
	for i := 0; i < n; i += 100 {
		var ss []Settlement
		for j := i; j < i+100; j++ {
			ss = append(ss, Settlement{ID: fmt.Sprint(j), Logged: logged(j)})
		}
		require.NoError(t, o.Settle(ss))
	}
	// A compaction under way holds the items pending when it began until
	// it has copied them (TestCompactionDoesNotHoldSettledItems): measure
	// once it has ended.
	o.mu.Lock()
	waitCompacted(o)
	o.mu.Unlock()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap in use grew %d KiB for %d settled items of %d KiB", grown>>10, n, size>>10)
	require.Less(t, grown, int64(n*size/10), "settled items' bytes are not held in memory")

	check := func(o *Outbox) {
		t.Helper()
		for _, i := range []int{0, 1, n / 2, n - 1} {
			it, ok := mustGet(t, o, fmt.Sprint(i))
			require.True(t, ok)
			require.Equal(t, Logged, it.State)
			require.Equal(t, bundle(i), it.Bundle)
			require.Equal(t, []byte("cert"), it.Certificate)
			require.Equal(t, logged(i), it.Logged)
		}
	}
	check(o)
	o.mu.Lock()
	require.True(t, o.items["7"].onDisk)
	require.Nil(t, o.items["7"].Bundle)
	o.mu.Unlock()
	it, err := o.Wait(context.Background(), "9")
	require.NoError(t, err)
	require.Equal(t, bundle(9), it.Bundle)
	require.NoError(t, o.Close())
	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	check(o)
}

// A settled item whose record was damaged on disk after it was written
// says so when read, instead of answering with wrong bytes.
func TestSettledItemDamagedOnDiskIsAnError(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.NoError(t, o.Put(item("a")))
	require.NoError(t, o.MarkLogged("a", []byte("{}")))
	damageRecord(t, dir, headerSize) // a's put record
	it, ok, err := o.Get("a")
	require.True(t, ok)
	require.ErrorContains(t, err, "is damaged")
	require.Equal(t, Logged, it.State)
}

// PendingBytes counts what pending items hold in memory, from Put to
// settlement, and again after a reopen.
func TestPendingBytes(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	require.Zero(t, o.PendingBytes())
	a, b := item("a"), item("b")
	b.Bundle = make([]byte, 1000)
	size := func(it Item) int64 { return int64(len(it.Bundle) + len(it.Envelope) + len(it.Certificate)) }
	require.NoError(t, o.Put(a))
	require.NoError(t, o.Put(b))
	require.Equal(t, size(a)+size(b), o.PendingBytes())
	require.NoError(t, o.MarkLogged("a", []byte(`{"logIndex":"1"}`)))
	require.Equal(t, size(b), o.PendingBytes())
	require.NoError(t, o.Close())

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	require.Equal(t, size(b), o.PendingBytes(), "after a reopen")
	require.NoError(t, o.MarkRefused("b", "no"))
	require.Zero(t, o.PendingBytes())
	require.NoError(t, o.Close())
}

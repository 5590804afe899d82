package outbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// within runs op and fails the test when it takes longer than a generous
// bound: an op held up by a compaction would wait until the test ends.
func within(t *testing.T, what string, op func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- op() }()
	select {
	case err := <-done:
		require.NoError(t, err, what)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still waiting after 10s: held up by the compaction", what)
	}
}

// A compaction does not hold up writes while it copies: with one stopped
// midway, attestations are put, settled and read back; once it ends,
// what was written meanwhile is in the compacted file, in place, and
// after a reopen.
func TestWritesGoOnDuringCompaction(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 8 << 10})
	require.NoError(t, err)
	defer o.Close()
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	o.mu.Lock()
	o.copied = func() { once.Do(func() { close(inside); <-release }) }
	o.mu.Unlock()

	// Before: pending items, and settled ones until a compaction starts.
	for _, id := range []string{"p0", "p1", "p2"} {
		require.NoError(t, o.Put(item(id)))
	}
	var logged []string
	for i := 0; ; i++ {
		select {
		case <-inside:
		case <-time.After(0):
			require.Less(t, i, 1000, "no compaction started")
			id := fmt.Sprint("s", i)
			require.NoError(t, o.Put(item(id)))
			require.NoError(t, o.MarkLogged(id, []byte(`{"logIndex":"`+id+`"}`)))
			logged = append(logged, id)
			continue
		}
		break
	}

	// During: every kind of write, and reads.
	within(t, "settle an item pending when the compaction began", func() error { return o.MarkLogged("p0", []byte(`{"logIndex":"p0"}`)) })
	within(t, "refuse an item pending when the compaction began", func() error { return o.MarkRefused("p1", "refused p1") })
	for _, id := range []string{"n0", "n1", "n2"} {
		within(t, "put "+id, func() error { return o.Put(item(id)) })
	}
	within(t, "settle n0", func() error { return o.MarkLogged("n0", []byte(`{"logIndex":"n0"}`)) })
	within(t, "read", func() error {
		_, _, err := o.Get(logged[0])
		return err
	})
	o.mu.Lock()
	require.True(t, o.compacting, "the compaction is still under way")
	o.mu.Unlock()
	close(release)
	o.mu.Lock()
	waitCompacted(o)
	size := o.size
	o.mu.Unlock()
	require.Zero(t, o.CompactionFailures())

	check := func(o *Outbox, what string) {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, "outbox.log"))
		require.NoError(t, err)
		checkAll(t, o, append(logged, "p0", "p1", "p2", "n0", "n1", "n2"), what)
		for _, id := range append(logged, "p0", "n0") {
			it, _ := mustGet(t, o, id)
			require.Equal(t, Logged, it.State, "%s: %s", what, id)
			require.Equal(t, `{"logIndex":"`+id+`"}`, string(it.Logged), "%s: %s", what, id)
		}
		it, _ := mustGet(t, o, "p1")
		require.Equal(t, Refused, it.State, what)
		require.Equal(t, "refused p1", it.Reason, what)
		for _, id := range []string{"p2", "n1", "n2"} {
			it, _ := mustGet(t, o, id)
			require.Equal(t, Pending, it.State, "%s: %s", what, id)
		}
		require.Equal(t, 3, o.Len(), what)
		o.mu.Lock()
		if o.size != fi.Size() {
			t.Errorf("%s: the outbox counts %d bytes, the file has %d", what, o.size, fi.Size())
		}
		o.mu.Unlock()
	}
	check(o, "compacted")
	// Nothing was appended since: the compacted file is the one on disk.
	fi, err := os.Stat(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)
	require.Equal(t, size, fi.Size())
	_, err = os.Stat(filepath.Join(dir, "outbox.log.tmp"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, o.Close())

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	check(o, "reopened")
}

// Closing the outbox during a compaction ends it: Close returns, the new
// file is removed, and the outbox reopens with everything acknowledged.
func TestCloseDuringCompaction(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 8 << 10})
	require.NoError(t, err)
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	o.mu.Lock()
	o.copied = func() { once.Do(func() { close(inside); <-release }) }
	o.mu.Unlock()
	var ids []string
	for i := 0; ; i++ {
		select {
		case <-inside:
		case <-time.After(0):
			require.Less(t, i, 1000, "no compaction started")
			id := fmt.Sprint(i)
			require.NoError(t, o.Put(item(id)))
			ids = append(ids, id)
			continue
		}
		break
	}
	closed := make(chan error, 1)
	go func() { closed <- o.Close() }()
	close(release)
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	_, err = os.Stat(filepath.Join(dir, "outbox.log.tmp"))
	require.ErrorIs(t, err, os.ErrNotExist, "the abandoned compaction's file is removed")
	require.Zero(t, o.CompactionFailures(), "closing is not a failure")

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Equal(t, len(ids), o.Len())
	checkAll(t, o, ids, "reopened")
}

// Many writers put and settle while compactions run one after another
// (each catching up with what they appended) and readers read settled
// items back: every item is where the outbox says, whole, with its
// outcome, during, after, and after a reopen.
func TestConcurrentWritesAcrossCompactions(t *testing.T) {
	dir := privateDir(t)
	log, logs := observed()
	o, err := Open(dir, Options{CompactAt: 32 << 10, Log: log})
	require.NoError(t, err)
	defer o.Close()
	const writers, each = 8, 150
	bundle := func(id string) []byte { return bytes.Repeat([]byte(id+";"), 100) }
	outcome := func(i int) string { return [...]string{"pending", "logged", "refused"}[i%3] }
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := o.Put(Item{ID: id, Bundle: bundle(id), Certificate: []byte("cert")}); err != nil {
					t.Error(err)
					return
				}
				var err error
				switch outcome(i) {
				case "logged":
					err = o.MarkLogged(id, []byte(`{"id":"`+id+`"}`))
				case "refused":
					err = o.MarkRefused(id, "refused "+id)
				}
				if err != nil {
					t.Error(err)
					return
				}
				if i > 0 { // a settled item of this writer's, read back
					prev := fmt.Sprintf("w%d-%d", w, i-1)
					it, ok, err := o.Get(prev)
					if err != nil || !ok || !bytes.Equal(it.Bundle, bundle(prev)) {
						t.Errorf("read %s during compactions: ok %v, err %v", prev, ok, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	o.mu.Lock()
	waitCompacted(o)
	o.mu.Unlock()
	require.Zero(t, o.CompactionFailures())
	compactions, caughtUp := logs.FilterMessage("Compacted the outbox").All(), 0
	for _, e := range compactions {
		if e.ContextMap()["records_appended_meanwhile"].(int64) > 0 {
			caughtUp++
		}
	}
	t.Logf("%d compactions, %d of them with records appended meanwhile", len(compactions), caughtUp)
	require.Greater(t, len(compactions), 3, "compactions ran while writing")
	require.Positive(t, caughtUp, "a compaction copied what was appended while it ran")

	check := func(o *Outbox, what string) {
		t.Helper()
		pending := 0
		for w := range writers {
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				it, ok, err := o.Get(id)
				require.NoError(t, err, "%s: %s", what, id)
				require.True(t, ok, "%s: %s", what, id)
				require.Equal(t, bundle(id), it.Bundle, "%s: %s", what, id)
				switch outcome(i) {
				case "pending":
					require.Equal(t, Pending, it.State, "%s: %s", what, id)
					pending++
				case "logged":
					require.Equal(t, Logged, it.State, "%s: %s", what, id)
					require.Equal(t, `{"id":"`+id+`"}`, string(it.Logged), "%s: %s", what, id)
				case "refused":
					require.Equal(t, Refused, it.State, "%s: %s", what, id)
					require.Equal(t, "refused "+id, it.Reason, "%s: %s", what, id)
				}
			}
		}
		require.Equal(t, pending, o.Len(), what)
	}
	check(o, "after the compactions")
	require.NoError(t, o.Close())
	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	check(o, "reopened")
	require.Empty(t, o.Damaged())
}

package outbox

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
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

// pauseAt stops the next compaction in the background at step (see
// Outbox.pause): inside is closed once it is there, and it goes on once
// release is called (again: nothing; tests defer it, so that a test
// failing while the compaction waits does not leave Close waiting).
func pauseAt(o *Outbox, step string) (inside chan struct{}, release func()) {
	if step == "swapping" {
		panic(`pauseAt: "swapping" is called under o.mu, where stopping deadlocks the outbox`)
	}
	inside, released := make(chan struct{}), make(chan struct{})
	var pause, rel sync.Once
	o.mu.Lock()
	o.pause = func(s string) {
		if s == step {
			pause.Do(func() { close(inside); <-released })
		}
	}
	o.mu.Unlock()
	return inside, func() { rel.Do(func() { close(released) }) }
}

// untilInside writes with write(0), write(1), ... until the compaction
// pauseAt stops is inside; a write held up fails the test, as in within.
func untilInside(t *testing.T, inside <-chan struct{}, write func(i int) error) {
	t.Helper()
	for i := 0; ; i++ {
		select {
		case <-inside:
			return
		default:
		}
		require.Less(t, i, 1000, "no compaction started")
		within(t, "a write before the compaction stops", func() error { return write(i) })
	}
}

// reached waits for a compaction to stop where the test asked it to, and
// fails the test (instead of hanging it) if none gets there.
func reached(t *testing.T, inside <-chan struct{}) {
	t.Helper()
	select {
	case <-inside:
	case <-time.After(10 * time.Second):
		t.Fatal("no compaction in the background reached the step within 10s")
	}
}

// The steps of a compaction in the background that run beside writes.
var compactionSteps = []string{"copying", "copied", "catching up"}

// A compaction does not hold up writes while it copies, nor while it
// catches up: with one stopped at each of those steps, attestations are
// put, settled and read back; once it ends, what was written meanwhile is
// in the compacted file, in place, and after a reopen.
func TestWritesGoOnDuringCompaction(t *testing.T) {
	for _, step := range compactionSteps {
		t.Run(step, func(t *testing.T) { testWritesGoOnDuringCompaction(t, step) })
	}
}

func testWritesGoOnDuringCompaction(t *testing.T, step string) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 8 << 10})
	require.NoError(t, err)
	defer o.Close()
	inside, release := pauseAt(o, step)
	defer release()

	// Before: pending items, and settled ones until a compaction starts.
	for _, id := range []string{"p0", "p1", "p2"} {
		require.NoError(t, o.Put(item(id)))
	}
	var logged []string
	untilInside(t, inside, func(i int) error {
		id := fmt.Sprint("s", i)
		if err := o.Put(item(id)); err != nil {
			return err
		}
		logged = append(logged, id)
		return o.MarkLogged(id, []byte(`{"logIndex":"`+id+`"}`))
	})

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
	release()
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
	for _, step := range compactionSteps {
		t.Run(step, func(t *testing.T) { testCloseDuringCompaction(t, step) })
	}
}

func testCloseDuringCompaction(t *testing.T, step string) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 8 << 10})
	require.NoError(t, err)
	inside, release := pauseAt(o, step)
	defer release()
	var ids []string
	untilInside(t, inside, func(i int) error {
		ids = append(ids, fmt.Sprint(i))
		return o.Put(item(fmt.Sprint(i)))
	})
	closed := make(chan error, 1)
	go func() { closed <- o.Close() }()
	release()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	_, err = os.Stat(filepath.Join(dir, "outbox.log.tmp"))
	require.ErrorIs(t, err, os.ErrNotExist, "the abandoned compaction's file is removed")
	require.Zero(t, o.CompactionFailures(), "closing is not a failure")

	checkReopened(t, dir, ids)
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
	// How many depends on the machine: each starts once the file has
	// doubled since the last, and a slow one lets it double more than
	// once meanwhile (3 when the test shares 2 cores with a busy loop on
	// each, 5 to 6 alone).
	require.GreaterOrEqual(t, len(compactions), 2, "compactions ran while writing")
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

// waitFor waits until cond, read under o.mu, holds.
func waitFor(t *testing.T, o *Outbox, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		if ok {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("still waiting after 10s for %s", what)
		}
	}
}

// requireHolds requires o to hold exactly want, creation times aside, and
// its counts to agree with what it holds.
func requireHolds(t *testing.T, o *Outbox, want map[string]Item, what string) {
	t.Helper()
	got := snapshot(t, o)
	for id, it := range got {
		it.Created = 0
		got[id] = it
	}
	require.Equal(t, want, got, what)
	requireCounts(t, o, what)
}

// snapshot is every item the outbox holds, read back whole.
func snapshot(t *testing.T, o *Outbox) map[string]Item {
	t.Helper()
	o.mu.Lock()
	ids := make([]string, 0, len(o.items))
	for id := range o.items {
		ids = append(ids, id)
	}
	o.mu.Unlock()
	all := map[string]Item{}
	for _, id := range ids {
		it, ok := mustGet(t, o, id)
		require.True(t, ok, id)
		all[id] = it
	}
	return all
}

// requireCounts checks the outbox's counts against its items and its
// size against the file's.
func requireCounts(t *testing.T, o *Outbox, what string) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	var pending, refused int
	var bytes int64
	for _, sl := range o.items {
		switch sl.State {
		case Pending:
			pending++
			bytes += sl.size()
		case Refused:
			refused++
		}
	}
	require.Equal(t, pending, o.npending, what)
	require.Equal(t, refused, o.nrefused, what)
	require.Equal(t, bytes, o.pendingBytes, what)
	var inOrder int
	for _, id := range o.order {
		if sl := o.items[id]; sl != nil && sl.State == Pending {
			inOrder++
		}
	}
	require.Equal(t, pending, inOrder, "%s: every pending item is in order", what)
	fi, err := os.Stat(o.path)
	require.NoError(t, err)
	require.Equal(t, fi.Size(), o.size, "%s: the size the outbox counts is the file's", what)
}

// A compaction that drops records (expired, or damaged since) moves every
// record after them: the records appended while it ran, puts and
// settlements alike, are read back from where they now lie, and the
// outbox reopens as it was. (When it keeps everything, every record
// lands where it was, and a span left pointing into the old file reads
// the right bytes by luck.)
func TestCompactionMovesWhatWasAppendedMeanwhile(t *testing.T) {
	for _, step := range compactionSteps {
		t.Run(step, func(t *testing.T) {
			dir := privateDir(t)
			var now atomic.Int64
			now.Store(1_000_000)
			clock := func() time.Time { return time.Unix(now.Load(), 0) }
			o, err := Open(dir, Options{CompactAt: 1 << 30, Retention: time.Hour, Now: clock})
			require.NoError(t, err)
			defer o.Close()
			logged := func(id string) []byte { return []byte(`{"logIndex":"` + id + `"}`) }

			for i := range 20 { // expired by the time the compaction begins
				id := fmt.Sprint("old", i)
				require.NoError(t, o.Put(item(id)))
				if i%2 == 0 {
					require.NoError(t, o.MarkLogged(id, logged(id)))
				} else {
					require.NoError(t, o.MarkRefused(id, "refused "+id))
				}
			}
			now.Add(2 * 3600)
			for i := range 4 { // kept: settled within retention
				id := fmt.Sprint("kept", i)
				require.NoError(t, o.Put(item(id)))
				require.NoError(t, o.MarkLogged(id, logged(id)))
			}
			for i := range 4 { // kept: pending
				require.NoError(t, o.Put(item(fmt.Sprint("p", i))))
			}
			// kept3's put is damaged on disk: the compaction drops it.
			o.mu.Lock()
			damaged := o.items["kept3"].put
			o.mu.Unlock()
			damageRecord(t, dir, damaged.off)

			inside, release := pauseAt(o, step)
			defer release()
			o.mu.Lock()
			o.compactAt = 0
			o.mu.Unlock()
			require.NoError(t, o.Put(item("trigger")))
			reached(t, inside)

			// Meanwhile: settlements of items pending when it began, new
			// items put and settled, and writes that change nothing.
			require.NoError(t, o.MarkLogged("p0", logged("p0")))
			require.NoError(t, o.MarkRefused("p1", "refused p1"))
			for i := range 4 {
				require.NoError(t, o.Put(item(fmt.Sprint("n", i))))
			}
			require.NoError(t, o.Settle([]Settlement{{ID: "n0", Logged: logged("n0")}, {ID: "n1", Reason: "refused n1"}}))
			require.NoError(t, o.Put(item("kept0")), "a put of an ID the outbox holds")
			require.NoError(t, o.MarkRefused("kept1", "too late"), "a settlement of a settled item")
			require.NoError(t, o.MarkLogged("nobody", logged("nobody")), "a settlement of no item")
			it, _ := mustGet(t, o, "kept2")
			require.Equal(t, logged("kept2"), it.Logged)
			release()
			o.mu.Lock()
			waitCompacted(o)
			o.mu.Unlock()
			require.Zero(t, o.CompactionFailures())
			require.Len(t, o.Damaged(), 2, "kept3's records, moved aside")

			want := map[string]Item{}
			add := func(id string, st State, tlog []byte, reason string) {
				it := item(id)
				it.State, it.Logged, it.Reason = st, tlog, reason
				want[id] = it
			}
			for _, id := range []string{"kept0", "kept1", "kept2", "p0", "n0"} {
				add(id, Logged, logged(id), "")
			}
			add("p1", Refused, nil, "refused p1")
			add("n1", Refused, nil, "refused n1")
			for _, id := range []string{"p2", "p3", "n2", "n3", "trigger"} {
				add(id, Pending, nil, "")
			}
			check := func(o *Outbox, what string) {
				t.Helper()
				requireHolds(t, o, want, what)
				require.Equal(t, 2, o.RefusedLen(), what)
				var pending []string
				for _, it := range o.Pending(100) {
					pending = append(pending, it.ID)
				}
				require.Equal(t, []string{"p2", "p3", "trigger", "n2", "n3"}, pending, "%s: oldest first", what)
			}
			check(o, "compacted")
			require.NoError(t, o.Put(item("after")))
			require.NoError(t, o.MarkLogged("after", logged("after")))
			add("after", Logged, logged("after"), "")
			check(o, "appended to after the compaction")
			require.NoError(t, o.Close())

			o, err = Open(dir, Options{Retention: time.Hour, Now: clock})
			require.NoError(t, err)
			defer o.Close()
			require.Empty(t, o.Damaged())
			check(o, "reopened")
		})
	}
}

// swapFile makes the outbox write its next batch to a pipe nobody reads,
// so that the write blocks; restore puts the outbox's file back, and
// fail makes the blocked write fail (EPIPE), after a part of it went
// into the pipe.
func swapFile(t *testing.T, o *Outbox) (restore, fail func()) {
	restore, r := leakingFile(t, o)
	return restore, func() { require.NoError(t, r.Close()) }
}

// A write that fails while a compaction waits for it to swap the file
// neither hangs writes nor the compaction: the compaction swaps, the
// failed write's callers hear of it, the file is rewritten, and writes go
// on.
func TestWriteFailureWhileACompactionWaitsToSwap(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 8 << 10})
	require.NoError(t, err)
	// Not deferred: it would wait for ever if the outbox hangs.
	inside, release := pauseAt(o, "copied")
	defer release()
	var ids []string
	untilInside(t, inside, func(i int) error {
		ids = append(ids, fmt.Sprint(i))
		return o.Put(item(fmt.Sprint(i)))
	})
	restore, fail := swapFile(t, o)
	failed := make(chan error, 1)
	go func() { failed <- o.Put(Item{ID: "fails", Bundle: make([]byte, 1<<20)}) }()
	waitFor(t, o, "the write to block", func() bool { return o.writeInFlight })
	release()
	waitFor(t, o, "the compaction to wait for the write", func() bool { return o.swapping })
	restore()
	fail()
	select {
	case err := <-failed:
		require.ErrorContains(t, err, "write")
	case <-time.After(10 * time.Second):
		t.Fatal("a write that failed while a compaction waited to swap the file did not return")
	}
	within(t, "a put after", func() error { return o.Put(item("after")) })
	o.mu.Lock()
	waitCompacted(o)
	o.mu.Unlock()
	require.Zero(t, o.CompactionFailures())
	ids = append(ids, "after")
	checkAll(t, o, ids, "after the failed write")
	_, ok, _ := o.Get("fails")
	require.False(t, ok, "a failed write changes nothing")
	requireCounts(t, o, "after the failed write")
	require.NoError(t, o.Close())

	checkReopened(t, dir, ids)
}

// When a write fails and the rewrite that would drop what it left in the
// file fails too, the writes queued behind it are refused: appended after
// a partial record, they would be acknowledged, then swallowed by it when
// the file is read again.
func TestWritesQueuedBehindAFailedWriteAreNotLost(t *testing.T) {
	dir := privateDir(t)
	core, logs := observer.New(zap.ErrorLevel)
	var told []error
	o, err := Open(dir, Options{Log: zap.New(core), OnBroken: func(err error) { told = append(told, err) }})
	require.NoError(t, err)
	require.NoError(t, o.Put(item("a")))
	restore, fail := swapFile(t, o)
	big := Item{ID: "big", Bundle: make([]byte, 1<<20)}
	failed := make(chan error, 1)
	go func() { failed <- o.Put(big) }()
	waitFor(t, o, "the write to block", func() bool { return o.writeInFlight })
	queued := make(chan error, 1)
	go func() { queued <- o.Put(item("b")) }()
	waitFor(t, o, "b to be queued", func() bool { return len(o.queue) == 1 })

	// What the disk took of the failed write before it failed: the start
	// of its record.
	b, err := frame(record{Op: "put", Item: &big})
	require.NoError(t, err)
	f, err := os.OpenFile(filepath.Join(dir, "outbox.log"), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(b[:len(b)/2])
	require.NoError(t, err)
	require.NoError(t, f.Close())
	// The rewrite cannot create its file.
	tmp := filepath.Join(dir, "outbox.log.tmp")
	require.NoError(t, os.MkdirAll(filepath.Join(tmp, "x"), 0o700))
	restore()
	fail()

	require.Error(t, <-failed)
	errB := <-queued
	errC := o.Put(item("c"))
	require.ErrorContains(t, o.Broken(), "refusing writes: a write failed and rewriting the file after it failed too")
	o.mu.Lock()
	toldOnce := slices.Clone(told)
	o.mu.Unlock()
	require.Len(t, toldOnce, 1, "OnBroken once, however many writes are refused after")
	require.Equal(t, o.Broken().Error(), toldOnce[0].Error())
	require.Equal(t, 1, logs.FilterMessageSnippet("refuses every write").Len())
	require.NoError(t, o.Close())
	require.NoError(t, os.RemoveAll(tmp))

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	checkAll(t, o, []string{"a"}, "reopened")
	if errB == nil {
		checkAll(t, o, []string{"b"}, "reopened: b was acknowledged")
	}
	if errC == nil {
		checkAll(t, o, []string{"c"}, "reopened: c was acknowledged")
	}
	require.ErrorContains(t, errB, "refusing writes")
	require.ErrorContains(t, errC, "refusing writes")
}

// leakingFile makes the outbox write its next batch to a pipe, as
// swapFile does, and returns the pipe's reading end: the test reads there
// what the write sends, and closing it makes the write fail (EPIPE).
// restore puts the outbox's file back.
func leakingFile(t *testing.T, o *Outbox) (restore func(), r *os.File) {
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	t.Cleanup(func() { pr.Close(); pw.Close() })
	o.mu.Lock()
	file := o.file
	o.file = pw
	o.mu.Unlock()
	return func() {
		o.mu.Lock()
		o.file = file
		o.mu.Unlock()
	}, pr
}

// Must show: a write that fails after part of its record reached the
// file, followed by a rewrite that succeeds, loses nothing acknowledged
// and leaves nothing damaged (docs/outbox.md: the file is rewritten at
// once, dropping whatever part of the failed write reached the disk).
// The bytes planted in the file are the start of the failed write's own
// record (its head, with the body's CRC, is what the write sent), cut at
// four places. Every put acknowledged before the failure, the put
// queued behind it and the puts after it are read back with their exact
// bytes and outcomes, before and after a reopen; the failed put is
// nowhere; the file as the outbox leaves it holds only intact records,
// with no tail; and the reopen finds no damage, no torn tail, and logs
// nothing.
func TestFailedWritesPartialRecordIsDroppedByTheRewrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(n int) int // how much of the failed write's n-byte record reached the file
	}{
		{"part of the marker", func(int) int { return 3 }},
		{"the head alone", func(int) int { return frameHead }},
		{"half the record", func(n int) int { return n / 2 }},
		{"all but its last byte", func(n int) int { return n - 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := privateDir(t)
			clock := func() time.Time { return time.Unix(1_700_000_000, 0) }
			o, err := Open(dir, Options{Now: clock})
			require.NoError(t, err)
			defer o.Close()
			want := map[string]Item{}
			put := func(id string) {
				t.Helper()
				require.NoError(t, o.Put(item(id)))
				want[id] = item(id)
			}
			logged := func(id string) {
				t.Helper()
				tlog := []byte(`{"logIndex":"` + id + `"}`)
				require.NoError(t, o.MarkLogged(id, tlog))
				it := want[id]
				it.State, it.Logged = Logged, tlog
				want[id] = it
			}
			refused := func(id string) {
				t.Helper()
				require.NoError(t, o.MarkRefused(id, "refused "+id))
				it := want[id]
				it.State, it.Reason = Refused, "refused "+id
				want[id] = it
			}

			// Before: acknowledged puts, some settled (their bytes read
			// from the file from now on).
			for _, id := range []string{"a0", "a1", "a2", "a3"} {
				put(id)
			}
			logged("a0")
			refused("a1")

			// The failed write, with a put queued behind it.
			restore, pr := leakingFile(t, o)
			big := Item{ID: "big", Bundle: bytes.Repeat([]byte("big;"), 256<<10), Certificate: []byte("cert")}
			failed := make(chan error, 1)
			go func() { failed <- o.Put(big) }()
			waitFor(t, o, "the write to block", func() bool { return o.writeInFlight })
			queued := make(chan error, 1)
			go func() { queued <- o.Put(item("queued")) }()
			waitFor(t, o, "queued to be queued", func() bool { return len(o.queue) == 1 })
			restore()
			// What reached the disk: the first bytes of the failed
			// write's record (the pipe shows they are the ones it writes).
			// They are in the file before the write fails, as a disk would
			// have them: taken from the pipe, the end of the record would
			// let the write finish, and the rewrite run, before they are.
			big.Created = clock().Unix()
			rec, err := frame(record{Op: "put", Item: &big})
			require.NoError(t, err)
			head := make([]byte, frameHead)
			_, err = io.ReadFull(pr, head)
			require.NoError(t, err)
			require.Equal(t, rec[:frameHead], head, "the failed write's record")
			cut := tc.cut(len(rec))
			require.Less(t, cut, len(rec))
			partial := rec[:cut]
			path := filepath.Join(dir, "outbox.log")
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.Write(partial)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			o.mu.Lock()
			size := o.size
			o.mu.Unlock()
			fi, err := os.Stat(path)
			require.NoError(t, err)
			require.Equal(t, size+int64(cut), fi.Size(), "the partial record is in the file")
			require.NoError(t, pr.Close())

			require.ErrorContains(t, <-failed, "write")
			require.NoError(t, <-queued, "a put queued behind the failed write, once the rewrite succeeded")
			want["queued"] = item("queued")
			_, ok, _ := o.Get("big")
			require.False(t, ok, "the failed put was never acknowledged")

			// After: more puts, and settlements of items put before.
			for _, id := range []string{"b0", "b1", "b2"} {
				put(id)
			}
			logged("a2")
			logged("b0")
			refused("b1")

			check := func(o *Outbox, what string) {
				t.Helper()
				requireHolds(t, o, want, what)
			}
			check(o, "after the failed write")
			require.NoError(t, o.Close())

			// The file holds intact records only, all of them wanted,
			// and ends with the last one.
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			s, err := scanFile(data)
			require.NoError(t, err)
			require.Zero(t, s.torn, "the file ends in a record cut short")
			require.Empty(t, s.damaged, "the file holds damaged records")
			records := 0
			for _, it := range want {
				records++
				if it.State != Pending {
					records++
				}
			}
			require.Len(t, s.records, records)

			log, logs := observed()
			o, err = Open(dir, Options{Now: clock, Log: log})
			require.NoError(t, err)
			defer o.Close()
			_, torn := o.Torn()
			require.False(t, torn, "the reopened outbox found a torn tail")
			require.Empty(t, o.Damaged())
			_, err = os.Stat(filepath.Join(dir, DamagedDir))
			require.ErrorIs(t, err, os.ErrNotExist, "nothing was kept aside")
			require.Zero(t, logs.Len(), "the reopen logged %v", logs.All())
			check(o, "reopened")
		})
	}
}

// A compaction does not keep in memory the bytes of the items it copies
// once they are settled: it holds a pending item's bytes only until it
// has written them, so that settling what was pending when it began
// frees them even while it runs.
func TestCompactionDoesNotHoldSettledItems(t *testing.T) {
	o, err := Open(privateDir(t), Options{CompactAt: 1 << 30})
	require.NoError(t, err)
	defer o.Close()
	const n, size = 1000, 10 << 10
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			require.NoError(t, o.Put(Item{ID: fmt.Sprint(i), Bundle: bytes.Repeat([]byte{byte(i)}, size)}))
		})
	}
	wg.Wait()
	inside, release := pauseAt(o, "copied")
	defer release()
	o.mu.Lock()
	o.compactAt = 0
	o.mu.Unlock()
	require.NoError(t, o.Put(item("trigger")))
	reached(t, inside)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i += 100 {
		var ss []Settlement
		for j := i; j < i+100; j++ {
			ss = append(ss, Settlement{ID: fmt.Sprint(j), Logged: []byte("{}")})
		}
		require.NoError(t, o.Settle(ss))
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	freed := int64(before.HeapInuse) - int64(after.HeapInuse)
	t.Logf("settling %d items of %d KiB during a compaction freed %d KiB", n, size>>10, freed>>10)
	require.Greater(t, freed, int64(n*size/2), "the compaction holds the bytes of items settled while it runs")
	release()
	o.mu.Lock()
	waitCompacted(o)
	o.mu.Unlock()
	require.Zero(t, o.CompactionFailures())
}

// checkReopened opens the outbox in dir again and checks that it holds
// ids, pending, whole.
func checkReopened(t *testing.T, dir string, ids []string) {
	t.Helper()
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Equal(t, len(ids), o.Len())
	checkAll(t, o, ids, "reopened")
}

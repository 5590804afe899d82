//go:build linux

package measure

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// prompt is how late past its deadline a caller waiting for a measuring
// thread may return: the wait ends with ctx, not when a thread frees.
const prompt = 500 * time.Millisecond

// holder runs tasks on a pool that block until released, to fill threads.
type holder struct {
	started chan struct{}
	release chan struct{}
	wg      sync.WaitGroup
}

func newHolder() *holder {
	return &holder{started: make(chan struct{}), release: make(chan struct{})}
}

// hold takes n threads as uid and returns once all n run.
func (h *holder) hold(t *testing.T, p *pool, uid uint32, n int) {
	t.Helper()
	c := &creds{uid: uid, gid: uid}
	for range n {
		h.wg.Go(func() {
			err := p.run(context.Background(), c, func() error {
				h.started <- struct{}{}
				<-h.release
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	for range n {
		select {
		case <-h.started:
		case <-time.After(5 * time.Second):
			t.Fatalf("uid %d got fewer than %d threads", uid, n)
		}
	}
}

func (h *holder) done() {
	close(h.release)
	h.wg.Wait()
}

// Must show: dispatch onto the measuring threads respects ctx and shares
// the threads out per uid, both ways. A uid holding its share (half the
// pool) waits for its own share, until its deadline; another uid is served
// at once meanwhile, even while the first uid waits; with the pool full, a
// caller's deadline ends its wait; a task whose ctx has ended is never run,
// neither by run nor by a thread it was handed to.
func TestMeasuringThreadsDispatch(t *testing.T) {
	needRoot(t)
	p := newPool(4)
	require.Equal(t, 2, p.share)
	ctx := context.Background()

	// try runs a quick task as uid with a deadline of wait and reports
	// whether it ran, its error and how long it took.
	try := func(uid uint32, wait time.Duration) (ran bool, took time.Duration, err error) {
		ctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		start := time.Now()
		err = p.run(ctx, &creds{uid: uid, gid: uid}, func() error { ran = true; return nil })
		return ran, time.Since(start), err
	}
	requireWaited := func(ran bool, took, wait time.Duration, err error, why string) {
		t.Helper()
		require.False(t, ran, why)
		require.ErrorIs(t, err, context.DeadlineExceeded, why)
		require.ErrorContains(t, err, "measure: waiting for a measuring thread: context deadline exceeded")
		require.Less(t, took, wait+prompt, why)
		t.Logf("%s: returned after %v (deadline %v)", why, took, wait)
	}

	a := newHolder()
	a.hold(t, p, stepUID, p.share)

	// A over its share waits, and holds no thread of the pool meanwhile.
	patient := make(chan error, 1)
	var patientRan atomic.Bool
	go func() {
		patient <- p.run(ctx, &creds{uid: stepUID, gid: stepGID}, func() error { patientRan.Store(true); return nil })
	}()
	ran, took, err := try(stepUID, 100*time.Millisecond)
	requireWaited(ran, took, 100*time.Millisecond, err, "a uid over its share")

	ran, took, err = try(otherUID, 2*time.Second)
	require.NoError(t, err)
	require.True(t, ran)
	require.Less(t, took, prompt, "another uid is served while one holds its share and waits for more")
	t.Logf("another uid served in %v", took)

	b := newHolder()
	b.hold(t, p, otherUID, p.share)
	ran, took, err = try(otherUID+1, 100*time.Millisecond)
	requireWaited(ran, took, 100*time.Millisecond, err, "a third uid, with two uids holding the whole pool")

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	err = p.run(cancelled, &creds{uid: otherUID + 1, gid: otherUID + 1}, func() error { t.Error("ran a cancelled task"); return nil })
	require.ErrorIs(t, err, context.Canceled)

	require.False(t, patientRan.Load(), "the uid over its share waited")
	a.done()
	select {
	case err := <-patient:
		require.NoError(t, err, "the waiting uid runs once its own share frees")
		require.True(t, patientRan.Load())
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting uid was not served once its share freed")
	}

	// A thread handed a task whose ctx has ended does not run it.
	done := make(chan error, 1)
	p.tasks <- task{ctx: cancelled, c: &creds{uid: stepUID, gid: stepGID}, fn: func() error { t.Error("a thread ran a cancelled task"); return nil }, done: done}
	require.ErrorIs(t, <-done, context.Canceled)
	b.done()
}

// Must show the attack of one uid on the measuring threads fails: uid A
// (any grant) floods with more concurrent measurements of large sparse
// files than there are threads; only its share of the threads hashes, and
// uid B's one small file is measured within 2s meanwhile. The denied
// direction: A's measurements beyond its share wait for its own share,
// holding no thread, and either end at their own deadline with a clear
// error or, given time, are served once A's share frees.
func TestMeasuringThreadsFairToOtherUIDs(t *testing.T) {
	needRoot(t)
	ws := filepath.Join(openDirFor(t), "ws")
	require.NoError(t, os.Mkdir(ws, 0o755))
	threads := max(4, 2*runtime.GOMAXPROCS(0))
	share := measuring.get().share
	for i := range threads {
		p := filepath.Join(ws, fmt.Sprintf("big%d", i))
		f, err := os.Create(p)
		require.NoError(t, err)
		require.NoError(t, f.Truncate(60<<30)) // sparse: 60 GiB of nothing, under the default limits
		require.NoError(t, f.Close())
		require.NoError(t, os.Chown(p, stepUID, stepGID))
	}
	writeFile(t, ws, "mine", []byte("attacker"))
	require.NoError(t, os.Chown(filepath.Join(ws, "mine"), stepUID, stepGID))
	writeFile(t, ws, "small", []byte("victim"))

	c := asSelf(t)
	attacker, victim := c, c
	attacker.UID, attacker.GID, attacker.Groups, attacker.Caps = stepUID, stepGID, nil, 0
	victim.UID, victim.GID, victim.Groups, victim.Caps = otherUID, otherUID, nil, 0

	const floodFor = 3 * time.Second
	type result struct {
		p    Progress
		err  error
		took time.Duration
	}
	flood := make([]result, threads)
	var wg sync.WaitGroup
	for i := range flood {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), floodFor)
			defer cancel()
			start := time.Now()
			_, _, flood[i].err = Measure(ctx, attacker, ws, []string{fmt.Sprintf("big%d", i)}, nil, Limits{}, &flood[i].p)
			flood[i].took = time.Since(start)
		})
	}
	hashing := func() (n int) {
		for i := range flood {
			if flood[i].p.FilesTotal.Load() > 0 {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return hashing() >= share }, 2*time.Second, 5*time.Millisecond, "the attacker's share is hashing")
	var patient result
	patientDone := make(chan struct{})
	go func() {
		defer close(patientDone)
		start := time.Now()
		var got []Digest
		got, _, patient.err = Measure(context.Background(), attacker, ws, []string{"mine"}, nil, Limits{}, &patient.p)
		patient.took = time.Since(start)
		if patient.err == nil && (len(got) != 1 || got[0].SHA256 != sum([]byte("attacker"))) {
			patient.err = fmt.Errorf("measured %v", got)
		}
	}()
	time.Sleep(100 * time.Millisecond) // the patient request queues behind the flood

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	got, _, err := Measure(ctx, victim, ws, []string{"small"}, nil, Limits{}, nil)
	took := time.Since(start)
	require.NoError(t, err, "the victim's measurement, %v after it began", took)
	require.Equal(t, []Digest{{Name: "small", SHA256: sum([]byte("victim")), Size: 6}}, got)
	t.Logf("%d threads, %d per uid; uid %d flooding with %d measurements of 60 GiB sparse files; uid %d's one small file measured in %v", threads, share, stepUID, threads, otherUID, took)
	require.Equal(t, share, hashing(), "only the attacker's share hashes")
	require.Zero(t, patient.p.FilesTotal.Load(), "the attacker's request beyond its share waits")

	wg.Wait()
	for i := range flood {
		r := &flood[i]
		require.ErrorIs(t, r.err, context.DeadlineExceeded, "flood %d", i)
		require.Less(t, r.took, floodFor+prompt, "flood %d ended at its deadline", i)
		if r.p.FilesTotal.Load() == 0 {
			require.ErrorContains(t, r.err, "measure: waiting for a measuring thread: context deadline exceeded", "flood %d", i)
		}
		t.Logf("flood %d: %v after %v, %d bytes hashed", i, r.err, r.took.Round(time.Millisecond), r.p.BytesDone.Load())
	}
	select {
	case <-patientDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the attacker's waiting request was not served once its share freed")
	}
	require.NoError(t, patient.err)
	t.Logf("the attacker's request beyond its share was served after %v", patient.took.Round(time.Millisecond))
}

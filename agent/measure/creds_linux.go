//go:build linux

package measure

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hallmark-dev/hallmark/internal/uidlimit"
)

// creds are the file-access credentials a measurement runs with: the
// caller's.
type creds struct {
	uid, gid uint32
	groups   []int
	// caps is the caller's permitted capability set: the thread's
	// effective set is cut down to it.
	caps uint64
}

func newCreds(c Caller) *creds {
	groups := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = int(g)
	}
	return &creds{uid: c.UID, gid: c.GID, groups: groups, caps: c.Caps}
}

func (c *creds) equal(o *creds) bool {
	return c.uid == o.uid && c.gid == o.gid && c.caps == o.caps && slices.Equal(c.groups, o.groups)
}

// run calls fn on a measuring thread that holds c's credentials, and waits
// for it. A nil c runs fn as it is, with the agent's own. It waits for a
// thread only while ctx lasts: when ctx ends first, fn runs nowhere and run
// fails with ctx's error. Once a thread runs fn, run waits for fn, which
// owns what it uses until it returns (fn is expected to watch ctx itself).
func (c *creds) run(ctx context.Context, fn func() error) error {
	if c == nil {
		return fn()
	}
	return measuring.get().run(ctx, c, fn)
}

// measuring are the threads that measure for callers. Linux keeps
// credentials per thread: each of these goroutines is locked to its
// thread for good, the thread runs nothing but measuring tasks, and it
// keeps the credentials of its last task, so that a run of requests from
// one caller changes no credentials at all (a change costs about ten
// system calls). Credentials are never changed with the process-wide calls
// of package syscall.
var measuring threads

// threads starts the measuring threads on first use: Hash alone never
// needs them.
type threads struct {
	once sync.Once
	p    *pool
}

func (ts *threads) get() *pool {
	ts.once.Do(func() { ts.p = newPool(max(4, 2*runtime.GOMAXPROCS(0))) })
	return ts.p
}

// pool is a fixed set of measuring threads, shared out among uids. A task
// holds its thread for as long as it measures (a worker of a large request
// hashes file after file), so without a bound per uid one uid's few large
// requests (sparse files cost no disk) would hold every thread while other
// uids' measurements wait past their deadlines. A uid may hold at most half
// the threads (share) and waits for its own share first, as the local
// API's per-uid limits do: a uid over its share never holds a thread
// another uid could have, so another uid always finds a thread free while
// fewer than two uids are busy. Half is no cost to a lone request: the pool
// is twice GOMAXPROCS, so a share is at least GOMAXPROCS threads, the
// default number of hashing workers.
type pool struct {
	tasks chan task
	share int // threads one uid may hold at once
	limit *uidlimit.Limit
}

type task struct {
	ctx  context.Context
	c    *creds
	fn   func() error
	done chan error
}

// newPool starts n measuring threads.
func newPool(n int) *pool {
	p := &pool{tasks: make(chan task), share: max(1, n/2)}
	p.limit = uidlimit.New(p.share, n)
	for range n {
		go p.work()
	}
	return p
}

// run waits, while ctx lasts, for a thread of c's uid's share (and so for
// one of the pool's: holders never outnumber threads, so one is free or
// about to be), hands it fn and waits for fn.
func (p *pool) run(ctx context.Context, c *creds, fn func() error) error {
	release, err := p.limit.Acquire(ctx, c.uid)
	if err != nil {
		return waitError(err)
	}
	defer release()
	t := task{ctx: ctx, c: c, fn: fn, done: make(chan error, 1)}
	select {
	case p.tasks <- t:
	case <-ctx.Done():
		return waitError(ctx.Err())
	}
	return <-t.done
}

func waitError(err error) error {
	return fmt.Errorf("measure: waiting for a measuring thread: %w", err)
}

// work runs tasks on a thread of its own, forever.
func (p *pool) work() {
	runtime.LockOSThread() // never unlocked: the thread measures and nothing else
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var own [2]unix.CapUserData
	ownErr := unix.Capget(&hdr, &own[0])
	var held *creds // the credentials the thread holds; nil: unsure
	for t := range p.tasks {
		// A task's ctx may end as it is handed over (run's select picks
		// either ready case): a thread never starts work whose ctx has
		// ended.
		if err := t.ctx.Err(); err != nil {
			t.done <- waitError(err)
			continue
		}
		if held == nil || !held.equal(t.c) {
			held = nil
			err := ownErr
			if err == nil {
				err = t.c.assume(own)
			}
			if err != nil {
				t.done <- err
				continue
			}
			held = t.c
		}
		t.done <- t.fn()
	}
}

// assume gives the calling thread c's credentials. own are the thread's
// capabilities as the agent has them: their effective set is raised back
// first (setting ids takes CAP_SETUID and CAP_SETGID); then the
// supplementary groups, fsgid and fsuid are set (a nonzero fsuid clears
// the file-system capabilities from the effective set), and the effective
// set is cut down to c's.
func (c *creds) assume(own [2]unix.CapUserData) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	raised := own
	if err := unix.Capset(&hdr, &raised[0]); err != nil {
		return fmt.Errorf("measure: raise the agent's capabilities: %w", err)
	}
	if err := unix.Setgroups(c.groups); err != nil {
		return fmt.Errorf("measure: take the caller's groups: %w", err)
	}
	if err := setfsid(unix.SetfsgidRetGid, int(c.gid)); err != nil {
		return fmt.Errorf("measure: take the caller's group %d: %w", c.gid, err)
	}
	if err := setfsid(unix.SetfsuidRetUid, int(c.uid)); err != nil {
		return fmt.Errorf("measure: take the caller's user %d: %w", c.uid, err)
	}
	var now [2]unix.CapUserData
	if err := unix.Capget(&hdr, &now[0]); err != nil {
		return fmt.Errorf("measure: capget: %w", err)
	}
	cut := now
	cut[0].Effective &= uint32(c.caps)
	cut[1].Effective &= uint32(c.caps >> 32)
	if cut != now {
		if err := unix.Capset(&hdr, &cut[0]); err != nil {
			return fmt.Errorf("measure: drop the capabilities the caller lacks: %w", err)
		}
	}
	return nil
}

// setfsid sets a file-system id with set (setfsuid or setfsgid), which
// report failure only by leaving the id as it was, and checks that it took.
func setfsid(set func(int) (int, error), id int) error {
	if _, err := set(id); err != nil {
		return err
	}
	if now, _ := set(-1); now != id { // -1 changes nothing: it reads
		return fmt.Errorf("still %d (CAP_SETUID and CAP_SETGID needed)", now)
	}
	return nil
}

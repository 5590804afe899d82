//go:build linux

package measure

import (
	"fmt"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
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
// for it. A nil c runs fn as it is, with the agent's own.
func (c *creds) run(fn func() error) error {
	if c == nil {
		return fn()
	}
	measuring.once.Do(measuring.start)
	t := task{c: c, fn: fn, done: make(chan error, 1)}
	measuring.tasks <- t
	return <-t.done
}

// measuring are the threads that measure for callers. Linux keeps
// credentials per thread: each of these goroutines is locked to its
// thread for good, the thread runs nothing but measuring tasks, and it
// keeps the credentials of its last task, so that a run of requests from
// one caller changes no credentials at all (a change costs about ten
// system calls). Credentials are never changed with the process-wide calls
// of package syscall.
var measuring threads

type threads struct {
	once  sync.Once
	tasks chan task
}

type task struct {
	c    *creds
	fn   func() error
	done chan error
}

func (ts *threads) start() {
	ts.tasks = make(chan task)
	for range max(4, 2*runtime.GOMAXPROCS(0)) {
		go ts.work()
	}
}

// work runs tasks on a thread of its own, forever.
func (ts *threads) work() {
	runtime.LockOSThread() // never unlocked: the thread measures and nothing else
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var own [2]unix.CapUserData
	ownErr := unix.Capget(&hdr, &own[0])
	var held *creds // the credentials the thread holds; nil: unsure
	for t := range ts.tasks {
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

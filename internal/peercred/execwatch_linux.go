package peercred

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's process events connector (linux/connector.h, cn_proc.h).
const (
	cnIdxProc        = 1
	cnValProc        = 1
	procCNMcastListn = 1
	procCNMcastIgnr  = 2
	procEventExec    = 0x00000002
	procEventComm    = 0x00000200
	cnMsgLen         = 20 // struct cn_msg without data
	procEventLen     = 40 // enough of struct proc_event for exec and comm
	execWatchRcvBuf  = 8 << 20
)

// ErrExecWatch means the exec watch cannot vouch for a connection: it
// could not be started, it stopped, or the kernel dropped events.
var ErrExecWatch = errors.New("peercred: exec watch unavailable")

// ExecWatch learns of every exec(2) on the system from the kernel's process
// events connector (PROC_EVENT_EXEC over NETLINK_CONNECTOR) and refuses,
// from then on, every registered connection whose peer exec'd after it was
// registered, whatever it exec'd and however often, even back into the
// same binary.
//
// It is complete because the kernel queues a process's exec event on the
// watch's socket before the new program runs a single instruction: once
// Check has drained the socket, every exec that happened before Check
// began has been seen. If the kernel ever drops events (the socket's
// buffer overflowed), every connection registered before is refused.
// One exec is not yet "happened" by then: one a tracer holds stopped at
// PTRACE_EVENT_EXEC, which comes before the event is queued, while
// /proc/PID/exe already names the new program. Conn.Verify therefore
// compares the executable as well.
//
// The connector needs CAP_NET_ADMIN, the initial network namespace (the
// kernel's connector socket lives there) and the initial user and pid
// namespaces (it ignores subscriptions from others): on Kubernetes,
// hostNetwork and hostPID. WatchExecs proves that events arrive before it
// returns.
type ExecWatch struct {
	fd   int
	file *os.File // fd, for the runtime's poller

	mu        sync.Mutex // guards everything below; held while draining
	conns     map[int32]map[*Conn]struct{}
	buf       []byte
	broken    error // sticky: the watch cannot vouch for anything any more
	canary    int32 // the thread id whose comm event proves delivery
	seen      bool  // the canary was seen
	overflows int   // times the kernel dropped events (ENOBUFS)
	execPID   int32 // the exec canary's pid (RunCanary); 0: none under way
	execSince int64 // when it was started (monotonic): an older event of its pid is another's
	execSeen  bool  // its exec event arrived

	// unfiltered: the kernel sends every process event, not exec events
	// alone (before Linux 6.6). Set before the watch is shared.
	unfiltered bool
}

// WatchExecs subscribes to the kernel's exec events and checks that they
// are delivered. Run the watch with Run; Close it when done.
func WatchExecs() (*ExecWatch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_CONNECTOR)
	if err != nil {
		return nil, fmt.Errorf("%w: netlink connector socket: %w", ErrExecWatch, err)
	}
	w := &ExecWatch{fd: fd, conns: map[int32]map[*Conn]struct{}{}, buf: make([]byte, 64<<10)}
	if err := w.join(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	w.file = os.NewFile(uintptr(fd), "proc-connector")
	if err := w.start(); err != nil {
		w.file.Close()
		return nil, err
	}
	return w, nil
}

// start subscribes, proves delivery, then narrows the subscription to
// exec events. It first subscribes to every event, the one form every
// kernel takes, so that this socket holds a listener's count of its own
// (the kernel makes process events only while some socket listens: a
// watch counting on another's subscription would go blind the moment
// that one left). Comm events, which the proof needs, are made at will by
// any process (prctl PR_SET_NAME, about a microsecond each): left on, a
// flood of them overflows the socket and refuses every connection
// (TestCommFloodRefusesNoOne). Linux 6.6 narrows the same subscription to
// exec events, without counting it again; earlier kernels ignore the
// filtered form and go on sending everything (Unfiltered).
func (w *ExecWatch) start() error {
	if err := w.listen(0); err != nil {
		return err
	}
	seen, err := w.proveDelivery(2 * time.Second)
	if err != nil {
		return err
	}
	if !seen {
		return fmt.Errorf("%w: no process events arrive (the agent must run in the host's user and pid namespaces)", ErrExecWatch)
	}
	if err := w.listen(procEventExec); err != nil {
		return err
	}
	// The canary's comm event arrives still only where the kernel
	// ignored the filter.
	w.unfiltered, err = w.proveDelivery(20 * time.Millisecond)
	return err
}

// ignoredFilter makes filtered subscriptions a length every kernel
// ignores, as kernels before Linux 6.6 ignore them: for tests, which
// set it only while no watch starts in parallel.
var ignoredFilter bool

// Unfiltered reports whether the kernel sends the watch every process
// event rather than exec events alone (kernels before Linux 6.6): then
// any local user making events fast enough (forks, thread renames) can
// overflow the watch, and the connections open meanwhile are refused.
func (w *ExecWatch) Unfiltered() bool { return w.unfiltered }

// join binds the socket to the process events group.
func (w *ExecWatch) join() error {
	if err := unix.Bind(w.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		return fmt.Errorf("%w: join the process events group (needs CAP_NET_ADMIN and the host network namespace): %w", ErrExecWatch, err)
	}
	// A big buffer, so that a burst of execs elsewhere does not overflow
	// it (which would refuse every connection). Forcing it takes
	// CAP_NET_ADMIN, which joining took already.
	if err := unix.SetsockoptInt(w.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, execWatchRcvBuf); err != nil {
		return fmt.Errorf("%w: receive buffer: %w", ErrExecWatch, err)
	}
	return nil
}

// listen subscribes to the events of the types in mask (struct
// proc_input, Linux 6.6) or, with mask 0, to every event (the bare enum
// proc_cn_mcast_op, the only form earlier kernels take: they ignore a
// message of any other length).
func (w *ExecWatch) listen(mask uint32) error {
	return w.control(procCNMcastListn, mask)
}

// control sends the connector operation op (with the event types in
// mask, when not 0).
func (w *ExecWatch) control(op, mask uint32) error {
	n := 4
	if mask != 0 {
		n = 8
		if ignoredFilter {
			n = 12
		}
	}
	// nlmsghdr, cn_msg, then the operation (and the event types).
	msg := make([]byte, unix.NLMSG_HDRLEN+cnMsgLen+n)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.NLMSG_DONE)
	ne.PutUint32(msg[12:], uint32(os.Getpid()))
	c := msg[unix.NLMSG_HDRLEN:]
	ne.PutUint32(c[0:], cnIdxProc)
	ne.PutUint32(c[4:], cnValProc)
	ne.PutUint16(c[16:], uint16(n))
	ne.PutUint32(c[cnMsgLen:], op)
	if mask != 0 {
		ne.PutUint32(c[cnMsgLen+4:], mask)
	}
	if err := unix.Sendto(w.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("%w: subscribe: %w", ErrExecWatch, err)
	}
	return nil
}

// proveDelivery renames a thread of this process (prctl PR_SET_NAME, which
// the connector reports as a comm event) and reports whether the watch
// sees it within wait: the kernel silently ignores subscriptions from
// outside the initial user and pid namespaces, and filtered ones before
// Linux 6.6.
func (w *ExecWatch) proveDelivery(wait time.Duration) (bool, error) {
	return w.retryDropped(func() (bool, error) { return w.proveOnce(wait) })
}

// retryDropped calls try, which reports whether an event it waited for
// came, and calls it again (3 times in all, at most) while the event did
// not come and the kernel dropped events meanwhile: it may have been
// among them, and only a clean miss says anything.
func (w *ExecWatch) retryDropped(try func() (bool, error)) (bool, error) {
	for range 3 {
		w.mu.Lock()
		before := w.overflows
		w.mu.Unlock()
		seen, err := try()
		w.mu.Lock()
		lost := w.overflows != before
		w.mu.Unlock()
		if err != nil || seen || !lost {
			return seen, err
		}
	}
	return false, fmt.Errorf("%w: the kernel keeps dropping process events", ErrExecWatch)
}

// await drains events until seen (called holding w.mu) holds, wait has
// passed, or ctx ends, and reports whether seen held.
func (w *ExecWatch) await(ctx context.Context, wait time.Duration, seen func() bool) (bool, error) {
	deadline := time.Now().Add(wait)
	for {
		w.mu.Lock()
		err := w.drain()
		ok := seen()
		w.mu.Unlock()
		if err != nil || ok || time.Now().After(deadline) {
			return ok, err
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// proveOnce renames a thread and reports whether its comm event arrives
// within wait.
func (w *ExecWatch) proveOnce(wait time.Duration) (bool, error) {
	w.mu.Lock()
	w.seen = false
	w.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old [16]byte
		if err := unix.Prctl(unix.PR_GET_NAME, uintptrOf(&old[0]), 0, 0, 0); err != nil {
			done <- err
			return
		}
		w.mu.Lock()
		w.canary = int32(unix.Gettid())
		w.mu.Unlock()
		name := []byte("hm-execwatch\x00")
		err := unix.Prctl(unix.PR_SET_NAME, uintptrOf(&name[0]), 0, 0, 0)
		unix.Prctl(unix.PR_SET_NAME, uintptrOf(&old[0]), 0, 0, 0) //nolint:errcheck // best effort: a thread name
		done <- err
	}()
	if err := <-done; err != nil {
		return false, fmt.Errorf("%w: prctl: %w", ErrExecWatch, err)
	}
	return w.await(context.Background(), wait, func() bool { return w.seen })
}

// Run drains events as they arrive, until ctx ends, so that the socket's
// buffer never fills. Check drains too: Run only keeps the backlog short.
// It returns nil when ctx ends, and the watch's error as soon as the watch
// breaks, whatever broke it (a failed read, the exec canary, Close).
func (w *ExecWatch) Run(ctx context.Context) error {
	rc, err := w.file.SyscallConn()
	if err != nil {
		return fmt.Errorf("peercred: exec watch: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { w.file.SetReadDeadline(time.Now()) }) //nolint:errcheck // ends the wait
	defer stop()
	var derr error
	err = rc.Read(func(uintptr) bool {
		w.mu.Lock()
		derr = w.drain()
		w.mu.Unlock()
		return derr != nil // else wait for more
	})
	switch {
	case ctx.Err() != nil:
		return nil
	case derr != nil:
		return derr
	}
	// The wait failed, or failLocked ended it: the watch's first error
	// either way.
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(fmt.Errorf("%w: %w", ErrExecWatch, err))
	return w.broken
}

// RunCanary proves, every every, that exec events still arrive: it runs
// argv (a program that exits at once) and waits up to wait for the
// event of its exec. If none comes, the kernel has stopped sending
// process events (another privileged tool unsubscribed the last listener
// on a kernel before Linux 6.6, a kernel bug), and a watch that sees no
// exec refuses nothing: the watch then fails, refusing every connection
// from then on, and RunCanary returns the error. It returns nil when ctx
// ends. passed, when not nil, is called after each canary whose exec
// event came.
func (w *ExecWatch) RunCanary(ctx context.Context, argv []string, every, wait time.Duration, passed func()) error {
	if len(argv) == 0 {
		return errors.New("peercred: exec canary: no program")
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := w.execCanary(ctx, argv, wait); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			w.fail(err)
			return err
		}
		if passed != nil {
			passed()
		}
	}
}

// execCanary runs argv and waits for its exec event, again if the kernel
// dropped events meanwhile (retryDropped).
func (w *ExecWatch) execCanary(ctx context.Context, argv []string, wait time.Duration) error {
	seen, err := w.retryDropped(func() (bool, error) { return w.execCanaryOnce(ctx, argv, wait) })
	if err == nil && !seen {
		err = fmt.Errorf("%w: no exec event for the exec canary within %s: the kernel stopped sending process events", ErrExecWatch, wait)
	}
	return err
}

// execCanaryOnce runs argv once and reports whether its exec event came
// within wait.
func (w *ExecWatch) execCanaryOnce(ctx context.Context, argv []string, wait time.Duration) (bool, error) {
	// Killed if it outlives the wait by much, so that waiting for it
	// ends.
	cmdCtx, cancel := context.WithTimeout(ctx, wait+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cmdCtx, argv[0], argv[1:]...)
	// Started holding w.mu, so that no drain can take the exec event
	// before its pid is known: Start returns once the exec has happened.
	w.mu.Lock()
	since := monotonicNow()
	err := cmd.Start()
	if err == nil {
		w.execPID, w.execSince, w.execSeen = int32(cmd.Process.Pid), since, false
	}
	w.mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("%w: exec canary: %w", ErrExecWatch, err)
	}
	defer cmd.Wait() //nolint:errcheck // reaped; how it ended does not matter
	defer func() {
		w.mu.Lock()
		w.execPID = 0
		w.mu.Unlock()
	}()
	return w.await(ctx, wait, func() bool { return w.execSeen })
}

// Close stops the watch; every registered connection is refused from then
// on.
func (w *ExecWatch) Close() error {
	w.fail(fmt.Errorf("%w: closed", ErrExecWatch))
	return w.file.Close()
}

// register starts watching c's peer and returns the monotonic time from
// which its execs count.
func (w *ExecWatch) register(c *Conn) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.conns[c.info.PID]
	if m == nil {
		m = map[*Conn]struct{}{}
		w.conns[c.info.PID] = m
	}
	m[c] = struct{}{}
	// Taken under the lock: an exec event at or after this time is drained
	// only after c is in the map.
	return monotonicNow()
}

func (w *ExecWatch) unregister(c *Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m := w.conns[c.info.PID]; m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(w.conns, c.info.PID)
		}
	}
}

// check drains the events the kernel has queued and fails with
// ErrPeerExeced if c's peer exec'd since c was registered, or with
// ErrExecWatch if the watch cannot tell.
func (w *ExecWatch) check(c *Conn) error {
	w.mu.Lock()
	err := w.drain()
	w.mu.Unlock()
	if err != nil {
		return err
	}
	return c.execErr()
}

// drain reads every queued event. The caller holds w.mu.
func (w *ExecWatch) drain() error {
	if w.broken != nil {
		return w.broken
	}
	for {
		n, _, err := unix.Recvfrom(w.fd, w.buf, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return nil
		case err == unix.ENOBUFS:
			w.overflows++
			w.lost()
			continue
		case err != nil:
			w.failLocked(fmt.Errorf("%w: read events: %w", ErrExecWatch, err))
			return w.broken
		}
		w.handle(w.buf[:n])
	}
}

// lost marks every connection registered so far: the kernel dropped
// events, so none of them can be vouched for. Connections registered from
// now on can. The caller holds w.mu.
func (w *ExecWatch) lost() {
	for _, m := range w.conns {
		for c := range m {
			c.execed.Store(execLost)
		}
	}
}

// handle acts on one datagram of events. The caller holds w.mu.
func (w *ExecWatch) handle(b []byte) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return // not from the kernel's connector: nothing to act on
	}
	ne := binary.NativeEndian
	for _, m := range msgs {
		d := m.Data
		if len(d) < cnMsgLen+procEventLen || ne.Uint32(d[0:]) != cnIdxProc || ne.Uint32(d[4:]) != cnValProc {
			continue
		}
		ev := d[cnMsgLen:]
		what := ne.Uint32(ev[0:])
		ts := int64(ne.Uint64(ev[8:]))
		// event_data: exec {pid, tgid}; comm {pid, tgid, comm[16]}.
		pid, tgid := int32(ne.Uint32(ev[16:])), int32(ne.Uint32(ev[20:]))
		switch what {
		case procEventExec:
			for c := range w.conns[tgid] {
				if ts >= c.watchedAt {
					c.execed.CompareAndSwap(0, ts)
				}
			}
			if tgid == w.execPID && w.execPID != 0 && ts >= w.execSince {
				w.execSeen = true
			}
		case procEventComm:
			if pid == w.canary && tgid == int32(os.Getpid()) {
				w.seen = true
			}
		}
	}
}

func (w *ExecWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(err)
}

// failLocked breaks the watch with err, the first time, and ends Run's
// wait for events, so that Run returns err: a watch that can no longer
// vouch for execs ends the agent's run whichever caller found it out, not
// at the next event. The caller holds w.mu.
func (w *ExecWatch) failLocked(err error) {
	if w.broken == nil {
		w.broken = err
		w.file.SetReadDeadline(time.Now()) //nolint:errcheck // a closed file has no wait to end
	}
}

// execLost in Conn.execed means events were lost while it was registered.
const execLost = -1

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) //nolint:errcheck // cannot fail
	return ts.Nano()
}

func uintptrOf(b *byte) uintptr { return uintptr(unsafe.Pointer(b)) }

package spire

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/hallmark-dev/hallmark/internal/exedigest"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

// Subscriptions by selectors are kept open for reuse, at most
// maxSubscriptions at once; one unused for subscriptionIdle is closed when
// room is needed.
const (
	maxSubscriptions = 256
	subscriptionIdle = 10 * time.Minute
)

// SelectorAttestor is the spire workload attestor with attest =
// "unix_selectors". It derives the caller's selectors as SPIRE's unix
// workload attestor (v1.13.3) does, and asks SPIRE's Delegated Identity API
// which SPIFFE IDs those selectors hold: SPIRE treats a delegate's
// selectors as attested and matches them to its registration entries
// exactly as it matches those of a PID it attested itself (an entry matches
// when its selectors are a subset). The selectors are uid, user, gid,
// group, supplementary_gid and supplementary_group, and with
// discover_workload_path also path and sha256 (unless workload_size_limit
// is negative; above a positive limit the caller is refused, as SPIRE
// refuses it). Where they can differ from SPIRE's own:
//
//   - uid, gid and the supplementary gids are the kernel's record of the
//     connection (SO_PEERCRED, SO_PEERGROUPS, taken at connect(2)), where
//     SPIRE reads /proc/PID/status when it attests. They differ only for a
//     caller that changed its credentials after it connected without an
//     exec (the gate refuses a caller that exec'd), which needs privilege.
//   - user and group names are looked up by hallmark-agent (Go's os/user)
//     and by the SPIRE agent: they agree when both see the same user
//     database.
//   - path is /proc/PID/exe as hallmark-agent reads it, and SPIRE's as the
//     SPIRE agent reads it (or under HOST_PROC): they agree when both run
//     in the same mount namespace and root, as two services on one host do.
//     hallmark-agent gives a path only where it names, in its own mount
//     namespace, the very file the caller runs, where SPIRE gives one in
//     any case: in a mount namespace of its own a caller can run any file
//     under any name (workloadattestor.HostPath).
//   - sha256 is of the same file; hallmark-agent may use a digest it
//     remembers (internal/exedigest: only for files only root can change).
//   - SPIRE's other workload attestors (docker, k8s, systemd, ...) play no
//     part: an entry that needs their selectors matches no caller.
//
// One subscription per distinct set of selectors stays open and carries
// SPIRE's current answer: every update SPIRE sends (an entry changed, SVIDs
// rotated) replaces it, and a subscription that ends is asked anew. So a
// fresh process costs SPIRE nothing when another with the same selectors
// came before, and every call still derives its caller's selectors.
type SelectorAttestor struct {
	delegate
	digests *exedigest.Cache
	proc    string // /proc, replaceable in tests
	now     func() time.Time

	mu   sync.Mutex
	subs map[string]*subscription
}

// subscription is SPIRE's standing answer for one set of selectors.
type subscription struct {
	key    string
	ready  chan struct{} // closed once the first answer or err is in
	err    error
	ids    atomic.Pointer[[]string]
	ended  atomic.Bool
	used   atomic.Int64 // unix nanoseconds
	cancel context.CancelFunc
}

// NewSelectors connects (lazily) to the SPIRE agent's admin socket;
// digests remembers executables' digests (nil: hash every time).
func NewSelectors(cfg Config, digests *exedigest.Cache) (*SelectorAttestor, error) {
	d, err := dial(cfg)
	if err != nil {
		return nil, err
	}
	return &SelectorAttestor{delegate: d, digests: digests, proc: "/proc", now: time.Now, subs: map[string]*subscription{}}, nil
}

// Attest returns the SPIFFE IDs SPIRE's registration entries give the
// caller's unix selectors (none when no entry matches them).
func (a *SelectorAttestor) Attest(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, error) {
	sels, err := a.selectors(ctx, c)
	if err != nil {
		return workloadattestor.Result{}, err
	}
	for range 2 { // a second time if SPIRE ended the subscription meanwhile
		s, err := a.subscription(ctx, sels)
		if err != nil {
			return workloadattestor.Result{}, err
		}
		ids := *s.ids.Load()
		if !s.ended.Load() {
			return workloadattestor.Result{SPIFFEIDs: ids}, nil
		}
	}
	return workloadattestor.Result{}, fmt.Errorf("spire: the delegated identity API at %s keeps ending subscriptions", a.cfg.AdminSocket)
}

// selectors are the caller's selectors of type "unix", sorted.
func (a *SelectorAttestor) selectors(ctx context.Context, c workloadattestor.Caller) ([]string, error) {
	sels := c.IDSelectors()
	for _, sg := range c.Groups {
		id := strconv.FormatUint(uint64(sg), 10)
		sels = append(sels, "supplementary_gid:"+id)
		if name, ok := c.GroupName(sg); ok {
			sels = append(sels, "supplementary_group:"+name)
		}
	}
	if a.cfg.DiscoverWorkloadPath {
		path, onHost, sum, err := a.executable(ctx, c.PID)
		if err != nil {
			return nil, err
		}
		if onHost {
			sels = append(sels, "path:"+path)
		}
		if sum != "" {
			sels = append(sels, "sha256:"+sum)
		}
	}
	slices.Sort(sels)
	return slices.Compact(sels), nil
}

// executable is the path of the file the caller runs, as /proc/PID/exe
// names it, whether that path names it on this host
// (workloadattestor.HostPath), and its sha256 (none with a negative
// workload_size_limit), from one open of that very file.
func (a *SelectorAttestor) executable(ctx context.Context, pid int32) (path string, onHost bool, sum string, err error) {
	fail := func(err error) (string, bool, string, error) {
		return "", false, "", fmt.Errorf("spire: executable of pid %d: %w", pid, err)
	}
	f, err := os.Open(fmt.Sprintf("%s/%d/exe", a.proc, pid))
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	if path, err = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err != nil {
		return fail(err)
	}
	exe, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	onHost = workloadattestor.HostPath(path, exe)
	limit := a.cfg.WorkloadSizeLimit
	switch {
	case limit < 0:
		return path, onHost, "", nil
	case limit == 0:
		limit = math.MaxInt64
	}
	if sum, err = a.digests.Sum(ctx, f, limit); err != nil {
		return fail(err)
	}
	if sum == "" {
		return "", false, "", fmt.Errorf("spire: executable of pid %d, %s: larger than workload_size_limit (%d bytes)", pid, path, limit)
	}
	return path, onHost, sum, nil
}

// subscription returns the standing subscription for sels, opening one and
// waiting for SPIRE's first answer if there is none.
func (a *SelectorAttestor) subscription(ctx context.Context, sels []string) (*subscription, error) {
	key := strings.Join(sels, "\n")
	a.mu.Lock()
	s := a.subs[key]
	if s == nil || s.ended.Load() {
		a.makeRoomLocked()
		sctx, cancel := context.WithCancel(context.Background())
		s = &subscription{key: key, ready: make(chan struct{}), cancel: cancel}
		a.subs[key] = s
		go a.follow(sctx, s, sels)
	}
	s.used.Store(a.now().UnixNano())
	a.mu.Unlock()
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("spire: waiting for the delegated identity API: %w", ctx.Err())
	}
	if s.err != nil {
		return nil, s.err
	}
	return s, nil
}

// follow opens the subscription s and keeps its answer current until SPIRE
// ends it or it is closed.
func (a *SelectorAttestor) follow(ctx context.Context, s *subscription, sels []string) {
	req := &delegatedidentityv1.SubscribeToX509SVIDsRequest{}
	for _, v := range sels {
		req.Selectors = append(req.Selectors, &types.Selector{Type: "unix", Value: v})
	}
	res, stream, err := a.subscribe(ctx, req)
	if err != nil {
		// Ended and forgotten before anyone sees the error, so that the
		// next call asks SPIRE again instead of finding it kept.
		s.err = err
		a.end(s)
		close(s.ready)
		return
	}
	defer a.end(s)
	s.ids.Store(&res.SPIFFEIDs)
	close(s.ready)
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		ids := spiffeIDs(resp)
		s.ids.Store(&ids)
	}
}

// end marks s ended and forgets it.
func (a *SelectorAttestor) end(s *subscription) {
	s.ended.Store(true)
	s.cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.subs[s.key] == s {
		delete(a.subs, s.key)
	}
}

// makeRoomLocked closes subscriptions idle for subscriptionIdle and, if
// there are still maxSubscriptions, the least recently used one.
func (a *SelectorAttestor) makeRoomLocked() {
	if len(a.subs) < maxSubscriptions {
		return
	}
	idle := a.now().Add(-subscriptionIdle).UnixNano()
	var oldest *subscription
	for k, s := range a.subs {
		if s.used.Load() < idle {
			s.cancel()
			delete(a.subs, k)
			continue
		}
		if oldest == nil || s.used.Load() < oldest.used.Load() {
			oldest = s
		}
	}
	if len(a.subs) >= maxSubscriptions && oldest != nil {
		oldest.cancel()
		delete(a.subs, oldest.key)
	}
}

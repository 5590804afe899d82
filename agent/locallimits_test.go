package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/h2test"
)

// The local API's limits on calls under way (docs/configuration.md, "Every
// request goes through one ordered gate", stage 1), each shown on the real
// local API with calls held under way by heldAttestor, both ways: what the
// bound lets through and what it holds back.

// heldAttestor holds every identification under way until the test lets
// it go (letGo, per uid, or freeAll), and counts the identifications under
// way per uid and in all, and their peaks.
type heldAttestor struct {
	entered  chan uint32 // the uid of every call, as it arrives
	free     chan struct{}
	freeOnce sync.Once

	mu        sync.Mutex
	release   map[uint32]chan struct{} // one send lets one call of the uid go
	now, peak map[uint32]int
	all       int
	peakAll   int
}

// newHeldFixture is a local API fixture with limits lim, set as in the
// configuration file, whose callers are held by a heldAttestor.
func newHeldFixture(t *testing.T, lim LocalLimits) (*localAPIFixture, *heldAttestor) {
	t.Helper()
	h := &heldAttestor{
		entered: make(chan uint32, 64), free: make(chan struct{}),
		release: map[uint32]chan struct{}{}, now: map[uint32]int{}, peak: map[uint32]int{},
	}
	fx := newLocalAPIFixtureLimits(t, lim, NamedAttestor{Name: "held", Attestor: h})
	t.Cleanup(h.freeAll) // before the fixture's: the agent stops gracefully, once its calls end
	return fx, h
}

func (h *heldAttestor) releaseOf(uid uint32) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.release[uid] == nil {
		h.release[uid] = make(chan struct{})
	}
	return h.release[uid]
}

func (h *heldAttestor) Attest(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, error) {
	h.mu.Lock()
	h.now[c.UID]++
	h.all++
	h.peak[c.UID] = max(h.peak[c.UID], h.now[c.UID])
	h.peakAll = max(h.peakAll, h.all)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.now[c.UID]--
		h.all--
		h.mu.Unlock()
	}()
	h.entered <- c.UID
	select {
	case <-h.releaseOf(c.UID):
	case <-h.free:
	case <-ctx.Done():
		return workloadattestor.Result{}, ctx.Err()
	}
	return workloadattestor.Result{}, nil // the switch attestor names the caller
}

// awaitEntered waits for n more calls to be identified (what they are),
// and returns their uids.
func (h *heldAttestor) awaitEntered(t *testing.T, n int, what string) []uint32 {
	t.Helper()
	var uids []uint32
	for range n {
		select {
		case uid := <-h.entered:
			uids = append(uids, uid)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: %d of %d calls identified; the rest were held back", what, len(uids), n)
		}
	}
	return uids
}

// quiet requires that no call is identified for a while: what is held
// back stays held back.
func (h *heldAttestor) quiet(t *testing.T, what string) {
	t.Helper()
	select {
	case uid := <-h.entered:
		t.Fatalf("%s: a call of uid %d was identified, beyond the bound", what, uid)
	case <-time.After(300 * time.Millisecond):
	}
}

// letGo ends one identification of uid under way.
func (h *heldAttestor) letGo(t *testing.T, uid uint32) {
	t.Helper()
	select {
	case h.releaseOf(uid) <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatalf("no identification of uid %d under way", uid)
	}
}

func (h *heldAttestor) freeAll() { h.freeOnce.Do(func() { close(h.free) }) }

func (h *heldAttestor) peaks() (perUID map[uint32]int, all int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	perUID = map[uint32]int{}
	for uid, n := range h.peak {
		perUID[uid] = n
	}
	return perUID, h.peakAll
}

// limitsFromHCL is the LocalLimits of an agent block with these lines, as
// hallmark-agent reads its configuration file.
func limitsFromHCL(t *testing.T, lines ...string) LocalLimits {
	t.Helper()
	c, err := ParseConfig("agent.hcl", []byte(agentHCL(lines...)))
	require.NoError(t, err)
	return c.LocalLimits
}

// whoAmI calls WhoAmI in the background; its error arrives on results.
func whoAmI(ctx context.Context, c agentv1.WorkloadServiceClient, results chan<- error) {
	go func() {
		_, err := c.WhoAmI(ctx, &agentv1.WhoAmIRequest{})
		results <- err
	}()
}

func awaitResult(t *testing.T, results <-chan error) error {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("a call let go did not end")
		panic("unreachable")
	}
}

// requireWaiting requires that no call has ended: the calls held back
// wait, they are not refused.
func requireWaiting(t *testing.T, results <-chan error) {
	t.Helper()
	select {
	case r := <-results:
		t.Fatalf("a call held back ended instead of waiting: %v", r)
	default:
	}
}

// Must show: the agent announces max_streams_per_connection as HTTP/2's
// SETTINGS_MAX_CONCURRENT_STREAMS and enforces it. A client that ignores
// it has the call beyond the bound reset with REFUSED_STREAM before the
// call runs, while the same uid's call on another connection is served
// and, once the calls end, the connection takes calls again; a gRPC
// client, which honours SETTINGS, holds the call beyond the bound itself
// until one ends: it waits and is served.
func TestStreamsPerConnection(t *testing.T) {
	lim := limitsFromHCL(t, "max_streams_per_connection = 2")
	require.Equal(t, 2, lim.StreamsPerConnection)
	self := uint32(os.Geteuid())

	t.Run("a client ignoring SETTINGS is refused the third call", func(t *testing.T) {
		fx, h := newHeldFixture(t, lim)
		// A caller that opens whatever streams it is told to, whatever the
		// agent announced.
		conn, err := net.Dial("unix", fx.socket)
		require.NoError(t, err)
		raw := h2test.New(t, conn, "http", "localhost")
		require.Equal(t, uint32(2), raw.MaxConcurrentStreams, "SETTINGS_MAX_CONCURRENT_STREAMS in the agent's SETTINGS")
		// Each call a whole WhoAmI request: an empty one.
		whoAmIRaw := func(id uint32) {
			t.Helper()
			raw.Open(t, id, agentv1.WorkloadService_WhoAmI_FullMethodName, h2test.GRPCPrefix(0), true)
		}
		const end = 10 * time.Second // for a stream to end

		whoAmIRaw(1)
		whoAmIRaw(3)
		require.Equal(t, []uint32{self, self}, h.awaitEntered(t, 2, "two calls under way on the connection"))
		whoAmIRaw(5)
		ev := raw.AwaitEnd(t, 5, end)
		require.Equal(t, http2.ErrCodeRefusedStream, ev.Reset, "the third call is reset (%+v)", ev)
		require.Empty(t, ev.Status, "no gRPC status: the call never ran")
		h.quiet(t, "the refused call")

		other := fx.client(t)
		results := make(chan error, 1)
		whoAmI(t.Context(), other, results)
		require.Equal(t, []uint32{self}, h.awaitEntered(t, 1, "the same uid's call on another connection"))

		h.freeAll()
		require.NoError(t, awaitResult(t, results))
		for _, id := range []uint32{1, 3} {
			ev := raw.AwaitEnd(t, id, end)
			require.Zero(t, ev.Reset, "stream %d", id)
			require.Equal(t, "0", ev.Status, "stream %d: OK; grpc-message %q", id, ev.Message)
		}
		whoAmIRaw(7)
		ev = raw.AwaitEnd(t, 7, end)
		require.Equal(t, "0", ev.Status, "its calls ended, the connection takes another (%+v)", ev)
	})

	t.Run("a gRPC client holds the third call until one ends", func(t *testing.T) {
		fx, h := newHeldFixture(t, lim)
		c := fx.client(t) // one connection
		results := make(chan error, 3)
		for range 3 {
			whoAmI(t.Context(), c, results)
		}
		h.awaitEntered(t, 2, "two calls on the connection")
		h.quiet(t, "the third call on the connection")
		requireWaiting(t, results)

		h.letGo(t, self)
		require.NoError(t, awaitResult(t, results))
		h.awaitEntered(t, 1, "the third call, once one ended")
		h.freeAll()
		for range 2 {
			require.NoError(t, awaitResult(t, results))
		}
		_, all := h.peaks()
		require.Equal(t, 2, all)
	})
}

// Must show: a uid's attestations beyond max_attestations_per_uid wait,
// are not refused, and are served once one under way ends; within the
// bound they run at once. Each attestation is on a connection of its own,
// so that only this bound applies.
func TestAttestationsPerUIDWait(t *testing.T) {
	self := uint32(os.Geteuid())
	cases := []struct {
		name   string
		limit  int
		atOnce int // attestations of the two under way at once
	}{
		{"bound 1: the second waits for the first", 1, 1},
		{"bound 2: both at once", 2, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lim := limitsFromHCL(t, fmt.Sprintf("max_attestations_per_uid = %d", tc.limit), "max_identifications_per_uid = 8")
			require.Equal(t, tc.limit, lim.AttestationsPerUID)
			fx, h := newHeldFixture(t, lim)
			fx.write(t, "dist/app", 10)
			req := &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}

			results := make(chan error, 2)
			for _, c := range []agentv1.WorkloadServiceClient{fx.client(t), fx.client(t)} {
				go func() {
					resp, err := c.AttestStep(t.Context(), req)
					if err == nil && len(resp.GetBundle()) == 0 {
						err = errors.New("attested, without a bundle")
					}
					results <- err
				}()
			}
			h.awaitEntered(t, tc.atOnce, "attestations within the bound")
			h.quiet(t, "an attestation beyond max_attestations_per_uid")
			requireWaiting(t, results)

			remaining := 2
			if tc.atOnce == 1 {
				h.letGo(t, self)
				require.NoError(t, awaitResult(t, results))
				h.awaitEntered(t, 1, "the second attestation, once the first ended")
				remaining--
			}
			h.freeAll()
			for range remaining {
				require.NoError(t, awaitResult(t, results), "it waited; it was not refused")
			}
			perUID, _ := h.peaks()
			require.Equal(t, tc.atOnce, perUID[self])
			events, metric := fx.denials(t)
			require.Empty(t, events)
			require.Zero(t, metric)
		})
	}
}

// Must show: a uid's identifications beyond max_identifications_per_uid
// wait, and while they wait they hold none of the max_identifications
// shared ones: another uid is identified meanwhile. With the shared ones
// all under way a third uid waits too. Every call waits and is served;
// none is refused. The other uids connect as themselves (the kernel's
// SO_PEERCRED), which takes root.
func TestIdentificationsPerUIDWaitFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("connecting as other uids takes CAP_SETUID: run as root (CI does)")
	}
	const self, uidB, uidC = 0, 4021, 4022
	lim := limitsFromHCL(t, "max_identifications_per_uid = 2", "max_identifications = 3")
	require.Equal(t, 2, lim.IdentificationsPerUID)
	require.Equal(t, 3, lim.Identifications)
	fx, h := newHeldFixture(t, lim)
	// Other uids may reach the socket (a test of limits, not of its mode).
	require.NoError(t, os.Chmod(filepath.Dir(fx.socket), 0o711))
	require.NoError(t, os.Chmod(fx.socket, 0o666))
	results := make(chan error, 5)

	for range 3 {
		whoAmI(t.Context(), fx.client(t), results)
	}
	require.Equal(t, []uint32{self, self}, h.awaitEntered(t, 2, "uid 0's first two"))
	h.quiet(t, "uid 0's third identification")
	requireWaiting(t, results)

	whoAmI(t.Context(), clientAs(t, fx.socket, uidB), results)
	require.Equal(t, []uint32{uidB}, h.awaitEntered(t, 1, "uid B, while uid 0's third waits (it must hold none of the shared bound)"))

	whoAmI(t.Context(), clientAs(t, fx.socket, uidC), results)
	h.quiet(t, "a third uid with max_identifications under way")
	requireWaiting(t, results)

	// uid B's call ends: its shared slot goes to uid C, which has its own
	// slot; uid 0's waiter still lacks one of its own.
	h.letGo(t, uidB)
	require.NoError(t, awaitResult(t, results))
	require.Equal(t, []uint32{uidC}, h.awaitEntered(t, 1, "uid C, once uid B's ended"))
	// One of uid 0's ends: its waiter takes the slots given back.
	h.letGo(t, self)
	require.NoError(t, awaitResult(t, results))
	require.Equal(t, []uint32{self}, h.awaitEntered(t, 1, "uid 0's third, once one of its own ended"))

	h.freeAll()
	for range 3 {
		require.NoError(t, awaitResult(t, results), "it waited; it was not refused")
	}
	perUID, all := h.peaks()
	require.Equal(t, map[uint32]int{self: 2, uidB: 1, uidC: 1}, perUID)
	require.Equal(t, 3, all)
}

// clientAs is a client on one connection made by a thread that took uid
// as its effective uid, which the kernel records as the peer's
// (SO_PEERCRED); the thread ends with it, and nothing else of the process
// changes.
func clientAs(t *testing.T, socket string, uid int) agentv1.WorkloadServiceClient {
	t.Helper()
	type dialed struct {
		fd  int
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, uid and all.
		runtime.LockOSThread()
		// The raw system call: this thread's alone (syscall.Setresuid
		// would change every thread of the process).
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); errno != 0 {
			done <- dialed{-1, fmt.Errorf("setresuid: %w", errno)}
			return
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			if err = unix.Connect(fd, &unix.SockaddrUnix{Name: socket}); err != nil {
				unix.Close(fd)
			}
		}
		done <- dialed{fd, err}
	}()
	d := <-done
	require.NoError(t, d.err, "connect as uid %d", uid)
	f := os.NewFile(uintptr(d.fd), "agent.sock")
	conn, err := net.FileConn(f)
	f.Close()
	require.NoError(t, err)
	var used atomic.Bool
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("one connection as this uid")
			}
			return conn, nil
		}))
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	return agentv1.NewWorkloadServiceClient(cc)
}

// Must show (an attacker review's flood): a uid that sends many large
// requests, which wait for its attestation slot with no deadline, holds
// at most maxHeldRequestBytesPerUID of them; the rest are refused at
// once, told why, instead of held in memory (1,000 of 1 MiB held the
// agent at 1.6 GiB). Once its calls end the uid is served again.
func TestRequestBytesHeldPerUIDAreBounded(t *testing.T) {
	lim := limitsFromHCL(t, "max_attestations_per_uid = 1")
	fx, h := newHeldFixture(t, lim)
	fx.write(t, "dist/app", 10)
	small := &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}
	results := make(chan error, 1)
	go func() {
		_, err := fx.client(t).AttestStep(context.Background(), small)
		results <- err
	}()
	h.awaitEntered(t, 1, "the uid's one attestation") // its slot is taken

	// 1 MB each: 250 names of 4,000 bytes, under maxRequestBytes.
	big := &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws}
	for i := range 250 {
		big.Products = append(big.Products, fmt.Sprintf("%04d", i)+strings.Repeat("x", 3996))
	}
	const sent = 40
	clients := []agentv1.WorkloadServiceClient{fx.client(t), fx.client(t), fx.client(t)}
	errs := make(chan error, sent)
	for i := range sent {
		go func() {
			_, err := clients[i%len(clients)].AttestStep(context.Background(), big) // no deadline, as the attacker's
			errs <- err
		}()
	}
	refused := 0
	for deadline := time.After(20 * time.Second); refused < sent-maxHeldRequestBytesPerUID/1_000_000; {
		select {
		case err := <-errs:
			require.Equal(t, codes.ResourceExhausted, status.Code(err), "refused at once: %v", err)
			require.ErrorContains(t, err, fmt.Sprintf("uid %d has ", os.Geteuid()))
			require.ErrorContains(t, err, "the most one uid may hold is 16 MiB")
			refused++
		case <-deadline:
			t.Fatalf("%d of %d requests refused; the rest are held", refused, sent)
		}
	}
	require.Equal(t, sent-16, refused, "16 MB of them wait, the rest are refused")
	select {
	case err := <-errs:
		t.Fatalf("a held request ended: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	h.freeAll()
	require.NoError(t, awaitResult(t, results))
	for range 16 {
		require.Error(t, awaitResult(t, errs), "the big ones name no files; they ran and were refused by measuring")
	}
	_, err := fx.client(t).AttestStep(context.Background(), small)
	require.NoError(t, err, "with its calls ended the uid is served again")
}

// Must show (a second review's amplification): a request that would hold
// far more decoded than on the wire, such as half a million empty paths
// in 1 MB, is refused before it waits for the uid's slot, not held.
func TestOversizedRequestsAreRefusedBeforeTheyWait(t *testing.T) {
	lim := limitsFromHCL(t, "max_attestations_per_uid = 1")
	fx, h := newHeldFixture(t, lim)
	fx.write(t, "dist/app", 10)
	go fx.client(t).AttestStep(context.Background(), &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}}) //nolint:errcheck // freed at the end
	h.awaitEntered(t, 1, "the uid's one attestation")

	for name, req := range map[string]*agentv1.AttestStepRequest{
		"half a million empty paths":           {Step: "build", Workspace: fx.ws, Products: make([]string, 500_000)},
		"a command of 100,000 empty arguments": {Step: "build", Workspace: fx.ws, Products: []string{"dist"}, Command: make([]string, 100_000)},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := fx.client(t).AttestStep(ctx, req)
		cancel()
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%s: refused at once, not held: %v", name, err)
	}
}

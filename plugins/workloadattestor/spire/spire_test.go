package spire

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "agent.hcl")
	require.False(t, diags.HasErrors(), diags.Error())
	return f.Body
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name        string
		src         string
		wantSocket  string
		wantTimeout time.Duration
		wantErr     string
	}{
		{
			name:       "defaults",
			src:        `admin_socket = "unix:///run/spire/admin/admin.sock"`,
			wantSocket: "unix:///run/spire/admin/admin.sock", wantTimeout: DefaultTimeout,
		},
		{
			name:       "timeout",
			src:        "admin_socket = \"unix:///run/spire/admin/admin.sock\"\ntimeout = \"250ms\"\n",
			wantSocket: "unix:///run/spire/admin/admin.sock", wantTimeout: 250 * time.Millisecond,
		},
		{
			name:       "empty timeout is the default",
			src:        "admin_socket = \"unix:///a.sock\"\ntimeout = \"\"\n",
			wantSocket: "unix:///a.sock", wantTimeout: DefaultTimeout,
		},
		{name: "admin_socket missing", src: "", wantErr: `The argument "admin_socket" is required`},
		{name: "admin_socket missing, timeout set", src: `timeout = "1s"`, wantErr: `agent.hcl:1`},
		{name: "admin_socket empty", src: `admin_socket = ""`, wantErr: `spire: admin_socket "" must be unix:///ABSOLUTE/PATH`},
		{name: "admin_socket a bare path", src: `admin_socket = "/run/spire/admin.sock"`, wantErr: `spire: admin_socket "/run/spire/admin.sock" must be unix:///ABSOLUTE/PATH`},
		{name: "admin_socket tcp", src: `admin_socket = "tcp://127.0.0.1:8081"`, wantErr: `spire: admin_socket "tcp://127.0.0.1:8081" must be unix:///ABSOLUTE/PATH`},
		{name: "admin_socket unix: without slashes", src: `admin_socket = "unix:/run/a.sock"`, wantErr: `must be unix:///ABSOLUTE/PATH`},
		{name: "timeout not a duration", src: "admin_socket = \"unix:///a.sock\"\ntimeout = \"soon\"\n", wantErr: `spire: timeout: "soon" is not a duration`},
		{name: "timeout without a unit", src: "admin_socket = \"unix:///a.sock\"\ntimeout = \"5\"\n", wantErr: `spire: timeout: "5" is not a duration`},
		{name: "timeout zero", src: "admin_socket = \"unix:///a.sock\"\ntimeout = \"0s\"\n", wantErr: "spire: timeout: must be positive, got 0s"},
		{name: "timeout negative", src: "admin_socket = \"unix:///a.sock\"\ntimeout = \"-1s\"\n", wantErr: "spire: timeout: must be positive, got -1s"},
		{name: "timeout a number", src: "admin_socket = \"unix:///a.sock\"\ntimeout = 5\n", wantErr: "spire: timeout: \"5\" is not a duration"},
		{
			name:    "unknown key",
			src:     "admin_socket = \"unix:///a.sock\"\nsocket_path = \"/x\"\n",
			wantErr: `spire: agent.hcl:2,1-12: Unsupported argument; An argument named "socket_path" is not expected here.`,
		},
		{name: "unknown block", src: "admin_socket = \"unix:///a.sock\"\nretry {}\n", wantErr: `spire: agent.hcl:2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(parseBody(t, tt.src))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Zero(t, c)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantSocket, c.AdminSocket)
			require.Equal(t, tt.wantTimeout, c.timeout)
		})
	}
}

// fakeDelegatedIdentity is the SPIRE agent's Delegated Identity API as far
// as the attestor uses it: subscribe answers SubscribeToX509SVIDs and
// every request is recorded.
type fakeDelegatedIdentity struct {
	delegatedidentityv1.UnimplementedDelegatedIdentityServer
	subscribe func(*delegatedidentityv1.SubscribeToX509SVIDsRequest, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error

	mu       sync.Mutex
	requests []*delegatedidentityv1.SubscribeToX509SVIDsRequest
}

func (f *fakeDelegatedIdentity) SubscribeToX509SVIDs(req *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	return f.subscribe(req, stream)
}

func (f *fakeDelegatedIdentity) pids() []int32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int32
	for _, r := range f.requests {
		out = append(out, r.GetPid())
	}
	return out
}

// shortTempDir is a temporary directory with a path short enough for a
// unix socket (t.TempDir's can exceed the 108-byte limit).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serve serves f on a unix socket and returns its unix:// address.
func serve(t *testing.T, f *fakeDelegatedIdentity) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "admin.sock")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	s := grpc.NewServer()
	delegatedidentityv1.RegisterDelegatedIdentityServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return "unix://" + path
}

func newAttestor(t *testing.T, addr, timeout string) *Attestor {
	t.Helper()
	c, err := ParseConfig(parseBody(t, "admin_socket = \""+addr+"\"\ntimeout = \""+timeout+"\"\n"))
	require.NoError(t, err)
	a, err := New(c)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	return a
}

func svid(td, path string) *delegatedidentityv1.X509SVIDWithKey {
	return &delegatedidentityv1.X509SVIDWithKey{
		X509Svid: &types.X509SVID{
			Id:        &types.SPIFFEID{TrustDomain: td, Path: path},
			CertChain: [][]byte{[]byte("not really DER")},
			ExpiresAt: time.Now().Add(time.Hour).Unix(),
		},
		X509SvidKey: []byte("private key, PKCS#8 DER"),
	}
}

// answer sends one response and then holds the stream open, like SPIRE.
func answer(svids ...*delegatedidentityv1.X509SVIDWithKey) func(*delegatedidentityv1.SubscribeToX509SVIDsRequest, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
	return func(_ *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		if err := stream.Send(&delegatedidentityv1.SubscribeToX509SVIDsResponse{X509Svids: svids}); err != nil {
			return err
		}
		<-stream.Context().Done()
		return nil
	}
}

func TestAttest(t *testing.T) {
	tests := []struct {
		name  string
		svids []*delegatedidentityv1.X509SVIDWithKey
		want  []string
	}{
		{
			name:  "two SVIDs",
			svids: []*delegatedidentityv1.X509SVIDWithKey{svid("td", "/ci/runner"), svid("td", "/ci/runner/make")},
			want:  []string{"spiffe://td/ci/runner", "spiffe://td/ci/runner/make"},
		},
		{
			name:  "SVID without an ID is skipped",
			svids: []*delegatedidentityv1.X509SVIDWithKey{{X509Svid: &types.X509SVID{}}, {}, svid("example.org", "/a")},
			want:  []string{"spiffe://example.org/a"},
		},
		{name: "no registration entry matches", svids: nil, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeDelegatedIdentity{subscribe: answer(tt.svids...)}
			a := newAttestor(t, serve(t, fake), "5s")
			caller := workloadattestor.Caller{PID: 4242, UID: 1000, GID: 1000}

			start := time.Now()
			res, err := a.Attest(context.Background(), caller)
			require.NoError(t, err)
			require.Less(t, time.Since(start), 4*time.Second, "Attest returns on the first response, not at the timeout")
			require.Equal(t, tt.want, res.SPIFFEIDs)
			require.Empty(t, res.Selectors)
			require.Equal(t, []int32{4242}, fake.pids())
		})
	}
}

func TestAttestReusesConnection(t *testing.T) {
	fake := &fakeDelegatedIdentity{subscribe: answer(svid("td", "/x"))}
	a := newAttestor(t, serve(t, fake), "5s")
	for _, pid := range []int32{10, 11, 12} {
		res, err := a.Attest(context.Background(), workloadattestor.Caller{PID: pid})
		require.NoError(t, err)
		require.Equal(t, []string{"spiffe://td/x"}, res.SPIFFEIDs)
	}
	require.Equal(t, []int32{10, 11, 12}, fake.pids())
}

func TestAttestErrors(t *testing.T) {
	denied := func(*delegatedidentityv1.SubscribeToX509SVIDsRequest, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		return status.Error(codes.PermissionDenied, "caller not configured as an authorized delegate")
	}
	closed := func(*delegatedidentityv1.SubscribeToX509SVIDsRequest, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		return nil // ends the stream without a response
	}
	tests := []struct {
		name      string
		subscribe func(*delegatedidentityv1.SubscribeToX509SVIDsRequest, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error
		wantErr   []string
		wantCode  codes.Code
	}{
		{
			name: "permission denied", subscribe: denied, wantCode: codes.PermissionDenied,
			wantErr: []string{"(is hallmark-agent in the SPIRE agent's authorized_delegates?)", "caller not configured as an authorized delegate"},
		},
		{
			name: "stream ends without a response", subscribe: closed, wantCode: codes.Unknown,
			wantErr: []string{"(is hallmark-agent in the SPIRE agent's authorized_delegates?): EOF"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeDelegatedIdentity{subscribe: tt.subscribe}
			a := newAttestor(t, serve(t, fake), "2s")
			start := time.Now()
			res, err := a.Attest(context.Background(), workloadattestor.Caller{PID: 77})
			require.Error(t, err)
			require.Less(t, time.Since(start), time.Second, "fails at once, not at the timeout")
			require.Empty(t, res.SPIFFEIDs)
			for _, s := range tt.wantErr {
				require.ErrorContains(t, err, s)
			}
			require.Equal(t, tt.wantCode, status.Code(err), "the gRPC status is wrapped, not flattened")
			require.Equal(t, []int32{77}, fake.pids())
		})
	}
}

// TestAttestTimeout: a SPIRE agent that does not answer within the timeout
// is reported as such, naming the socket.
func TestAttestTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	never := func(_ *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		<-stream.Context().Done()
		return nil
	}
	tests := []struct {
		name  string
		serve func(t *testing.T) (addr string, fake *fakeDelegatedIdentity)
	}{
		{
			name: "server never answers",
			serve: func(t *testing.T) (string, *fakeDelegatedIdentity) {
				fake := &fakeDelegatedIdentity{subscribe: never}
				return serve(t, fake), fake
			},
		},
		{
			name: "server hangs, ignoring its context",
			serve: func(t *testing.T) (string, *fakeDelegatedIdentity) {
				release := make(chan struct{})
				fake := &fakeDelegatedIdentity{subscribe: func(*delegatedidentityv1.SubscribeToX509SVIDsRequest, delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
					<-release
					return nil
				}}
				addr := serve(t, fake)
				t.Cleanup(func() { close(release) }) // before the server stops
				return addr, fake
			},
		},
		{
			name: "socket never accepted",
			serve: func(t *testing.T) (string, *fakeDelegatedIdentity) {
				path := filepath.Join(shortTempDir(t), "admin.sock")
				l, err := net.Listen("unix", path) // the kernel queues connections; nobody speaks
				require.NoError(t, err)
				t.Cleanup(func() { l.Close() })
				return "unix://" + path, nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, fake := tt.serve(t)
			a := newAttestor(t, addr, timeout.String())

			start := time.Now()
			res, err := a.Attest(context.Background(), workloadattestor.Caller{PID: 77})
			elapsed := time.Since(start)
			require.Error(t, err)
			require.Empty(t, res.SPIFFEIDs)
			require.GreaterOrEqual(t, elapsed, timeout)
			require.Less(t, elapsed, 3*time.Second)
			if fake != nil {
				require.Equal(t, []int32{77}, fake.pids())
			}
			require.EqualError(t, err, "spire: no answer from the delegated identity API at "+addr+" within 200ms")
		})
	}
}

func TestAttestNoServer(t *testing.T) {
	addr := "unix://" + filepath.Join(shortTempDir(t), "missing.sock")
	a := newAttestor(t, addr, "2s")
	start := time.Now()
	_, err := a.Attest(context.Background(), workloadattestor.Caller{PID: 1})
	require.ErrorContains(t, err, "spire: delegated identity API")
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.Less(t, time.Since(start), 2*time.Second, "fails fast rather than waiting for the timeout")
}

func TestAttestCallerContext(t *testing.T) {
	never := func(_ *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		<-stream.Context().Done()
		return nil
	}
	a := newAttestor(t, serve(t, &fakeDelegatedIdentity{subscribe: never}), "5s")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := a.Attest(ctx, workloadattestor.Caller{PID: 1})
	require.Error(t, err)
	require.Less(t, time.Since(start), 3*time.Second, "the caller's deadline bounds the call too")
}

// AttestWatch's answer stands until SPIRE says anything more (an entry
// changed, SVIDs rotated) or the subscription ends: then changed closes.
func TestAttestWatch(t *testing.T) {
	update := make(chan struct{})
	fake := &fakeDelegatedIdentity{subscribe: func(_ *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		if err := stream.Send(&delegatedidentityv1.SubscribeToX509SVIDsResponse{X509Svids: []*delegatedidentityv1.X509SVIDWithKey{svid("td", "/ci/builder")}}); err != nil {
			return err
		}
		select {
		case <-update:
			return stream.Send(&delegatedidentityv1.SubscribeToX509SVIDsResponse{})
		case <-stream.Context().Done():
			return nil
		}
	}}
	a := newAttestor(t, serve(t, fake), "5s")
	caller := workloadattestor.Caller{PID: 4242}

	// An update closes changed.
	res, changed, err := a.AttestWatch(context.Background(), caller)
	require.NoError(t, err)
	require.Equal(t, []string{"spiffe://td/ci/builder"}, res.SPIFFEIDs)
	select {
	case <-changed:
		t.Fatal("changed before SPIRE said anything more")
	case <-time.After(200 * time.Millisecond):
	}
	close(update)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("an update from SPIRE did not close changed")
	}

	// So does the end of the caller's context (the connection closing).
	ctx, cancel := context.WithCancel(context.Background())
	_, changed, err = a.AttestWatch(ctx, caller)
	require.NoError(t, err)
	cancel()
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the subscription did not close changed")
	}
}

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/internal/spireadmin/spiretest"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// fakeAdmin is a hand-written hallmark-server AdminService on a real unix
// socket. It keeps issuers the way the proto describes them (one active;
// prepare adds a prepared one; activate makes the previous active old;
// taint and revoke act on old and tainted ones) on a fixed clock, and
// records every mutating call as it arrived.
type fakeAdmin struct {
	serverv1.UnimplementedAdminServiceServer

	Socket string
	now    time.Time

	mu       sync.Mutex
	issuers  []*serverv1.IssuerStatus
	agents   []*serverv1.AgentStatus
	calls    []string
	failNext error
}

var fakeNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// startFakeAdmin serves a fake with one active issuer and one agent
// certified by it; it stops when the test ends.
func startFakeAdmin(t *testing.T) *fakeAdmin {
	t.Helper()
	dir, err := os.MkdirTemp("", "hsa-") // unix socket paths must stay short
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeAdmin{Socket: filepath.Join(dir, "admin.sock"), now: fakeNow}
	first := f.newIssuer()
	first.State = issuerActive
	f.agents = []*serverv1.AgentStatus{{
		SpiffeId: "spiffe://example.org/hallmark/agent/runner-1", Serial: "5e1a",
		IssuedAt: timestamppb.New(f.now.Add(-time.Minute)), ExpiresAt: timestamppb.New(f.now.Add(4 * time.Minute)),
		IssuerFingerprint: first.Fingerprint,
	}}
	serveAdmin(t, f.Socket, func(s *grpc.Server) { serverv1.RegisterAdminServiceServer(s, f) })
	return f
}

// serveAdmin serves a gRPC server on a unix socket until the test ends.
func serveAdmin(t *testing.T, socket string, register func(*grpc.Server)) {
	t.Helper()
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := grpc.NewServer()
	register(srv)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
}

func fingerprintOf(id string) []byte {
	fp := sha256.Sum256([]byte(id))
	return fp[:]
}

func (f *fakeAdmin) newIssuer() *serverv1.IssuerStatus {
	n := len(f.issuers) + 1
	id := fmt.Sprintf("issuer-%d", n)
	is := &serverv1.IssuerStatus{
		Id: id, Fingerprint: fingerprintOf(id), State: issuerPrepared,
		Subject:   fmt.Sprintf("CN=Hallmark signing CA %d,O=Example", n),
		NotBefore: timestamppb.New(f.now), NotAfter: timestamppb.New(f.now.AddDate(1, 0, 0)),
		TrustedUntil: timestamppb.New(f.now.AddDate(1, 0, 0)),
	}
	f.issuers = append(f.issuers, is)
	return is
}

// pick returns the issuer named id, or the only one in state want. Its
// refusals name the step first, as hallmark-server's do.
func (f *fakeAdmin) pick(id, want, verb string) (*serverv1.IssuerStatus, error) {
	var found []*serverv1.IssuerStatus
	for _, is := range f.issuers {
		if (id != "" && is.Id == id) || (id == "" && is.State == want) {
			found = append(found, is)
		}
	}
	switch {
	case id != "" && len(found) == 0:
		return nil, status.Errorf(codes.NotFound, "%s: no issuer %q", verb, id)
	case len(found) == 0:
		return nil, status.Errorf(codes.FailedPrecondition, "%s: no %s issuer", verb, want)
	case len(found) > 1:
		return nil, status.Errorf(codes.FailedPrecondition, "%s: %d %s issuers; name one with its ID", verb, len(found), want)
	}
	is := found[0]
	if is.State == issuerActive && verb == "taint" {
		return nil, status.Errorf(codes.FailedPrecondition, "taint: issuer %s is the active one; activate another one first", is.Id)
	}
	if is.State != want {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: issuer %s is %s", verb, is.Id, is.State)
	}
	return is, nil
}

func (f *fakeAdmin) call(c string) error {
	f.calls = append(f.calls, c)
	err := f.failNext
	f.failNext = nil
	return err
}

func (f *fakeAdmin) GetStatus(context.Context, *serverv1.GetStatusRequest) (*serverv1.GetStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &serverv1.GetStatusResponse{}
	for _, is := range f.issuers {
		resp.Issuers = append(resp.Issuers, proto.Clone(is).(*serverv1.IssuerStatus))
	}
	for _, a := range f.agents {
		resp.Agents = append(resp.Agents, proto.Clone(a).(*serverv1.AgentStatus))
	}
	return resp, nil
}

func (f *fakeAdmin) PrepareIssuer(context.Context, *serverv1.PrepareIssuerRequest) (*serverv1.IssuerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("prepare"); err != nil {
		return nil, err
	}
	for _, is := range f.issuers {
		if is.State == issuerPrepared {
			return nil, status.Errorf(codes.FailedPrecondition, "prepare: issuer %s is already prepared; activate it first", is.Id)
		}
	}
	return f.newIssuer(), nil
}

func (f *fakeAdmin) ActivateIssuer(_ context.Context, req *serverv1.IssuerRequest) (*serverv1.IssuerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(fmt.Sprintf("activate %q", req.GetId())); err != nil {
		return nil, err
	}
	is, err := f.pick(req.GetId(), issuerPrepared, "activate")
	if err != nil {
		return nil, err
	}
	for _, o := range f.issuers {
		if o.State == issuerActive {
			o.State = issuerOld
		}
	}
	is.State = issuerActive
	return is, nil
}

func (f *fakeAdmin) TaintIssuer(_ context.Context, req *serverv1.IssuerRequest) (*serverv1.IssuerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call(fmt.Sprintf("taint %q", req.GetId())); err != nil {
		return nil, err
	}
	is, err := f.pick(req.GetId(), issuerOld, "taint")
	if err != nil {
		return nil, err
	}
	is.State, is.TaintedAt = issuerTainted, timestamppb.New(f.now)
	return is, nil
}

func (f *fakeAdmin) RevokeIssuer(_ context.Context, req *serverv1.RevokeIssuerRequest) (*serverv1.IssuerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at := "unset"
	if req.At != nil {
		at = req.At.AsTime().Format(time.RFC3339)
	}
	if err := f.call(fmt.Sprintf("revoke %q at %s", req.GetId(), at)); err != nil {
		return nil, err
	}
	is, err := f.pick(req.GetId(), issuerTainted, "revoke")
	if err != nil {
		return nil, err
	}
	from := timestamppb.New(f.now)
	if req.At != nil {
		from = req.At
	}
	is.State, is.RevokedAt, is.TrustedUntil = issuerRevoked, from, from
	return is, nil
}

func (f *fakeAdmin) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeAdmin) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

func short(id string) string { return hex.EncodeToString(fingerprintOf(id))[:16] }

// Every step through the CLI against the fake, in the order an operator
// would run them and with the refusals on the way: each allowed step
// prints the issuer it acted on, then every issuer and the next step; a
// refused one prints the server's code and message; --id and --at reach
// the server as given.
func TestAdminRotateSigning(t *testing.T) {
	fake := startFakeAdmin(t)
	now := fakeNow.Format(time.RFC3339)
	cases := []struct {
		args     []string
		wantErr  string   // the whole error
		wantOut  []string // regular expressions, each matching a line
		wantCall string   // what the server received; "" for nothing
	}{
		{
			args:     []string{"taint"},
			wantErr:  `taint: hallmark-server refused (FailedPrecondition): no old issuer`,
			wantCall: `taint ""`,
		},
		{
			args:     []string{"activate"},
			wantErr:  `activate: hallmark-server refused (FailedPrecondition): no prepared issuer`,
			wantCall: `activate ""`,
		},
		{
			args: []string{"prepare"},
			wantOut: []string{
				`^prepared signing CA issuer-2 \(prepared, fingerprint ` + short("issuer-2") + `\)$`,
				`^Signing CAs of hallmark-server \(admin socket ` + regexp.QuoteMeta(fake.Socket) + `\)$`,
				`^  ID +STATE +SUBJECT +NOT BEFORE +NOT AFTER +TAINTED AT +REVOKED AT +TRUSTED UNTIL +FINGERPRINT$`,
				`^  issuer-1 +active +CN=Hallmark signing CA 1,O=Example +` + now + ` +2027-11-25T12:00:00Z +- +- +2027-11-25T12:00:00Z +` + short("issuer-1") + `$`,
				`^  issuer-2 +prepared +CN=Hallmark signing CA 2,O=Example +` + now + ` .* ` + short("issuer-2") + `$`,
				`^  phase: +prepared$`,
				`^  next: +wait until every verifier has refreshed its trusted root`,
			},
			wantCall: `prepare`,
		},
		{
			args:     []string{"prepare"},
			wantErr:  `prepare: hallmark-server refused (FailedPrecondition): issuer issuer-2 is already prepared; activate it first`,
			wantCall: `prepare`,
		},
		{
			args:     []string{"activate", "--id", "issuer-1"},
			wantErr:  `activate: hallmark-server refused (FailedPrecondition): issuer issuer-1 is active`,
			wantCall: `activate "issuer-1"`,
		},
		{
			args:     []string{"activate", "--id", "issuer-9"},
			wantErr:  `activate: hallmark-server refused (NotFound): no issuer "issuer-9"`,
			wantCall: `activate "issuer-9"`,
		},
		{
			args: []string{"activate"},
			wantOut: []string{
				`^activated signing CA issuer-2 \(active, fingerprint ` + short("issuer-2") + `\)$`,
				`^  issuer-1 +old `,
				`^  issuer-2 +active `,
				`^  phase: +activated$`,
				`^  next: +run taint`,
			},
			wantCall: `activate ""`,
		},
		{
			args:     []string{"taint", "--id", "issuer-2"},
			wantErr:  `taint: hallmark-server refused (FailedPrecondition): issuer issuer-2 is the active one; activate another one first`,
			wantCall: `taint "issuer-2"`,
		},
		{
			args:     []string{"revoke"},
			wantErr:  `revoke: hallmark-server refused (FailedPrecondition): no tainted issuer`,
			wantCall: `revoke "" at unset`,
		},
		{
			args: []string{"taint"},
			wantOut: []string{
				`^tainted signing CA issuer-1 \(tainted, fingerprint ` + short("issuer-1") + `\)$`,
				`^  issuer-1 +TAINTED +CN=Hallmark signing CA 1,O=Example +` + now + ` +2027-11-25T12:00:00Z +` + now + ` +- +2027-11-25T12:00:00Z `,
				`^  phase: +tainted$`,
				`^  next: +once every agent holds a certificate from the active issuer`,
			},
			wantCall: `taint ""`,
		},
		{
			args:    []string{"revoke", "--at", "yesterday"},
			wantErr: `--at "yesterday": want an RFC 3339 time such as 2026-01-02T15:04:05Z`,
		},
		{
			args:    []string{"prepare", "--at", "2026-11-25T10:00:00Z"},
			wantErr: `unknown flag: --at`,
		},
		{
			args:    []string{"prepare", "--id", "issuer-1"},
			wantErr: `unknown flag: --id`,
		},
		{
			args: []string{"revoke", "--id", "issuer-1", "--at", "2026-11-25T11:30:00+01:00"},
			wantOut: []string{
				`^revoked signing CA issuer-1 \(revoked, fingerprint ` + short("issuer-1") + `\)$`,
				`^  issuer-1 +REVOKED +CN=Hallmark signing CA 1,O=Example +` + now + ` +2027-11-25T12:00:00Z +` + now + ` +2026-11-25T10:30:00Z +2026-11-25T10:30:00Z `,
				`^  phase: +rotated$`,
			},
			wantCall: `revoke "issuer-1" at 2026-11-25T10:30:00Z`,
		},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			before := len(fake.Calls())
			out, err := runCLI(t, append([]string{"admin", "rotate", "signing", "--server-admin-socket", fake.Socket}, tc.args...)...)
			if tc.wantErr != "" {
				require.EqualError(t, err, tc.wantErr)
			} else {
				require.NoError(t, err, out)
			}
			for _, re := range tc.wantOut {
				require.Regexp(t, regexp.MustCompile(`(?m)`+re), out)
			}
			calls := fake.Calls()[before:]
			if tc.wantCall == "" {
				require.Empty(t, calls)
			} else {
				require.Equal(t, []string{tc.wantCall}, calls)
			}
		})
	}
}

// --json prints the step, the issuer with its full fingerprint, and the
// whole state; revoke without --at leaves the time to the server.
func TestAdminRotateSigningJSON(t *testing.T) {
	fake := startFakeAdmin(t)
	rotate := func(step string) string {
		t.Helper()
		out, err := runCLI(t, "admin", "rotate", "signing", step, "--json", "--server-admin-socket", fake.Socket)
		require.NoError(t, err, out)
		return out
	}
	rotate("prepare")
	rotate("activate")
	rotate("taint")
	out := rotate("revoke")
	var res struct {
		Step   string
		Issuer signingIssuer
		State  signingReport
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, "revoke", res.Step)
	require.Equal(t, "issuer-1", res.Issuer.ID)
	require.Equal(t, issuerRevoked, res.Issuer.State)
	require.Equal(t, hex.EncodeToString(fingerprintOf("issuer-1")), res.Issuer.Fingerprint)
	require.Equal(t, fakeNow, *res.Issuer.RevokedAt)
	require.Equal(t, fakeNow, *res.Issuer.TrustedUntil)
	require.Equal(t, "rotated", res.State.Phase)
	require.Len(t, res.State.Issuers, 2)
	require.Len(t, res.State.Agents, 1)
	require.Equal(t, `revoke "" at unset`, fake.Calls()[3])
}

// Errors say what went wrong and what to do: no socket, something else
// there, a socket nobody listens on, permission denied on connect, the
// server's own refusal of the caller, a server without AdminService.
func TestAdminSigningErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))

	stale := shortSocket(t)
	lis, err := net.Listen("unix", stale)
	require.NoError(t, err)
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	other := shortSocket(t)
	serveAdmin(t, other, func(*grpc.Server) {}) // a gRPC server without AdminService

	fake := startFakeAdmin(t)

	cases := []struct {
		name    string
		socket  string
		setup   func(t *testing.T)
		wantErr string
	}{
		{
			name: "no socket", socket: filepath.Join(dir, "none.sock"),
			wantErr: "no hallmark-server admin socket at " + filepath.Join(dir, "none.sock") +
				": is hallmark-server running with server.admin_socket set? (give its path with --server-admin-socket or HALLMARK_SERVER_ADMIN_SOCKET)",
		},
		{
			name: "not a socket", socket: file,
			wantErr: file + " is not a socket: give hallmark-server's server.admin_socket",
		},
		{
			name: "nothing listening", socket: stale,
			wantErr: "nothing listens on hallmark-server's admin socket " + stale + " (left from an earlier run?): is hallmark-server running with server.admin_socket set?",
		},
		{
			// The socket is mode 0600, owned by the server's user; as root
			// the tests cannot be refused by the kernel, so the refusal is
			// the dialer's.
			name: "permission denied on connect", socket: "unix://" + fake.Socket,
			setup: func(t *testing.T) {
				orig := dialUnix
				t.Cleanup(func() { dialUnix = orig })
				dialUnix = func(context.Context, string) (net.Conn, error) {
					return nil, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}
				}
			},
			wantErr: "permission denied on hallmark-server's admin socket " + fake.Socket + ": run as the server's user or root",
		},
		{
			name: "refused by the server", socket: fake.Socket,
			setup: func(*testing.T) {
				fake.FailNext(status.Error(codes.PermissionDenied, "uid 1000 may not call /hallmark.server.v1.AdminService/PrepareIssuer: run as the server's user or root"))
			},
			wantErr: "prepare: hallmark-server refused (PermissionDenied): uid 1000 may not call /hallmark.server.v1.AdminService/PrepareIssuer: run as the server's user or root",
		},
		{
			name: "refused by the server, without a hint", socket: fake.Socket,
			setup: func(*testing.T) {
				fake.FailNext(status.Error(codes.PermissionDenied, "uid 1000 is not allowed"))
			},
			wantErr: "prepare: hallmark-server refused (PermissionDenied): uid 1000 is not allowed: run as the server's user or root",
		},
		{
			name: "server failing", socket: fake.Socket,
			setup: func(*testing.T) {
				fake.FailNext(status.Error(codes.Unavailable, "prepare: publish the new issuer: database is locked"))
			},
			wantErr: "prepare: hallmark-server unavailable: publish the new issuer: database is locked",
		},
		{
			name: "no AdminService", socket: other,
			wantErr: "prepare: the server on " + other + " does not serve hallmark.server.v1.AdminService (unknown service hallmark.server.v1.AdminService): is it a hallmark-server with signing-CA rotation?",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(t)
			}
			_, err := runCLI(t, "admin", "rotate", "signing", "prepare", "--server-admin-socket", tc.socket)
			require.EqualError(t, err, tc.wantErr)
		})
	}

	t.Run("socket from the environment", func(t *testing.T) {
		t.Setenv(serverAdminSocketEnv, filepath.Join(dir, "env.sock"))
		_, err := runCLI(t, "admin", "rotate", "signing", "prepare")
		require.ErrorContains(t, err, "no hallmark-server admin socket at "+filepath.Join(dir, "env.sock")+": ")
	})
}

func shortSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hsa-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s.sock")
}

// admin status shows the signing section beside SPIRE's; a section whose
// server is not there says so in its place, and the command fails only
// when no section could be shown.
func TestAdminStatusSigning(t *testing.T) {
	spire := spiretest.Start(t)
	fake := startFakeAdmin(t)
	_, err := runCLI(t, "admin", "rotate", "signing", "prepare", "--server-admin-socket", fake.Socket)
	require.NoError(t, err)
	missing := filepath.Join(t.TempDir(), "none.sock")

	cases := []struct {
		name          string
		spire, server string
		wantErr       bool
		wantOut       []string // regular expressions, each matching a line
		notOut        []string
	}{
		{
			name: "both", spire: spire.Socket, server: fake.Socket,
			wantOut: []string{
				`^SPIRE X.509 authorities \(trust domain example.org`,
				`^Signing CAs of hallmark-server \(admin socket ` + regexp.QuoteMeta(fake.Socket) + `\)$`,
				`^  issuer-1 +active +CN=Hallmark signing CA 1,O=Example +2026-11-25T12:00:00Z +2027-11-25T12:00:00Z +- +- +2027-11-25T12:00:00Z +` + short("issuer-1") + `$`,
				`^  issuer-2 +prepared `,
				`^  agents \(1\):$`,
				`^  SPIFFE ID +SERIAL +EXPIRES +ISSUER +ISSUED$`,
				`^  spiffe://example.org/hallmark/agent/runner-1 +5e1a +2026-11-25T12:04:00Z +` + short("issuer-1") + ` \(issuer-1\) +2026-11-25T11:59:00Z$`,
				`^  phase: +prepared$`,
			},
			notOut: []string{`ERROR`},
		},
		{
			name: "SPIRE only", spire: spire.Socket, server: missing,
			wantOut: []string{
				`^SPIRE X.509 authorities \(trust domain example.org`,
				`^signing: ERROR no hallmark-server admin socket at ` + regexp.QuoteMeta(missing) + `: is hallmark-server running with server.admin_socket set\?`,
			},
		},
		{
			name: "server only", spire: missing, server: fake.Socket,
			wantOut: []string{
				`^spire: ERROR spireadmin: SPIRE server socket `,
				`^  issuer-2 +prepared `,
			},
		},
		{
			name: "neither", spire: missing, server: missing, wantErr: true,
			wantOut: []string{`^spire: ERROR `, `^signing: ERROR no hallmark-server admin socket at `},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, "admin", "status", "--spire-socket", tc.spire, "--server-admin-socket", tc.server)
			if tc.wantErr {
				require.Error(t, err)
				require.ErrorContains(t, err, "signing: no hallmark-server admin socket")
			} else {
				require.NoError(t, err, out)
			}
			for _, re := range tc.wantOut {
				require.Regexp(t, regexp.MustCompile(`(?m)`+re), out)
			}
			for _, re := range tc.notOut {
				require.NotRegexp(t, regexp.MustCompile(`(?m)`+re), out)
			}

			out, err = runCLI(t, "admin", "status", "--json", "--spire-socket", tc.spire, "--server-admin-socket", tc.server)
			require.Equal(t, tc.wantErr, err != nil, "%v", err)
			var st struct {
				SPIRE   struct{ Error string }
				Signing struct {
					signingReport
					Error string
				}
			}
			require.NoError(t, json.Unmarshal([]byte(out), &st), out)
			require.Equal(t, tc.spire == missing, st.SPIRE.Error != "", "spire: %+v", st.SPIRE)
			if tc.server == missing {
				require.Contains(t, st.Signing.Error, "no hallmark-server admin socket at "+missing)
				return
			}
			require.Empty(t, st.Signing.Error)
			require.Equal(t, fake.Socket, st.Signing.Socket)
			require.Equal(t, []string{"issuer-1", "issuer-2"}, []string{st.Signing.Issuers[0].ID, st.Signing.Issuers[1].ID})
			require.Equal(t, hex.EncodeToString(fingerprintOf("issuer-1")), st.Signing.Issuers[0].Fingerprint)
			require.Len(t, st.Signing.Agents, 1)
			require.Equal(t, "spiffe://example.org/hallmark/agent/runner-1", st.Signing.Agents[0].SPIFFEID)
			require.Equal(t, "issuer-1", st.Signing.Agents[0].Issuer)
			require.Equal(t, fakeNow.Add(4*time.Minute), *st.Signing.Agents[0].ExpiresAt)
			require.Equal(t, "prepared", st.Signing.Phase)
		})
	}
}

// With no issuers and no agents (a server that has not started its key
// manager yet), the section says so rather than printing empty tables.
func TestSigningReportEmpty(t *testing.T) {
	r := newSigningReport("/run/hallmark-server/admin.sock", &serverv1.GetStatusResponse{})
	var b strings.Builder
	r.Print(&b)
	require.Equal(t, `Signing CAs of hallmark-server (admin socket /run/hallmark-server/admin.sock)
  issuers: none
  agents: none issued a signing certificate since the server started
  phase:    no active issuer
  next:     run prepare, then activate
`, b.String())
}

// The agents' ISSUER column: the short fingerprint, with the issuer's ID
// when it is known and says more than the fingerprint (the local key
// manager's IDs are fingerprint prefixes).
func TestSigningReportAgentIssuer(t *testing.T) {
	local := fingerprintOf("local")
	cases := []struct {
		name   string
		issuer *serverv1.IssuerStatus
		agent  []byte // issuer fingerprint
		want   string
	}{
		{"named issuer", &serverv1.IssuerStatus{Id: "vault-issuer-7", Fingerprint: fingerprintOf("v")}, fingerprintOf("v"), short("v") + " (vault-issuer-7)"},
		{"local issuer", &serverv1.IssuerStatus{Id: hex.EncodeToString(local[:16]), Fingerprint: local}, local, short("local")},
		{"unknown issuer", &serverv1.IssuerStatus{Id: "other", Fingerprint: fingerprintOf("v")}, fingerprintOf("gone"), short("gone")},
		{"no issuer", &serverv1.IssuerStatus{Id: "other", Fingerprint: fingerprintOf("v")}, nil, "-"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newSigningReport("s", &serverv1.GetStatusResponse{
				Issuers: []*serverv1.IssuerStatus{tc.issuer},
				Agents:  []*serverv1.AgentStatus{{SpiffeId: "spiffe://example.org/a", Serial: "1", IssuerFingerprint: tc.agent}},
			})
			var b strings.Builder
			r.printAgents(&b)
			require.Regexp(t, regexp.MustCompile(`(?m)^  spiffe://example.org/a +1 +- +`+regexp.QuoteMeta(tc.want)+` +-$`), b.String())
		})
	}
}

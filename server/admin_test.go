package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/internal/proctest"
	"github.com/hallmark-dev/hallmark/plugins/keymanager/local"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// clock is a settable clock for the server under test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// rotationFixture is a server with the local key manager, its admin API
// and its agent API.
type rotationFixture struct {
	ls    *logServer
	admin *adminService
	agent *agentService
	clk   *clock
}

func newRotationFixture(t *testing.T) *rotationFixture {
	t.Helper()
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	km, err := local.New(local.Config{Dir: t.TempDir(), Now: clk.now})
	require.NoError(t, err)
	ls := newLogServerAt(t, km, clk.now)
	f := &rotationFixture{
		ls:    ls,
		admin: &adminService{s: ls.s, km: km, tlog: ls.tl},
		agent: &agentService{s: ls.s, km: km, tlog: ls.tl},
		clk:   clk,
	}
	require.NoError(t, f.admin.publishIssuers(context.Background()))
	return f
}

// signed is an attestation signed under a freshly issued certificate.
type signed struct {
	key     *ecdsa.PrivateKey
	bundle  *bundlepb.Bundle
	env     []byte
	leaf    *x509.Certificate
	issuer  string // hex fingerprint of the issuing CA
	product []byte
}

func (f *rotationFixture) sign(t *testing.T) signed {
	t.Helper()
	ctx := withCaller(context.Background(), agentID)
	key := newP256(t)
	issued, err := f.agent.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: makeCSR(t, key, nil)})
	require.NoError(t, err)
	chain := issued.GetCertificateChain()
	leaf, err := x509.ParseCertificate(chain[0])
	require.NoError(t, err)
	fp := sha256.Sum256(chain[1])
	return f.signWith(t, key, leaf, hex.EncodeToString(fp[:]))
}

// signUnder signs a new statement with the key and certificate of s, as
// an agent that has not renewed would.
func (f *rotationFixture) signUnder(t *testing.T, s signed) signed {
	t.Helper()
	return f.signWith(t, s.key, s.leaf, s.issuer)
}

var productSeq struct {
	sync.Mutex
	n int
}

func (f *rotationFixture) signWith(t *testing.T, key *ecdsa.PrivateKey, leaf *x509.Certificate, issuer string) signed {
	t.Helper()
	productSeq.Lock()
	productSeq.n++
	product := []byte(fmt.Sprintf("product %d", productSeq.n))
	productSeq.Unlock()
	b, env := signStep(t, key, leaf, product, f.clk.now())
	return signed{key: key, bundle: b, env: env, leaf: leaf, issuer: issuer, product: product}
}

// submit logs s and returns the complete bundle, or the refusal.
func (f *rotationFixture) submit(t *testing.T, s signed) ([]byte, string) {
	t.Helper()
	ctx := withCaller(context.Background(), agentID)
	resp, err := f.agent.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{{Envelope: s.env, Certificate: s.leaf.Raw}}})
	require.NoError(t, err)
	r := resp.GetResults()[0]
	if r.GetError() != "" {
		return nil, r.GetError()
	}
	var te rekorpb.TransparencyLogEntry
	require.NoError(t, protojson.Unmarshal(r.GetTlogEntry(), &te))
	return completeBundle(t, s.bundle, &te, r.GetSignedTimestamp()), ""
}

func (f *rotationFixture) verify(t *testing.T, bundle []byte, s signed) error {
	t.Helper()
	trJSON, err := f.ls.tl.TrustedRootJSON(context.Background())
	require.NoError(t, err)
	tr, err := verify.ParseTrustedRoot(trJSON)
	require.NoError(t, err)
	_, err = verify.Verify(bundle, []verify.Digest{verify.DigestBytes("app", s.product)}, verify.Options{TrustedRoot: tr})
	return err
}

func (f *rotationFixture) states(t *testing.T) map[string]string {
	t.Helper()
	st, err := f.admin.GetStatus(context.Background(), &serverv1.GetStatusRequest{})
	require.NoError(t, err)
	out := map[string]string{}
	for _, is := range st.GetIssuers() {
		out[is.GetId()] = is.GetState()
	}
	return out
}

// published reports whether the trusted root lists a CA whose issuing
// certificate has fingerprint fp.
func (f *rotationFixture) published(t *testing.T, fp []byte) bool {
	t.Helper()
	trJSON, err := f.ls.tl.TrustedRootJSON(context.Background())
	require.NoError(t, err)
	var tr trustrootpb.TrustedRoot
	require.NoError(t, protojson.Unmarshal(trJSON, &tr))
	for _, ca := range tr.GetCertificateAuthorities() {
		first := sha256.Sum256(ca.GetCertChain().GetCertificates()[0].GetRawBytes())
		if bytes.Equal(first[:], fp) {
			return true
		}
	}
	return false
}

// fakeWatch is the server side of a WatchSigningAuthorities stream.
type fakeWatch struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *serverv1.SigningAuthorities
}

func (w *fakeWatch) Context() context.Context { return w.ctx }
func (w *fakeWatch) Send(m *serverv1.SigningAuthorities) error {
	w.sent <- m
	return nil
}

func TestSigningCARotation(t *testing.T) {
	ctx := context.Background()
	f := newRotationFixture(t)
	code := func(err error) codes.Code { return status.Code(err) }

	// Before any rotation: one active issuer; each later step is refused
	// with what to do first.
	before := f.sign(t)
	beforeBundle, refusal := f.submit(t, before)
	require.Empty(t, refusal)
	require.NoError(t, f.verify(t, beforeBundle, before))
	oldFP := before.issuer
	_, err := f.admin.ActivateIssuer(ctx, &serverv1.IssuerRequest{})
	require.Equal(t, codes.FailedPrecondition, code(err))
	require.ErrorContains(t, err, "run prepare first")
	_, err = f.admin.TaintIssuer(ctx, &serverv1.IssuerRequest{})
	require.ErrorContains(t, err, "no old issuer; run activate first")
	_, err = f.admin.RevokeIssuer(ctx, &serverv1.RevokeIssuerRequest{})
	require.ErrorContains(t, err, "no tainted issuer; run taint first")

	// An agent watching from the start sees the empty set, then each
	// change.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := &fakeWatch{ctx: wctx, sent: make(chan *serverv1.SigningAuthorities, 8)}
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- f.agent.WatchSigningAuthorities(&serverv1.WatchSigningAuthoritiesRequest{}, watch)
	}()
	require.Empty(t, (<-watch.sent).GetTaintedIssuers())

	// prepare: a second issuer, not active, already in the trusted root.
	prepared, err := f.admin.PrepareIssuer(ctx, &serverv1.PrepareIssuerRequest{})
	require.NoError(t, err)
	require.Equal(t, issuerPrepared, prepared.GetState())
	require.True(t, f.published(t, prepared.GetFingerprint()), "the prepared issuer is in the trusted root")
	require.Equal(t, oldFP, f.sign(t).issuer, "prepare does not change who signs")

	// activate: new certificates come from the prepared issuer.
	_, err = f.admin.ActivateIssuer(ctx, &serverv1.IssuerRequest{})
	require.NoError(t, err)
	after := f.sign(t)
	require.Equal(t, hex.EncodeToString(prepared.GetFingerprint()), after.issuer)
	_, err = f.admin.TaintIssuer(ctx, &serverv1.IssuerRequest{Id: prepared.GetId()})
	require.ErrorContains(t, err, "is the active one")
	_, err = f.admin.RevokeIssuer(ctx, &serverv1.RevokeIssuerRequest{})
	require.ErrorContains(t, err, "run taint first")
	// An old-issuer certificate still logs: nothing is tainted yet.
	_, refusal = f.submit(t, f.signUnder(t, before))
	require.Empty(t, refusal)

	// taint: agents are told; old certificates are refused after the
	// grace.
	f.clk.add(time.Minute)
	tainted, err := f.admin.TaintIssuer(ctx, &serverv1.IssuerRequest{})
	require.NoError(t, err)
	require.Equal(t, issuerTainted, tainted.GetState())
	update := <-watch.sent
	require.Len(t, update.GetTaintedIssuers(), 1)
	require.Equal(t, oldFP, hex.EncodeToString(update.GetTaintedIssuers()[0]))
	inGrace := f.signUnder(t, before)
	inGraceBundle, refusal := f.submit(t, inGrace)
	require.Empty(t, refusal, "within the grace")
	f.clk.add(trust.TaintGrace)
	_, refusal = f.submit(t, f.signUnder(t, before))
	require.Contains(t, refusal, "tainted")
	newBundle, refusal := f.submit(t, after)
	require.Empty(t, refusal, "the new issuer's certificates log")
	// A repeat of an entry logged before the taint still answers.
	_, refusal = f.submit(t, before)
	require.Empty(t, refusal)

	// revoke: not in the future; then from a time between the first
	// bundle and the in-grace one.
	_, err = f.admin.RevokeIssuer(ctx, &serverv1.RevokeIssuerRequest{At: timestamppb.New(f.clk.now().Add(time.Hour))})
	require.Equal(t, codes.InvalidArgument, code(err))
	// Between two whole seconds: revoked from the earlier one, since a
	// timestamp's time may be rounded down (TestRevokedBetweenSeconds).
	revokeAt := f.clk.now().Add(-trust.TaintGrace - 30*time.Second).Truncate(time.Second)
	revoked, err := f.admin.RevokeIssuer(ctx, &serverv1.RevokeIssuerRequest{At: timestamppb.New(revokeAt.Add(250 * time.Millisecond))})
	require.NoError(t, err)
	require.Equal(t, issuerRevoked, revoked.GetState())
	require.True(t, revoked.GetRevokedAt().AsTime().Equal(revokeAt), "revoked from %s, want the whole second %s", revoked.GetRevokedAt().AsTime(), revokeAt)
	require.True(t, revoked.GetTrustedUntil().AsTime().Equal(revokeAt.Add(-time.Nanosecond)), "revoked from T: trusted until just before")
	require.Equal(t, map[string]string{tainted.GetId(): issuerRevoked, prepared.GetId(): issuerActive}, f.states(t))

	// Revoked again (as after a key manager failure): without a time,
	// or with a later one, T stays; a later one is refused, since it
	// would trust again what was signed between T and it (found by an
	// outside review). An earlier one moves T back.
	for _, req := range []*serverv1.RevokeIssuerRequest{
		{Id: tainted.GetId()},
		{Id: tainted.GetId(), At: timestamppb.New(revokeAt.Add(time.Second))},
		{Id: tainted.GetId(), At: timestamppb.New(f.clk.now())},
	} {
		again, err := f.admin.RevokeIssuer(ctx, req)
		if req.At != nil {
			require.Equal(t, codes.FailedPrecondition, code(err), "revoke at %s", req.At.AsTime())
			require.ErrorContains(t, err, "revocation only moves earlier")
			continue
		}
		require.NoError(t, err)
		require.True(t, again.GetRevokedAt().AsTime().Equal(revokeAt), "kept: %s", again.GetRevokedAt().AsTime())
	}
	status, err := f.admin.GetStatus(ctx, &serverv1.GetStatusRequest{})
	require.NoError(t, err)
	for _, is := range status.GetIssuers() {
		if is.GetId() == tainted.GetId() {
			require.True(t, is.GetRevokedAt().AsTime().Equal(revokeAt), "still revoked from T")
		}
	}

	// Before T: still verifies. After T under the revoked issuer: no
	// longer. The new issuer's: verifies.
	require.NoError(t, f.verify(t, beforeBundle, before))
	err = f.verify(t, inGraceBundle, inGrace)
	require.ErrorIs(t, err, verify.ErrNotVerified)
	var ce *verify.CheckError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, verify.CheckChain, ce.Check)
	require.NoError(t, f.verify(t, newBundle, after))
	_, refusal = f.submit(t, f.signUnder(t, before))
	require.Contains(t, refusal, "revoked")

	// The status lists the agent on the new issuer.
	st, err := f.admin.GetStatus(ctx, &serverv1.GetStatusRequest{})
	require.NoError(t, err)
	require.Len(t, st.GetAgents(), 1)
	require.Equal(t, after.issuer, hex.EncodeToString(st.GetAgents()[0].GetIssuerFingerprint()))

	stopWatch()
	require.NoError(t, <-watchDone)
}

func TestAllowAdmin(t *testing.T) {
	allowed := allowAdmin(1000)
	for uid, want := range map[uint32]bool{0: true, 1000: true, 1001: false, 65534: false} {
		require.Equal(t, want, allowed(uid), "uid %d", uid)
	}
}

// adminCaller is a caller of the admin socket and what it must get.
type adminCaller struct {
	name    string
	allowed func(uint32) bool
	want    codes.Code
}

// adminCallers are an allowed and a refused caller.
func adminCallers() []adminCaller {
	return []adminCaller{
		{"the server's user", allowAdmin(os.Geteuid()), codes.OK},
		{"refused by the policy", func(uint32) bool { return false }, codes.PermissionDenied},
	}
}

// Must show, with a caller that really runs as another user (uid 65534,
// started by a root test run): the admin socket's mode keeps it out
// (connecting is refused), and where the socket were opened to everyone
// (0666, as a careless chmod would), the uid check still refuses it with
// PermissionDenied; the server's own user (root here) is served. Before,
// only a stub policy refusing everyone stood for the refused caller.
func TestAdminSocketRefusesAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("running a caller as another user takes root (CI runs as root)")
	}
	f := newRotationFixture(t)
	dir, err := os.MkdirTemp("", "hm-admin-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755)) // reachable; the socket's own mode decides
	f.ls.s.cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.ls.s.serveAdmin(ctx, f.admin, allowAdmin(os.Geteuid())) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	require.Eventually(t, func() bool { _, err := os.Stat(f.ls.s.cfg.AdminSocket); return err == nil }, 5*time.Second, 10*time.Millisecond)
	info, err := os.Stat(f.ls.s.cfg.AdminSocket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the socket as the server makes it")
	// Else uid 65534 is kept out before the socket's mode is reached, and
	// the refusal below would show nothing.
	for d := dir; d != "/"; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		require.NotZero(t, fi.Mode().Perm()&0o001, "uid 65534 cannot reach %s: set TMPDIR to a directory others may enter", d)
	}

	exe := proctest.WorldExecutableCopy(t) // where uid 65534 may run it
	call := func(uid uint32) string {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = []string{adminCallerEnv + "=" + f.ls.s.cfg.AdminSocket} // nothing of this process's environment for another user
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return strings.TrimSpace(string(out))
	}

	require.True(t, strings.HasPrefix(call(0), "OK:"), "the server's own user")
	got := call(65534)
	require.True(t, strings.HasPrefix(got, "Unavailable:"), "uid 65534 through a 0600 socket: %s", got)
	require.Contains(t, got, "permission denied")

	require.NoError(t, os.Chmod(f.ls.s.cfg.AdminSocket, 0o666))
	got = call(65534)
	require.True(t, strings.HasPrefix(got, "PermissionDenied:"), "uid 65534 through a 0666 socket: %s", got)
	require.True(t, strings.HasPrefix(call(0), "OK:"), "the server's own user, still")
}

// TestAdminSocketAuthorization runs the admin API on a real socket: the
// server's own user is let in, anyone the policy refuses gets
// PermissionDenied, and the socket is 0600.
func TestAdminSocketAuthorization(t *testing.T) {
	for _, tc := range adminCallers() {
		t.Run(tc.name, func(t *testing.T) {
			f := newRotationFixture(t)
			dir := t.TempDir()
			f.ls.s.cfg.AdminSocket = filepath.Join(dir, "admin.sock")
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.ls.s.serveAdmin(ctx, f.admin, tc.allowed) }()
			defer func() { cancel(); require.NoError(t, <-done) }()
			require.Eventually(t, func() bool { _, err := os.Stat(f.ls.s.cfg.AdminSocket); return err == nil }, 5*time.Second, 10*time.Millisecond)
			info, err := os.Stat(f.ls.s.cfg.AdminSocket)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

			conn, err := grpc.NewClient("unix://"+f.ls.s.cfg.AdminSocket, grpc.WithTransportCredentials(peercred.Credentials()))
			require.NoError(t, err)
			defer conn.Close()
			_, err = serverv1.NewAdminServiceClient(conn).GetStatus(context.Background(), &serverv1.GetStatusRequest{})
			require.Equal(t, tc.want, status.Code(err), "%v", err)
		})
	}
}

// Must show: streaming calls on the admin socket are authorized like unary
// ones (a health Watch stream stands in for any streaming method).
func TestAdminSocketAuthorizesStreams(t *testing.T) {
	for _, tc := range adminCallers() {
		t.Run(tc.name, func(t *testing.T) {
			f := newRotationFixture(t)
			path := filepath.Join(t.TempDir(), "admin.sock")
			ln, err := peercred.Listen(peercred.ListenConfig{Path: path, Mode: 0o600, GID: -1})
			require.NoError(t, err)
			g := f.ls.s.newAdminGRPC(tc.allowed)
			healthpb.RegisterHealthServer(g, health.NewServer())
			go g.Serve(ln) //nolint:errcheck // stopped below
			defer g.Stop()

			conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(peercred.Credentials()))
			require.NoError(t, err)
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
			require.NoError(t, err)
			_, err = stream.Recv()
			require.Equal(t, tc.want, status.Code(err), "%v", err)
		})
	}
}

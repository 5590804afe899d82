package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/attest/tsa/tsatest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/internal/limits"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

// settableClock is a clock tests move.
type settableClock struct{ t atomic.Pointer[time.Time] }

func newSettableClock(t time.Time) *settableClock {
	c := &settableClock{}
	c.set(t)
	return c
}
func (c *settableClock) set(t time.Time)     { c.t.Store(&t) }
func (c *settableClock) now() time.Time      { return *c.t.Load() }
func (c *settableClock) add(d time.Duration) { c.set(c.now().Add(d)) }

// Must show (log side of late entries): an entry signed and timestamped
// while its certificate was valid is logged long after the certificate
// expired, when it comes with that timestamp, and the completed bundle
// verifies with attest/verify and sigstore-go against the served trusted
// root; without the timestamp, the same late entry is refused.
func TestLateEntryIsCheckedAtItsTimestamp(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	inter := root.intermediate(t, "issuing CA")
	km := chainKeyManager(t, root, inter)
	clock := newSettableClock(time.Now())
	ls := newLogServerAt(t, km, clock.now)
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}

	key := newP256(t)
	issued, err := svc.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: makeCSR(t, key, nil)})
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(issued.GetCertificateChain()[0])
	require.NoError(t, err)

	product := []byte("built during the outage")
	sum := sha256.Sum256(product)
	signedAt := clock.now()
	b, env := signStep(t, key, leaf, product, signedAt)
	sig := b.GetDsseEnvelope().GetSignatures()[0].GetSig()
	ts, err := svc.Timestamp(ctx, &serverv1.TimestampRequest{Signatures: [][]byte{sig}})
	require.NoError(t, err)
	require.Len(t, ts.GetTimestamps(), 1)
	require.Len(t, ts.GetTsaChain(), 2, "the authority's leaf and root")

	// The outage outlasts the certificate.
	clock.set(leaf.NotAfter.Add(30 * time.Minute))
	late := &serverv1.LogSubmission{Envelope: env, Certificate: leaf.Raw}
	resp, err := svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{late}})
	require.NoError(t, err)
	require.Contains(t, resp.GetResults()[0].GetError(), "verify: validity: certificate", "without its timestamp it is checked now")
	require.Contains(t, resp.GetResults()[0].GetError(), "is valid")

	late.Timestamp = ts.GetTimestamps()[0]
	resp, err = svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{late}})
	require.NoError(t, err)
	require.Empty(t, resp.GetResults()[0].GetError())
	require.Equal(t, late.Timestamp, resp.GetResults()[0].GetSignedTimestamp(), "the log keeps the timestamp granted at signing")
	var te rekorpb.TransparencyLogEntry
	require.NoError(t, protojson.Unmarshal(resp.GetResults()[0].GetTlogEntry(), &te))
	logged := completeBundle(t, b, &te, resp.GetResults()[0].GetSignedTimestamp())

	mux := http.NewServeMux()
	ls.tl.registerHTTP(mux, zap.NewNop())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_, _, trJSON := httpGet(t, srv.URL+"/trust/trusted_root.json")
	tr, err := verify.ParseTrustedRoot(trJSON)
	require.NoError(t, err)
	res, err := verify.Verify(logged, []verify.Digest{verify.DigestBytes("app", product)}, verify.Options{TrustedRoot: tr})
	require.NoError(t, err)
	require.WithinDuration(t, signedAt, res.SignedAt, time.Second, "verifiers take the time of signing")
	_, err = sigstorego.Verify(logged, trJSON, sum[:], agentID.String())
	require.NoError(t, err)

	// Again, later still: the same entry.
	clock.add(time.Hour)
	again, err := svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{late}})
	require.NoError(t, err)
	var te2 rekorpb.TransparencyLogEntry
	require.NoError(t, protojson.Unmarshal(again.GetResults()[0].GetTlogEntry(), &te2))
	require.Equal(t, te.GetLogIndex(), te2.GetLogIndex())
}

// A timestamp submitted through the agent API (LogSubmission.timestamp) is
// taken only when it is this log's authority's, over this very signature,
// at a time the certificate was valid; anything else is refused for good.
func TestSubmittedTimestampChecks(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	inter := root.intermediate(t, "issuing CA")
	km := chainKeyManager(t, root, inter)
	// The log, and its timestamp authority, an hour old.
	clock := newSettableClock(time.Now().Add(-time.Hour))
	ls := newLogServerAt(t, km, clock.now)
	clock.set(time.Now())
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}
	key := newP256(t)
	issued, err := svc.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: makeCSR(t, key, nil)})
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(issued.GetCertificateChain()[0])
	require.NoError(t, err)

	stamp := func(sig []byte, at time.Time, s *tsa.Signer) []byte {
		ts, err := s.Timestamp(sig, at)
		require.NoError(t, err)
		return ts
	}
	other := newTestTSA(t)
	tests := []struct {
		name string
		ts   func(sig, otherSig []byte) []byte
		want string
	}{
		{"another signature's", func(_, otherSig []byte) []byte { return stamp(otherSig, clock.now(), ls.tl.tsa) }, "timestamp is for other data than this signature"},
		{"another authority's", func(sig, _ []byte) []byte { return stamp(sig, clock.now(), other) }, "not signed by the trusted timestamp authority"},
		{"before the certificate", func(sig, _ []byte) []byte { return stamp(sig, leaf.NotBefore.Add(-time.Minute), ls.tl.tsa) }, "verify: validity: certificate"},
		{"after the certificate", func(sig, _ []byte) []byte { return stamp(sig, leaf.NotAfter.Add(time.Minute), ls.tl.tsa) }, "verify: validity: certificate"},
		// The log remembers the timestamps it issued and does not check
		// their signatures again (tsa.Authority.SkipSignatureCheckOfIssued):
		// one of them altered is no longer one of them.
		{"this authority's, its signature altered", func(sig, _ []byte) []byte {
			ts := stamp(sig, clock.now(), ls.tl.tsa)
			ts[len(ts)-1] ^= 1
			return ts
		}, "timestamp does not parse or its signature is invalid"},
		{"garbage", func([]byte, []byte) []byte { return []byte("not a timestamp") }, "timestamp does not parse"},
		{"too large", func([]byte, []byte) []byte { return make([]byte, limits.MaxTimestampBytes+1) }, "more than the 16384 allowed"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, env := signStep(t, key, leaf, []byte{byte(i)}, clock.now())
			ob, _ := signStep(t, key, leaf, []byte{byte(i), 1}, clock.now())
			sig := b.GetDsseEnvelope().GetSignatures()[0].GetSig()
			sub := &serverv1.LogSubmission{Envelope: env, Certificate: leaf.Raw, Timestamp: tt.ts(sig, ob.GetDsseEnvelope().GetSignatures()[0].GetSig())}
			resp, err := svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{sub}})
			require.NoError(t, err)
			require.Contains(t, resp.GetResults()[0].GetError(), tt.want)
			require.Empty(t, resp.GetResults()[0].GetTlogEntry())
		})
	}
}

// Timestamp answers from memory: with the store closed it still grants
// timestamps, each over its signature, by the log's authority, at the
// server's time; it refuses malformed requests.
func TestTimestampRPC(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	km := chainKeyManager(t, root, root.intermediate(t, "issuing CA"))
	clock := newSettableClock(time.Now().Truncate(time.Second))
	ls := newLogServerAt(t, km, clock.now)
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}
	ls.stop() // the appender stopped, the store closed

	sigs := [][]byte{[]byte("signature one"), []byte("signature two"), make([]byte, limits.MaxSignatureBytes)}
	resp, err := svc.Timestamp(ctx, &serverv1.TimestampRequest{Signatures: sigs})
	require.NoError(t, err)
	require.Len(t, resp.GetTimestamps(), len(sigs))
	var chain []*x509.Certificate
	for _, der := range resp.GetTsaChain() {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		chain = append(chain, c)
	}
	require.Equal(t, ls.tl.tsa.Chain(), chain)
	auth, err := tsa.NewAuthorityFromChain(chain)
	require.NoError(t, err)
	for i, sig := range sigs {
		at, err := auth.Verify(resp.GetTimestamps()[i], sig)
		require.NoError(t, err, "timestamp %d", i)
		require.Equal(t, clock.now().UTC(), at.UTC())
	}
	_, err = auth.Verify(resp.GetTimestamps()[0], sigs[1])
	require.Error(t, err, "each over its own signature")

	for name, req := range map[string]*serverv1.TimestampRequest{
		"none":      {},
		"too many":  {Signatures: make([][]byte, limits.MaxTimestampsPerCall+1)},
		"empty":     {Signatures: [][]byte{{}}},
		"too large": {Signatures: [][]byte{make([]byte, limits.MaxSignatureBytes+1)}},
	} {
		if name == "too many" {
			for i := range req.Signatures {
				req.Signatures[i] = []byte("s")
			}
		}
		_, err := svc.Timestamp(ctx, req)
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%s: %v", name, err)
	}
}

// FuzzSubmittedTimestamp feeds arbitrary timestamps with a good entry to
// the submission checks: they refuse, never panic, and accept only a
// timestamp of the log's authority over the entry's signature.
func FuzzSubmittedTimestamp(f *testing.F) {
	ca := newTestCA(f, "signing CA")
	agent := newTestAgent(f, ca, agentID)
	env := agent.sign(f, statement("fuzz"))
	good := submission(f, env, agent.cert)
	st := openStore(f, f.TempDir()+"/hallmark.db")
	defer st.Close()
	signer := newTestTSA(f)
	l, err := NewTransparencyLog(context.Background(), TransparencyLogConfig{Store: st, Key: newLogKey(f), Origin: testOrigin, TSA: signer})
	require.NoError(f, err)
	require.NoError(f, l.RecordSigningCA(context.Background(), []*x509.Certificate{ca.cert}))
	sig := env.GetSignatures()[0].GetSig()
	valid, err := signer.Timestamp(sig, time.Now())
	require.NoError(f, err)
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	auth, err := tsa.NewAuthorityFromChain(signer.Chain())
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, timestamp []byte) {
		sub := good
		sub.Timestamp = timestamp
		it, err := l.check(agentID, sub, time.Now())
		if len(timestamp) > 0 && err == nil {
			_, verr := auth.Verify(timestamp, sig)
			require.NoError(t, verr, "accepted only a timestamp of the log's authority over the signature")
			require.Equal(t, timestamp, it.timestamp)
		}
	})
}

// With the store down, SubmitEntries answers Unavailable before checking
// anything (agents send the call again until the store is back, and
// checking every entry each time would burn the CPU attestations need),
// while Timestamp goes on answering.
func TestSubmitEntriesFailsFastWithTheStoreDown(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	km := chainKeyManager(t, root, root.intermediate(t, "issuing CA"))
	ls := newLogServer(t, km)
	st := &pingStore{Store: ls.tl.store}
	ls.tl.store = st
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}
	bad := &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{{Envelope: []byte("{"), Certificate: []byte("x")}}}

	st.down.Store(true)
	_, err := svc.SubmitEntries(ctx, bad)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "transparency log: store: connection refused")
	_, err = svc.Timestamp(ctx, &serverv1.TimestampRequest{Signatures: [][]byte{[]byte("sig")}})
	require.NoError(t, err)

	st.down.Store(false)
	resp, err := svc.SubmitEntries(ctx, bad)
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetResults()[0].GetError(), "checked, and refused, once the store answers")
}

// TestAdmissionRemembersOnlyItsOwnTimestamps: log admission skips the
// signature check of a timestamp its own authority issued
// (verify.SkipTimestampSignatureCheckIfIssuedBy; docs/log.md,
// "Timestamps and time"), and of no other. With an authority key that
// writes invalid signatures the skipped check is visible: the log that
// issued such a timestamp admits it, and a log holding the same key and
// certificate that did not issue it (the same server after a restart, or
// another replica) refuses it.
func TestAdmissionRemembersOnlyItsOwnTimestamps(t *testing.T) {
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	key := newP256(t)
	chain, err := tsa.NewChain(key, "test tsa", time.Now().Add(-time.Hour))
	require.NoError(t, err)
	start := func() runningLog {
		s, err := tsa.NewSigner(tsatest.FaultyKey{Key: key}, chain)
		require.NoError(t, err)
		st := openStore(t, filepath.Join(t.TempDir(), "hallmark.db"))
		t.Cleanup(func() { st.Close() })
		l := startLog(t, TransparencyLogConfig{Store: st, TSA: s, Key: newLogKey(t), KeyCreated: time.Now(), Origin: testOrigin})
		require.NoError(t, l.RecordSigningCA(context.Background(), []*x509.Certificate{ca.cert}))
		return l
	}
	issuer, other := start(), start()

	env := agent.sign(t, statement("dist/a"))
	sub := submission(t, env, agent.cert)
	sub.Timestamp, err = issuer.tsa.Timestamp(env.GetSignatures()[0].GetSig(), time.Now())
	require.NoError(t, err)

	res := submitOne(t, other.TransparencyLog, agentID, sub)
	require.ErrorContains(t, res.Refusal, "timestamp does not parse or its signature is invalid")
	res = submitOne(t, issuer.TransparencyLog, agentID, sub)
	require.NoError(t, res.Refusal)
	require.Equal(t, sub.Timestamp, res.Timestamp)

	// hallmark_server_log_timestamps_recognized_total counts the skipped
	// checks, on the log that skipped them only.
	require.Equal(t, 1.0, counterValue(t, issuer.metrics.recognized))
	require.Equal(t, 0.0, counterValue(t, other.metrics.recognized))
}

package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/compact"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/plugins/store"
	"github.com/hallmark-dev/hallmark/plugins/store/sqlite"
)

const testOrigin = "hallmark.example.org"

// testAgent signs envelopes as an agent would.
type testAgent struct {
	id   spiffeid.ID
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newTestAgent(t testing.TB, ca *testCA, id spiffeid.ID) testAgent {
	t.Helper()
	key := newP256(t)
	return testAgent{id: id, key: key, cert: ca.issue(t, leafTemplate(id), key.Public())}
}

// statement is an in-toto statement naming subjects by the sha256 of
// their names.
// builderPlaceholder stands for the signing agent's SPIFFE ID in a
// statement; testAgent.sign puts the agent's own in its place, so that
// the statement passes the log's predicate check (builder.id is the
// certificate's SPIFFE ID).
const builderPlaceholder = "spiffe://builder.invalid/placeholder"

// statement is an in-toto statement with SLSA provenance, as the agent
// signs, naming subjects (each name with the SHA-256 of the name).
func statement(subjects ...string) []byte {
	step := attest.Step{Name: "build", Workspace: "/builds/w", Command: []string{"make"}, BuilderID: builderPlaceholder}
	seen := map[string]bool{}
	for _, s := range subjects {
		if !seen[s] { // a product is named once
			step.Products = append(step.Products, attest.Artifact{Name: s, SHA256: digestOf(s)})
		}
		seen[s] = true
	}
	st, err := attest.NewStatement(step)
	if err != nil {
		panic(err)
	}
	b, err := attest.MarshalStatement(st)
	if err != nil {
		panic(err)
	}
	return b
}

func digestOf(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func (a testAgent) sign(t testing.TB, payload []byte) *dssepb.Envelope {
	t.Helper()
	payload = bytes.ReplaceAll(payload, []byte(builderPlaceholder), []byte(a.id.String()))
	env, err := attest.SignEnvelope(payload, a.key)
	require.NoError(t, err)
	return env
}

func submission(t testing.TB, env *dssepb.Envelope, cert *x509.Certificate) Submission {
	t.Helper()
	b, err := protojson.Marshal(env)
	require.NoError(t, err)
	return Submission{Envelope: b, Certificate: cert.Raw}
}

// submit signs a statement naming subjects and returns its submission.
func (a testAgent) submit(t testing.TB, subjects ...string) Submission {
	t.Helper()
	return submission(t, a.sign(t, statement(subjects...)), a.cert)
}

// newLogKey returns a fresh Ed25519 log key.
func newLogKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return priv
}

func openStore(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: path})
	require.NoError(t, err)
	return st
}

// runningLog is a TransparencyLog with its appender running.
type runningLog struct {
	*TransparencyLog
	stop func() error
}

func startLog(t testing.TB, cfg TransparencyLogConfig) runningLog {
	t.Helper()
	l, err := NewTransparencyLog(context.Background(), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() }) //nolint:errcheck // tests that care call stop
	return runningLog{TransparencyLog: l, stop: stop}
}

// newTestTSA is a fresh timestamp authority.
func newTestTSA(t testing.TB) *tsa.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	chain, err := tsa.NewChain(key, "test tsa", time.Now().Add(-time.Hour))
	require.NoError(t, err)
	s, err := tsa.NewSigner(key, chain)
	require.NoError(t, err)
	return s
}

// newTestLog starts a log on a fresh SQLite store that knows ca.
func newTestLog(t testing.TB, ca *testCA, now func() time.Time) runningLog {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), "hallmark.db"))
	t.Cleanup(func() { st.Close() })
	l := startLog(t, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: newLogKey(t), KeyCreated: time.Now(), Origin: testOrigin, Now: now})
	if ca != nil {
		require.NoError(t, l.RecordSigningCA(context.Background(), []*x509.Certificate{ca.cert}))
	}
	return l
}

// checkEntry verifies te as a verifier would: the body commits to sub, the
// inclusion proof leads to the root of a checkpoint signed by the log.
func checkEntry(t testing.TB, l *TransparencyLog, te *rekorpb.TransparencyLogEntry, sub Submission) tlog.Checkpoint {
	t.Helper()
	body, err := tlog.ParseBody(te.GetCanonicalizedBody())
	require.NoError(t, err)
	var env dssepb.Envelope
	require.NoError(t, protojson.Unmarshal(sub.Envelope, &env))
	require.NoError(t, body.Matches(&env, sub.Certificate))
	require.Zero(t, te.GetIntegratedTime(), "as in Rekor v2, time comes from the timestamp")
	require.Equal(t, tlog.EntryKind, te.GetKindVersion().GetKind())
	require.Equal(t, tlog.EntryVersion, te.GetKindVersion().GetVersion())
	require.Equal(t, tlog.KeyID(l.Origin(), l.PublicKey()), te.GetLogId().GetKeyId())

	p := te.GetInclusionProof()
	require.Equal(t, te.GetLogIndex(), p.GetLogIndex())
	cp, err := tlog.OpenCheckpoint([]byte(p.GetCheckpoint().GetEnvelope()), l.Origin(), l.PublicKey())
	require.NoError(t, err)
	require.Equal(t, uint64(p.GetTreeSize()), cp.Size)
	require.Equal(t, p.GetRootHash(), cp.Root)
	require.NoError(t, tlog.VerifyInclusion(uint64(p.GetLogIndex()), cp.Size, tlog.LeafHash(te.GetCanonicalizedBody()), p.GetHashes(), cp.Root))
	return cp
}

func submitOne(t testing.TB, l *TransparencyLog, id spiffeid.ID, sub Submission) SubmitResult {
	t.Helper()
	res, err := l.Submit(context.Background(), id, []Submission{sub})
	require.NoError(t, err)
	require.Len(t, res, 1)
	return res[0]
}

func TestLogProofsAcrossSizesAndReopen(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	path := filepath.Join(t.TempDir(), "hallmark.db")
	key := newLogKey(t)

	st := openStore(t, path)
	l := startLog(t, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, KeyCreated: time.Now(), Origin: testOrigin})
	require.NoError(t, l.RecordSigningCA(ctx, []*x509.Certificate{ca.cert}))

	// The empty log has a signed checkpoint of size 0.
	cp0, err := tlog.OpenCheckpoint(l.Checkpoint(), testOrigin, l.PublicKey())
	require.NoError(t, err)
	require.Equal(t, uint64(0), cp0.Size)
	require.Equal(t, tlog.Hasher.EmptyRoot(), cp0.Root)

	checkpoints := []tlog.Checkpoint{cp0} // one per tree size reached
	var leaves [][]byte
	const total, reopenAt = 300, 150
	n, reopened := 0, false
	for batch := 1; n < total; batch = batch%7 + 1 {
		if n >= reopenAt && !reopened {
			// Reopen once: stop the appender, close the store, open both again.
			reopened = true
			require.NoError(t, l.stop())
			require.NoError(t, st.Close())
			st = openStore(t, path)
			l = startLog(t, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, KeyCreated: time.Now(), Origin: testOrigin})
			reopened, err := tlog.OpenCheckpoint(l.Checkpoint(), testOrigin, l.PublicKey())
			require.NoError(t, err)
			require.Equal(t, checkpoints[len(checkpoints)-1], reopened, "the reopened log continues from its latest checkpoint")
		}
		k := min(batch, total-n)
		var subs []Submission
		for range k {
			subs = append(subs, agent.submit(t, fmt.Sprintf("artifact-%d", n+len(subs))))
		}
		res, err := l.Submit(ctx, agentID, subs)
		require.NoError(t, err)
		var cp tlog.Checkpoint
		for i, r := range res {
			require.NoError(t, r.Refusal)
			require.Equal(t, int64(n+i), r.Entry.GetLogIndex(), "indexes follow submission order")
			cp = checkEntry(t, l.TransparencyLog, r.Entry, subs[i])
			require.Equal(t, uint64(n+k), cp.Size, "one batch, one checkpoint")
			leaves = append(leaves, tlog.LeafHash(r.Entry.GetCanonicalizedBody()))
		}
		n += k
		checkpoints = append(checkpoints, cp)

		// Every earlier checkpoint is consistent with this one, by a proof
		// made from stored nodes; so is every entry's stored proof.
		for _, old := range checkpoints {
			hashes, err := l.ConsistencyProof(ctx, old.Size, cp.Size)
			require.NoError(t, err)
			require.NoError(t, tlog.VerifyConsistency(old.Size, cp.Size, hashes, old.Root, cp.Root), "consistency %d -> %d", old.Size, cp.Size)
		}
	}
	require.Equal(t, total, len(leaves))

	// At the end, every entry proves from the store against the head.
	head, err := tlog.OpenCheckpoint(l.Checkpoint(), testOrigin, l.PublicKey())
	require.NoError(t, err)
	require.Equal(t, uint64(total), head.Size)
	for i := range total {
		nodes, err := buildProof(uint64(i), head.Size, func(ids []compact.NodeID) ([][]byte, error) { return st.Nodes(ctx, storeIDs(ids)) })
		require.NoError(t, err)
		require.NoError(t, tlog.VerifyInclusion(uint64(i), head.Size, leaves[i], nodes, head.Root), "entry %d", i)
	}
	// And consistency between any two sizes, not only checkpointed ones.
	for from := uint64(0); from <= total; from += 13 {
		for _, to := range []uint64{from, from + 1, total} {
			if to > total {
				continue
			}
			hashes, err := l.ConsistencyProof(ctx, from, to)
			require.NoError(t, err)
			require.NoError(t, tlog.VerifyConsistency(from, to, hashes, rootOfLeaves(leaves[:from]), rootOfLeaves(leaves[:to])))
		}
	}
	_, err = l.ConsistencyProof(ctx, 0, total+1)
	require.Error(t, err)
	require.NoError(t, l.stop())
	require.NoError(t, st.Close())
}

// rootOfLeaves computes a tree root independently of the log.
func rootOfLeaves(leaves [][]byte) []byte {
	if len(leaves) == 0 {
		return tlog.Hasher.EmptyRoot()
	}
	r := rangeFactory.NewEmptyRange(0)
	for _, l := range leaves {
		if err := r.Append(l, nil); err != nil {
			panic(err)
		}
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		panic(err)
	}
	return root
}

func TestLogReopenRefusesAnotherKeyOrOrigin(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hallmark.db")
	key := newLogKey(t)
	st := openStore(t, path)
	l := startLog(t, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, Origin: testOrigin})
	require.NoError(t, l.stop())
	defer st.Close()

	_, err := NewTransparencyLog(ctx, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: newLogKey(t), Origin: testOrigin})
	require.ErrorContains(t, err, "does not verify with this log key and origin")
	_, err = NewTransparencyLog(ctx, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, Origin: "hallmark.other.org"})
	require.ErrorContains(t, err, "does not verify with this log key and origin")
	_, err = NewTransparencyLog(ctx, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, Origin: testOrigin})
	require.NoError(t, err)

	for _, bad := range []string{"", "https://hallmark.example.org", "hallmark example.org", "hallmark+example.org", "a\nb", "hallmark/example.org", "Hallmark.example.org", ".example.org", "example.org."} {
		_, err := NewTransparencyLog(ctx, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, Origin: bad})
		require.Error(t, err, "origin %q", bad)
	}
}

func TestSubmitChecks(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "signing CA")
	inter := ca.intermediate(t, "issuing CA")
	unknownCA := newTestCA(t, "unknown CA")
	agent := newTestAgent(t, ca, agentID)

	// A self-signed leaf naming the agent.
	selfKey := newP256(t)
	selfTmpl := leafTemplate(agentID)
	selfSigned := createCert(t, selfTmpl, selfTmpl, selfKey.Public(), selfKey)

	// A certificate that expired before now.
	expiredTmpl := leafTemplate(agentID)
	expiredTmpl.NotBefore, expiredTmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(-time.Minute)
	expired := ca.issue(t, expiredTmpl, agent.key.Public())

	// A leaf without the code-signing usage.
	serverTmpl := leafTemplate(agentID)
	serverTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	noCodeSigning := ca.issue(t, serverTmpl, agent.key.Public())

	// An intermediate the server never recorded.
	viaInter := inter.issue(t, leafTemplate(agentID), agent.key.Public())

	l := newTestLog(t, ca, nil)

	good := agent.submit(t, "good")
	badSig := agent.sign(t, statement("bad signature"))
	badSig.Signatures[0].Sig[len(badSig.Signatures[0].Sig)-1] ^= 1
	twoSigs := agent.sign(t, statement("two"))
	twoSigs.Signatures = append(twoSigs.Signatures, twoSigs.Signatures[0])
	notStatement := agent.sign(t, []byte(`{"_type":"https://in-toto.io/Statement/v0.1","subject":[]}`))
	notJSON := agent.sign(t, []byte(`not json`))
	otherType := agent.sign(t, statement("x"))
	otherType.PayloadType = "text/plain"
	other := newTestAgent(t, ca, otherID)

	tests := []struct {
		name    string
		caller  spiffeid.ID
		sub     Submission
		wantErr string // refusal substring; empty: accepted
	}{
		{name: "valid", caller: agentID, sub: good},
		{name: "bad signature", caller: agentID, sub: submission(t, badSig, agent.cert), wantErr: "signature does not verify"},
		{name: "foreign SPIFFE ID", caller: otherID, sub: agent.submit(t, "foreign"), wantErr: "but the caller is " + otherID.String()},
		{name: "another agent's valid entry", caller: agentID, sub: other.submit(t, "other"), wantErr: "an agent logs only its own signatures"},
		{name: "unknown root", caller: agentID, sub: submission(t, agent.sign(t, statement("u")), unknownCA.issue(t, leafTemplate(agentID), agent.key.Public())), wantErr: "chains to no certificate authority"},
		{name: "self-signed", caller: agentID, sub: submission(t, selfKeySign(t, selfKey), selfSigned), wantErr: "chains to no certificate authority"},
		{name: "unrecorded intermediate", caller: agentID, sub: submission(t, agent.sign(t, statement("i")), viaInter), wantErr: "chains to no certificate authority"},
		{name: "expired at the trusted time", caller: agentID, sub: submission(t, agent.sign(t, statement("e")), expired), wantErr: "verify: validity"},
		{name: "not for code signing", caller: agentID, sub: submission(t, agent.sign(t, statement("c")), noCodeSigning), wantErr: "incompatible key usage"},
		{name: "CA certificate as the signer", caller: agentID, sub: Submission{Envelope: good.Envelope, Certificate: ca.cert.Raw}, wantErr: "is a CA certificate"},
		{name: "two signatures", caller: agentID, sub: submission(t, twoSigs, agent.cert), wantErr: "2 signatures"},
		{name: "other payload type", caller: agentID, sub: submission(t, otherType, agent.cert), wantErr: "payload type"},
		{name: "not a statement v1", caller: agentID, sub: submission(t, notStatement, agent.cert), wantErr: "_type"},
		{name: "not JSON", caller: agentID, sub: submission(t, notJSON, agent.cert), wantErr: "not an in-toto statement"},
		{name: "envelope garbage", caller: agentID, sub: Submission{Envelope: []byte("{"), Certificate: agent.cert.Raw}, wantErr: "envelope"},
		{name: "envelope unknown field", caller: agentID, sub: Submission{Envelope: []byte(`{"payload":"e30=","surprise":1}`), Certificate: agent.cert.Raw}, wantErr: "envelope"},
		{name: "no envelope", caller: agentID, sub: Submission{Certificate: agent.cert.Raw}, wantErr: "no envelope"},
		{name: "oversize envelope", caller: agentID, sub: Submission{Envelope: make([]byte, MaxEnvelopeSize+1), Certificate: agent.cert.Raw}, wantErr: "more than"},
		{name: "certificate garbage", caller: agentID, sub: Submission{Envelope: good.Envelope, Certificate: []byte("x")}, wantErr: "certificate"},
		{name: "no certificate", caller: agentID, sub: Submission{Envelope: good.Envelope}, wantErr: "no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := submitOne(t, l.TransparencyLog, tt.caller, tt.sub)
			if tt.wantErr == "" {
				require.NoError(t, r.Refusal)
				checkEntry(t, l.TransparencyLog, r.Entry, tt.sub)
				return
			}
			require.Nil(t, r.Entry)
			require.ErrorContains(t, r.Refusal, tt.wantErr)
		})
	}

	t.Run("duplicate returns the existing entry", func(t *testing.T) {
		first := submitOne(t, l.TransparencyLog, agentID, good)
		require.NoError(t, first.Refusal)
		// Another entry grows the tree in between.
		require.NoError(t, submitOne(t, l.TransparencyLog, agentID, agent.submit(t, "later")).Refusal)
		again := submitOne(t, l.TransparencyLog, agentID, good)
		require.NoError(t, again.Refusal)
		require.Equal(t, first.Entry.GetLogIndex(), again.Entry.GetLogIndex())
		require.Equal(t, first.Entry.GetCanonicalizedBody(), again.Entry.GetCanonicalizedBody())
		cp := checkEntry(t, l.TransparencyLog, again.Entry, good)
		require.Greater(t, cp.Size, uint64(first.Entry.GetInclusionProof().GetTreeSize()), "proved against the newer tree")

		// A logged entry and new ones in one call: the batch is retried
		// without the logged one.
		fresh1, fresh2 := agent.submit(t, "fresh 1"), agent.submit(t, "fresh 2")
		res, err := l.Submit(ctx, agentID, []Submission{fresh1, good, fresh2})
		require.NoError(t, err)
		require.Equal(t, first.Entry.GetLogIndex(), res[1].Entry.GetLogIndex())
		require.Equal(t, res[0].Entry.GetLogIndex()+1, res[2].Entry.GetLogIndex(), "no gap where the duplicate was")
		for i, sub := range []Submission{fresh1, good, fresh2} {
			checkEntry(t, l.TransparencyLog, res[i].Entry, sub)
		}

		// Twice in one call: one entry.
		dup := agent.submit(t, "twice")
		res, err = l.Submit(ctx, agentID, []Submission{dup, dup})
		require.NoError(t, err)
		require.Equal(t, res[0].Entry.GetLogIndex(), res[1].Entry.GetLogIndex())
		checkEntry(t, l.TransparencyLog, res[1].Entry, dup)
	})

	t.Run("results keep request order", func(t *testing.T) {
		subs := []Submission{agent.submit(t, "o1"), {Envelope: []byte("{")}, agent.submit(t, "o2")}
		res, err := l.Submit(ctx, agentID, subs)
		require.NoError(t, err)
		require.NoError(t, res[0].Refusal)
		require.Error(t, res[1].Refusal)
		require.NoError(t, res[2].Refusal)
		require.Equal(t, res[0].Entry.GetLogIndex()+1, res[2].Entry.GetLogIndex())
	})

	t.Run("metrics", func(t *testing.T) {
		head, err := tlog.OpenCheckpoint(l.Checkpoint(), testOrigin, l.PublicKey())
		require.NoError(t, err)
		appended := counterValue(t, l.metrics.appends.WithLabelValues(appendAppended))
		require.Equal(t, float64(head.Size), appended)
		require.Positive(t, counterValue(t, l.metrics.appends.WithLabelValues(appendDuplicate)))
		require.Positive(t, counterValue(t, l.metrics.appends.WithLabelValues(appendRefused)))
		var m dto.Metric
		require.NoError(t, l.metrics.size.Write(&m))
		require.Equal(t, float64(head.Size), m.GetGauge().GetValue())
	})
}

// selfKeySign signs a statement with a bare key.
func selfKeySign(t testing.TB, key *ecdsa.PrivateKey) *dssepb.Envelope {
	t.Helper()
	env, err := attest.SignEnvelope(statement("self"), key)
	require.NoError(t, err)
	return env
}

// TestSubmitChecksAtTrustedTime: the checks run at the entry's trusted
// time, and integrating it later changes nothing; an entry logged while
// its certificate was valid is still returned later; an entry timestamped
// when it was signed is admitted late, after its certificate expired
// (docs/log.md, "Time"), and only with a timestamp the trusted root
// vouches for.
func TestSubmitChecksAtTrustedTime(t *testing.T) {
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)

	var mu sync.Mutex
	next := time.Now
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return next() }
	set := func(f func() time.Time) { mu.Lock(); next = f; mu.Unlock() }
	l := newTestLog(t, ca, now)

	logged := agent.submit(t, "before expiry")
	first := submitOne(t, l.TransparencyLog, agentID, logged)
	require.NoError(t, first.Refusal)

	// The checks pass at one time (Submit reads the clock once: the
	// certificate's last valid second), the batch is integrated (the
	// appender reads it once more) a second after the certificate
	// expired: admitted, and it verifies at its timestamp.
	edge := agent.cert.NotAfter
	calls := 0
	set(func() time.Time {
		calls++
		if calls == 1 {
			return edge
		}
		return edge.Add(time.Second)
	})
	atEdge := agent.submit(t, "at the edge")
	r := submitOne(t, l.TransparencyLog, agentID, atEdge)
	require.NoError(t, r.Refusal)
	checkEntry(t, l.TransparencyLog, r.Entry, atEdge)
	stampTime, err := tsaTime(l.TransparencyLog, r.Timestamp, atEdge)
	require.NoError(t, err)
	require.True(t, stampTime.Equal(edge), "timestamped at the check, %s", stampTime)

	// After expiry, the logged entry is still found; a new one is refused.
	later := agent.cert.NotAfter.Add(time.Hour)
	set(func() time.Time { return later })
	again := submitOne(t, l.TransparencyLog, agentID, logged)
	require.NoError(t, again.Refusal)
	require.Equal(t, first.Entry.GetLogIndex(), again.Entry.GetLogIndex())
	checkEntry(t, l.TransparencyLog, again.Entry, logged)
	r = submitOne(t, l.TransparencyLog, agentID, agent.submit(t, "new after expiry"))
	require.ErrorContains(t, r.Refusal, "verify: validity")

	// Signed and timestamped while the certificate was valid, submitted
	// an hour after it expired: admitted, with its own timestamp.
	signedEarly := agent.submit(t, "signed during an outage")
	var env dssepb.Envelope
	require.NoError(t, protojson.Unmarshal(signedEarly.Envelope, &env))
	signedAt := agent.cert.NotAfter.Add(-time.Minute).Truncate(time.Second)
	signedEarly.Timestamp, err = l.tsa.Timestamp(env.GetSignatures()[0].GetSig(), signedAt)
	require.NoError(t, err)
	r = submitOne(t, l.TransparencyLog, agentID, signedEarly)
	require.NoError(t, r.Refusal)
	require.Equal(t, signedEarly.Timestamp, r.Timestamp, "the entry keeps its own timestamp")
	checkEntry(t, l.TransparencyLog, r.Entry, signedEarly)

	// A timestamp after the certificate expired, or by an authority the
	// trusted root does not list, does not help.
	lateStamp := agent.submit(t, "timestamped too late")
	require.NoError(t, protojson.Unmarshal(lateStamp.Envelope, &env))
	lateStamp.Timestamp, err = l.tsa.Timestamp(env.GetSignatures()[0].GetSig(), agent.cert.NotAfter.Add(time.Second))
	require.NoError(t, err)
	r = submitOne(t, l.TransparencyLog, agentID, lateStamp)
	require.ErrorContains(t, r.Refusal, "verify: validity")

	rogueKey := newP256(t)
	rogueChain, err := tsa.NewChain(rogueKey, "rogue TSA", signedAt.Add(-time.Hour))
	require.NoError(t, err)
	rogue, err := tsa.NewSigner(rogueKey, rogueChain)
	require.NoError(t, err)
	rogueStamp := agent.submit(t, "timestamped by a stranger")
	require.NoError(t, protojson.Unmarshal(rogueStamp.Envelope, &env))
	rogueStamp.Timestamp, err = rogue.Timestamp(env.GetSignatures()[0].GetSig(), signedAt)
	require.NoError(t, err)
	r = submitOne(t, l.TransparencyLog, agentID, rogueStamp)
	require.ErrorContains(t, r.Refusal, "verify: timestamp")
}

// tsaTime verifies a timestamp of sub's signature with the log's timestamp
// authority and returns its time.
func tsaTime(l *TransparencyLog, stamp []byte, sub Submission) (time.Time, error) {
	var env dssepb.Envelope
	if err := protojson.Unmarshal(sub.Envelope, &env); err != nil {
		return time.Time{}, err
	}
	chain := l.tsa.Chain()
	roots := x509.NewCertPool()
	roots.AddCert(chain[len(chain)-1])
	a, err := tsa.NewAuthority(chain[0], roots, x509.NewCertPool())
	if err != nil {
		return time.Time{}, err
	}
	return a.Verify(stamp, env.GetSignatures()[0].GetSig())
}

func TestSubmitConcurrent(t *testing.T) {
	ca := newTestCA(t, "signing CA")
	l := newTestLog(t, ca, nil)
	const submitters, each = 16, 12
	seen := submitConcurrently(t, ca, []runningLog{l}, submitters, each)
	require.Len(t, seen, submitters*each)
	for i := range int64(submitters * each) {
		require.True(t, seen[i], "index %d missing", i)
	}
}

// submitConcurrently has submitters agents each submit each entries at
// once, agent i through logs[i%len(logs)]; every answer must verify (as
// checkEntry does, with the first log's key) at an index no other answer
// has. It returns the indices seen.
func submitConcurrently(t *testing.T, ca *testCA, logs []runningLog, submitters, each int) map[int64]bool {
	t.Helper()
	ctx := context.Background()
	type got struct {
		sub Submission
		te  *rekorpb.TransparencyLogEntry
	}
	results := make(chan got, submitters*each)
	var wg sync.WaitGroup
	for i := range submitters {
		l := logs[i%len(logs)]
		wg.Go(func() {
			a := newTestAgent(t, ca, spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/hallmark/agent/r%d", i)))
			for j := range each {
				sub := a.submit(t, fmt.Sprintf("%d-%d", i, j))
				res, err := l.Submit(ctx, a.id, []Submission{sub})
				if err != nil || res[0].Refusal != nil {
					t.Errorf("submit: %v %v", err, res)
					return
				}
				results <- got{sub, res[0].Entry}
			}
		})
	}
	wg.Wait()
	close(results)
	seen := make(map[int64]bool)
	for g := range results {
		checkEntry(t, logs[0].TransparencyLog, g.te, g.sub)
		require.False(t, seen[g.te.GetLogIndex()], "index %d twice", g.te.GetLogIndex())
		seen[g.te.GetLogIndex()] = true
	}
	return seen
}

func TestSubmitWhenStopped(t *testing.T) {
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	l := newTestLog(t, ca, nil)
	require.NoError(t, l.stop())
	_, err := l.Submit(context.Background(), agentID, []Submission{agent.submit(t, "x")})
	require.True(t, errors.Is(err, errLogStopped), "got %v", err)
}

// TestLogsShareAStore runs two logs (two servers) on one database: each
// appends after the other's batches (store.ErrConflict, reload, retry),
// so every entry lands exactly once in one linear tree whose checkpoints
// are consistent, and a signing CA or a taint recorded through one is
// honoured by the other.
func TestLogsShareAStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hallmark.db")
	key, ts := newLogKey(t), newTestTSA(t)
	start := func() runningLog {
		st := openStore(t, path)
		t.Cleanup(func() { st.Close() })
		return startLog(t, TransparencyLogConfig{Store: st, TSA: ts, Key: key, KeyCreated: time.Now(), Origin: testOrigin})
	}
	a := start()
	b := start()
	// A CA recorded through a after b started is known to b when needed.
	ca := newTestCA(t, "signing CA")
	require.NoError(t, a.RecordSigningCA(ctx, []*x509.Certificate{ca.cert}))
	firstCheckpoint := a.Checkpoint()

	const submitters, each = 8, 10
	seen := submitConcurrently(t, ca, []runningLog{a, b}, submitters, each)
	require.Len(t, seen, submitters*each)
	conflicts := counterValue(t, a.metrics.conflicts) + counterValue(t, b.metrics.conflicts)
	require.Positive(t, conflicts, "the two appenders did contend")
	t.Logf("%d batches retried after the other server's append", int(conflicts))

	// One linear log: the first checkpoint is consistent with the last
	// (the store's: either server may have appended last).
	latest, err := b.store.LatestCheckpoint(ctx)
	require.NoError(t, err)
	last := latest.Note
	c1, err := tlog.OpenCheckpoint(firstCheckpoint, testOrigin, key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	_, err = tlog.OpenCheckpoint(a.Checkpoint(), testOrigin, key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	c2, err := tlog.OpenCheckpoint(last, testOrigin, key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	require.Equal(t, uint64(submitters*each), c2.Size-c1.Size)
	hashes, err := b.ConsistencyProof(ctx, c1.Size, c2.Size)
	require.NoError(t, err)
	require.NoError(t, tlog.VerifyConsistency(c1.Size, c2.Size, hashes, c1.Root, c2.Root))

	// A resubmission through the other server answers with the entry.
	ag := newTestAgent(t, ca, spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/dup"))
	sub := ag.submit(t, "dup")
	ra, err := a.Submit(ctx, ag.id, []Submission{sub})
	require.NoError(t, err)
	rb, err := b.Submit(ctx, ag.id, []Submission{sub})
	require.NoError(t, err)
	require.Equal(t, ra[0].Entry.GetLogIndex(), rb[0].Entry.GetLogIndex())
	require.Equal(t, ra[0].Timestamp, rb[0].Timestamp)

	// A taint recorded through one server reaches the other's watchers
	// (its agents' streams) within the refresh period, without a call.
	_, _, changed := b.issuers.tainted()
	fp := fingerprintOf(ca.cert)
	require.NoError(t, a.SetIssuerState(ctx, store.IssuerState{Fingerprint: fp[:], TaintedAt: time.Now().UTC().Truncate(time.Second)}))
	select {
	case <-changed:
	case <-time.After(2 * issuerRefresh):
		t.Fatal("the other server did not see the taint")
	}
	set, _, _ := b.issuers.tainted()
	require.Equal(t, [][]byte{fp[:]}, set)
}

// countingStore counts reads of the signing CAs.
type countingStore struct {
	Store
	reads atomic.Int64
}

func (c *countingStore) SigningCAs(ctx context.Context) ([]store.SigningCA, error) {
	c.reads.Add(1)
	return c.Store.SigningCAs(ctx)
}

// A burst of submissions under a CA that another server recorded is
// accepted, and costs one re-read of the store, not one per submission.
func TestReloadsAreShared(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hallmark.db")
	key, ts := newLogKey(t), newTestTSA(t)
	other := openStore(t, path)
	t.Cleanup(func() { other.Close() })
	a := startLog(t, TransparencyLogConfig{Store: other, TSA: ts, Key: key, KeyCreated: time.Now(), Origin: testOrigin})
	st := &countingStore{Store: openStore(t, path)}
	t.Cleanup(func() { st.Close() })
	b := startLog(t, TransparencyLogConfig{Store: st, TSA: ts, Key: key, KeyCreated: time.Now(), Origin: testOrigin})
	ca := newTestCA(t, "signing CA")
	require.NoError(t, a.RecordSigningCA(ctx, []*x509.Certificate{ca.cert}))
	before := st.reads.Load()

	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ag := newTestAgent(t, ca, spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/hallmark/agent/b%d", i)))
			res, err := b.Submit(ctx, ag.id, []Submission{ag.submit(t, "burst")})
			if err != nil || res[0].Refusal != nil {
				t.Errorf("submit: %v %v", err, res)
			}
		})
	}
	wg.Wait()
	reads := st.reads.Load() - before
	t.Logf("%d submissions, %d re-reads of the signing CAs", n, reads)
	require.Less(t, reads, int64(n))
}

// A log written before hashedrekord (one legacy dsse entry) continues with
// hashedrekord entries: the legacy entry is served with its kind under the
// new log ID, and submitting its envelope again returns it instead of
// logging it a second time (the dedupe key is the legacy leaf hash).
func TestContinueLegacyLog(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	st := openStore(t, filepath.Join(t.TempDir(), "hallmark.db"))
	t.Cleanup(func() { st.Close() })
	key := newLogKey(t)

	// The old log: one dsse entry at index 0, as the previous release
	// appended it (leaf hash and dedupe key both of the legacy body).
	old := agent.submit(t, "logged before the upgrade")
	var env dssepb.Envelope
	require.NoError(t, protojson.Unmarshal(old.Envelope, &env))
	legacy, err := tlog.NewLegacyBody(&env, old.Certificate)
	require.NoError(t, err)
	leaf := tlog.LeafHash(legacy)
	note, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: testOrigin, Size: 0, Root: tlog.Hasher.EmptyRoot()}, key)
	require.NoError(t, err)
	require.NoError(t, st.AppendBatch(ctx, store.Batch{Checkpoint: store.Checkpoint{Size: 0, Note: note}}))
	note, err = tlog.SignCheckpoint(tlog.Checkpoint{Origin: testOrigin, Size: 1, Root: leaf}, key)
	require.NoError(t, err)
	require.NoError(t, st.AppendBatch(ctx, store.Batch{
		Entries: []store.Entry{{Index: 0, LeafHash: leaf, DedupeKey: leaf, Body: legacy, Envelope: old.Envelope,
			Certificate: old.Certificate, SPIFFEID: agentID.String(), IntegratedTime: time.Now().Unix(), Timestamp: []byte("old timestamp")}},
		Nodes:      []store.Node{{NodeID: store.NodeID{Level: 0, Index: 0}, Hash: leaf}},
		Checkpoint: store.Checkpoint{Size: 1, Note: note},
	}))

	l := startLog(t, TransparencyLogConfig{Store: st, TSA: newTestTSA(t), Key: key, KeyCreated: time.Now().Add(-time.Hour), Origin: testOrigin})
	require.NoError(t, l.RecordSigningCA(ctx, []*x509.Certificate{ca.cert}))

	again := submitOne(t, l.TransparencyLog, agentID, old)
	require.NoError(t, again.Refusal)
	require.Equal(t, int64(0), again.Entry.GetLogIndex(), "the entry logged before, not a new one")
	require.Equal(t, tlog.LegacyEntryKind, again.Entry.GetKindVersion().GetKind())
	require.Equal(t, legacy, again.Entry.GetCanonicalizedBody())
	require.Equal(t, tlog.KeyID(testOrigin, l.PublicKey()), again.Entry.GetLogId().GetKeyId())
	require.Equal(t, []byte("old timestamp"), again.Timestamp)

	after := agent.submit(t, "logged after the upgrade")
	next := submitOne(t, l.TransparencyLog, agentID, after)
	require.NoError(t, next.Refusal)
	require.Equal(t, int64(1), next.Entry.GetLogIndex())
	cp := checkEntry(t, l.TransparencyLog, next.Entry, after)
	require.Equal(t, uint64(2), cp.Size)
	// The old tree is a prefix of the new one.
	hashes, err := l.ConsistencyProof(ctx, 1, 2)
	require.NoError(t, err)
	require.NoError(t, tlog.VerifyConsistency(1, 2, hashes, leaf, cp.Root))
}

// The log and verifiers draw the rotation lines in one place (package
// attest/trust): for an issuer revoked from R, a signature timestamped a
// second before R is admitted and inside the exported CA's validFor, one
// timestamped at R is refused and outside it; for an issuer tainted at T,
// the line is T + trust.TaintGrace.
func TestRotationBoundariesAreOneRule(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		state func(fp []byte, at time.Time) store.IssuerState
		line  func(at time.Time) time.Time
	}{
		{"revoked", func(fp []byte, at time.Time) store.IssuerState {
			return store.IssuerState{Fingerprint: fp, TaintedAt: at, RevokedAt: at}
		},
			func(at time.Time) time.Time { return at }},
		{"tainted", func(fp []byte, at time.Time) store.IssuerState {
			return store.IssuerState{Fingerprint: fp, TaintedAt: at}
		},
			func(at time.Time) time.Time { return at.Add(trust.TaintGrace) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t, "signing CA")
			agent := newTestAgent(t, ca, agentID)
			l := newTestLog(t, ca, nil)
			at := time.Now().Add(time.Minute).Truncate(time.Second) // within the agent certificate's validity, line included
			fp := fingerprintOf(ca.cert)
			require.NoError(t, l.SetIssuerState(ctx, tc.state(fp[:], at)))
			line := tc.line(at)

			rootJSON, err := l.TrustedRootJSON(ctx)
			require.NoError(t, err)
			st, err := trust.ParseTrustedRoot(rootJSON)
			require.NoError(t, err)
			require.True(t, st.CAs[0].ValidFor.Contains(line.Add(-time.Second)), "exported: trusted a second before the line")
			require.False(t, st.CAs[0].ValidFor.Contains(line), "exported: not trusted at the line")

			stamped := func(name string, when time.Time) Submission {
				sub := agent.submit(t, name)
				var env dssepb.Envelope
				require.NoError(t, protojson.Unmarshal(sub.Envelope, &env))
				sub.Timestamp, err = l.tsa.Timestamp(env.GetSignatures()[0].GetSig(), when)
				require.NoError(t, err)
				return sub
			}
			before := submitOne(t, l.TransparencyLog, agentID, stamped("before the line", line.Add(-time.Second)))
			require.NoError(t, before.Refusal, "admitted a second before the line")
			atLine := submitOne(t, l.TransparencyLog, agentID, stamped("at the line", line))
			require.Error(t, atLine.Refusal, "refused at the line")
			require.ErrorContains(t, atLine.Refusal, "verify: chain")
			require.ErrorContains(t, atLine.Refusal, "the signing CA")
		})
	}
}

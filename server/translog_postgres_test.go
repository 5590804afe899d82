package server

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/plugins/store"
	"github.com/hallmark-dev/hallmark/plugins/store/postgres"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// The log on the postgres store: concurrent submissions each get an
// inclusion proof that verifies against a signed checkpoint (every proof
// node read back from PostgreSQL), and another server opening the same
// database continues the same log.
func TestLogOnPostgres(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewSchema(t)
	open := func() *postgres.Store {
		st, err := postgres.Open(ctx, postgres.Config{DSN: dsn})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		return st
	}
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	key := newLogKey(t)
	cfg := TransparencyLogConfig{Store: open(), TSA: newTestTSA(t), Key: key, KeyCreated: time.Now(), Origin: testOrigin}
	l := startLog(t, cfg)
	require.NoError(t, l.RecordSigningCA(ctx, []*x509.Certificate{ca.cert}))

	const n = 40
	subs := make([]Submission, n)
	for i := range subs {
		subs[i] = agent.submit(t, fmt.Sprintf("artifact-%d", i))
	}
	results := make([]SubmitResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range subs {
		wg.Go(func() {
			res, err := l.Submit(ctx, agentID, subs[i:i+1])
			if err == nil {
				results[i] = res[0]
			}
			errs[i] = err
		})
	}
	wg.Wait()
	seen := make(map[int64]bool)
	for i, res := range results {
		require.NoError(t, errs[i])
		require.NoError(t, res.Refusal)
		checkEntry(t, l.TransparencyLog, res.Entry, subs[i])
		require.False(t, seen[res.Entry.GetLogIndex()])
		seen[res.Entry.GetLogIndex()] = true
	}
	require.NoError(t, l.stop())

	cfg.Store = open()
	l2 := startLog(t, cfg)
	cp, err := tlog.OpenCheckpoint(l2.Checkpoint(), testOrigin, l2.PublicKey())
	require.NoError(t, err)
	require.Equal(t, uint64(n), cp.Size)
	again := submitOne(t, l2.TransparencyLog, agentID, subs[7]) // logged already: the same entry
	require.Equal(t, results[7].Entry.GetLogIndex(), again.Entry.GetLogIndex())
	next := agent.submit(t, "artifact-next")
	res := submitOne(t, l2.TransparencyLog, agentID, next)
	require.Equal(t, int64(n), res.Entry.GetLogIndex())
	checkEntry(t, l2.TransparencyLog, res.Entry, next)
}

// previousStore is the store as the binary before schema version 4 used
// it: that binary had no signing-CA rotation, so it never read or wrote
// issuer states (the table did not exist).
type previousStore struct{ *postgres.Store }

func (previousStore) IssuerStates(context.Context) ([]store.IssuerState, error) { return nil, nil }
func (previousStore) SetIssuerState(context.Context, store.IssuerState) error {
	return errors.New("no issuer_states table before schema version 4")
}

// Issue #7: a database written by the previous schema version upgrades in
// place, and everything in it still verifies: bundles logged under
// version 3 verify against the trusted root the upgraded server serves,
// and the upgraded log continues the same tree (a consistency proof from
// the old checkpoint verifies).
func TestPostgresUpgradeKeepsTheLogVerifiable(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewSchema(t)
	previous := len(postgres.Migrations()) - 1
	old, err := postgres.Open(ctx, postgres.Config{DSN: dsn, SchemaVersion: previous})
	require.NoError(t, err)
	key, ts := newLogKey(t), newTestTSA(t)
	ca := newTestCA(t, "signing CA")
	cfg := TransparencyLogConfig{Store: previousStore{old}, TSA: ts, Key: key, KeyCreated: time.Now().Add(-time.Minute), Origin: testOrigin}
	l := startLog(t, cfg)
	require.NoError(t, l.RecordSigningCA(ctx, []*x509.Certificate{ca.cert}))
	type logged struct {
		bundle  []byte
		product []byte
	}
	sign := func(l runningLog, i int) logged {
		key := newP256(t)
		leaf := ca.issue(t, leafTemplate(agentID), key.Public())
		product := fmt.Appendf(nil, "product %d", i)
		b, env := signStep(t, key, leaf, product, time.Now())
		res, err := l.Submit(ctx, agentID, []Submission{{Envelope: env, Certificate: leaf.Raw}})
		require.NoError(t, err)
		require.NoError(t, res[0].Refusal)
		return logged{completeBundle(t, b, res[0].Entry, res[0].Timestamp), product}
	}
	var before []logged
	for i := range 5 {
		before = append(before, sign(l, i))
	}
	oldHead := l.Checkpoint()
	require.NoError(t, l.stop())
	require.NoError(t, old.Close())

	// The new binary opens the same database: it migrates it in place.
	upgraded, err := postgres.Open(ctx, postgres.Config{DSN: dsn})
	require.NoError(t, err)
	t.Cleanup(func() { upgraded.Close() })
	cfg.Store = upgraded
	l2 := startLog(t, cfg)
	after := sign(l2, 99)

	trJSON, err := l2.TrustedRootJSON(ctx)
	require.NoError(t, err)
	tr, err := verify.ParseTrustedRoot(trJSON)
	require.NoError(t, err)
	for _, b := range append(before, after) {
		_, err := verify.Verify(b.bundle, []verify.Digest{verify.DigestBytes("app", b.product)}, verify.Options{TrustedRoot: tr})
		require.NoError(t, err)
	}
	c1, err := tlog.OpenCheckpoint(oldHead, testOrigin, key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	c2, err := tlog.OpenCheckpoint(l2.Checkpoint(), testOrigin, key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	require.Equal(t, c1.Size+1, c2.Size)
	hashes, err := l2.ConsistencyProof(ctx, c1.Size, c2.Size)
	require.NoError(t, err)
	require.NoError(t, tlog.VerifyConsistency(c1.Size, c2.Size, hashes, c1.Root, c2.Root))
}

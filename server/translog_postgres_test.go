package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/tlog"
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

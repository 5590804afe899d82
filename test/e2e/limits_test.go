package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/internal/limits"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// pgServer starts a hallmark-server of its own on a private PostgreSQL
// (which tests stop to take the log down while the server answers) and
// an agent of its own following the test policy, with agentExtra in its
// agent block.
func pgServer(t *testing.T, name string, o harness.ServerOptions, agentExtra ...string) (*pgtest.Server, *harness.Service, *harness.Service) {
	t.Helper()
	ctx := context.Background()
	pg, err := pgtest.Start(ctx, pgtest.Options{})
	require.NoError(t, err)
	t.Cleanup(pg.Stop)
	dsn, err := pg.CreateDatabase(ctx, "hallmark")
	require.NoError(t, err)
	o.Store = fmt.Sprintf("store \"postgres\" {\n  dsn = %q\n}\n", dsn)
	srv := startServer(t, "hallmark-server-"+name, o)
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-"+name, harness.AgentOptions{
		ServerAddr: srv.ServerAddr(), ServerID: harness.ServerID.String(), Policy: testPolicy(stack.Dir),
		Extra: strings.Join(agentExtra, "\n"),
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	return pg, srv, ag
}

// productTree makes, in ws/name, n empty files under long directory names,
// so that an attestation of it weighs about n*(1.3 KB) of bundle: its
// subjects name every file.
func productTree(t *testing.T, ws, name string, n int) {
	t.Helper()
	dir := filepath.Join(ws, name)
	for i := range 4 {
		dir = filepath.Join(dir, fmt.Sprintf("%d-%s", i, strings.Repeat("long-directory-name-", 12)))
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for i := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("file-%06d", i)))
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
}

// Must show, issue #14:
//   - a 36 MB attestation is refused at attest time, naming the limit,
//     and nothing is queued; the attestations after it are logged;
//   - four attestations of about 12 MB each, made while the log is down
//     (its PostgreSQL stopped), are all logged after it, exactly once, and
//     verify;
//   - an entry the log refuses for good is shown, with its reason, by
//     `hallmark status` and the metrics, while the entries behind it land.
func TestLogLimitsAndRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg, srv, ag := pgServer(t, "limits", harness.ServerOptions{CertificateTTL: 10 * time.Minute})
	client := localClient(t, ag.Socket)
	ws := workspace(t, map[string]string{"small": "a product"})

	// 1. 36 MB: refused before signing, by the agent, naming the limit.
	productTree(t, ws, "huge", 25_000)
	_, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"huge"}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), fmt.Sprintf("more than the log takes: limits.MaxSignedBundleBytes is %d", limits.MaxSignedBundleBytes))
	var size int
	_, err = fmt.Sscanf(status.Convert(err).Message(), "the attestation would be a bundle of %d bytes", &size)
	require.NoError(t, err)
	t.Logf("refused at attest time: a bundle of %d bytes (%.1f MB)", size, float64(size)/1e6)
	require.Greater(t, size, 34_000_000)
	require.Equal(t, 0.0, gauge(t, ag, "hallmark_agent_outbox_queued"), "nothing queued")
	require.Equal(t, 1.0, counter(t, ag, `hallmark_agent_attestation_denials_total{reason="limits"}`))
	// The CLI says so too.
	out, err := exec.Command(stack.Bins.CLI, "attest", "--socket", ag.Socket, "--step", "build", "--workspace", ws, "--product", "huge").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "limits.MaxSignedBundleBytes")
	// The queue moves on.
	small, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"small"}})
	require.NoError(t, err)
	waitLogged(t, client, []string{small.GetInvocationId()}, time.Minute)

	// 2. Four of about 12 MB while the log is down: signed (the server
	// still timestamps), queued, and logged once it is back.
	require.NoError(t, pg.Down())
	var ids []string
	for i := range 4 {
		name := fmt.Sprintf("large-%d", i)
		productTree(t, ws, name, 8_200)
		resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{name}})
		require.NoError(t, err, "attestation %d while the log is down", i)
		require.Greater(t, len(resp.GetBundle()), 11_000_000)
		require.Less(t, len(resp.GetBundle()), limits.MaxSignedBundleBytes)
		ids = append(ids, resp.GetInvocationId())
	}
	require.Equal(t, 4.0, gauge(t, ag, "hallmark_agent_outbox_queued"))
	time.Sleep(3 * time.Second) // the submitter fails against the down log meanwhile
	require.Equal(t, 4.0, gauge(t, ag, "hallmark_agent_outbox_queued"))
	require.NoError(t, pg.Up(ctx))
	waitFor(t, "the four large envelopes to be logged", 3*time.Minute, func() error {
		if q := gauge(t, ag, "hallmark_agent_outbox_queued"); q != 0 {
			return fmt.Errorf("%v queued", q)
		}
		return nil
	})
	requireLoggedOnce(t, client, ids)
	require.Equal(t, uint64(5), logSize(t, srv))
	trJSON, err := srv.Get(ctx, "/trust/trusted_root.json")
	require.NoError(t, err)
	tr, err := verify.ParseTrustedRoot(trJSON)
	require.NoError(t, err)
	for i, id := range ids {
		resp, err := client.GetBundle(ctx, &agentv1.GetBundleRequest{InvocationId: id})
		require.NoError(t, err)
		require.LessOrEqual(t, len(resp.GetBundle()), limits.MaxBundleBytes, "a logged bundle fits what verifiers read")
		// Every product file is empty: any of them is a subject.
		_, err = verify.Verify(resp.GetBundle(), []verify.Digest{verify.DigestBytes("file-000000", nil)}, verify.Options{TrustedRoot: tr})
		require.NoError(t, err, "large attestation %d verifies", i)
	}
	require.Zero(t, counter(t, ag, `hallmark_agent_log_submissions_total{result="denied"}`))
	require.NotContains(t, ag.Log(), "sending it again in smaller calls",
		"calls sized by bytes from the start: none refused by the server as a whole and split")

	// 3. An entry the log refuses for good (its signature damaged), queued
	// ahead of new attestations: settled as refused, shown, and the ones
	// behind it are logged.
	require.NoError(t, ag.Stop())
	ob, err := outbox.Open(filepath.Join(ag.Dir, "data", "outbox"), outbox.Options{})
	require.NoError(t, err)
	good, ok, err := ob.Get(small.GetInvocationId())
	require.NoError(t, err)
	require.True(t, ok)
	b, err := attest.ParseBundle(small.GetBundle())
	require.NoError(t, err)
	b.GetDsseEnvelope().GetSignatures()[0].GetSig()[10] ^= 0xff
	bad, err := attest.MarshalBundle(b)
	require.NoError(t, err)
	require.NoError(t, ob.Put(outbox.Item{ID: "refused-by-the-log", Bundle: bad, Certificate: good.Certificate}))
	require.NoError(t, ob.Close())
	require.NoError(t, ag.Start(ctx))
	client = localClient(t, ag.Socket)
	var later []string
	for i := range 5 {
		resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"small"}, Command: []string{"after", fmt.Sprint(i)}})
		require.NoError(t, err)
		later = append(later, resp.GetInvocationId())
	}
	waitLogged(t, client, later, time.Minute)
	st := agentStatus(t, ag)
	require.NotNil(t, st.Outbox)
	require.Equal(t, 1, st.Outbox.Refused)
	require.Equal(t, "refused-by-the-log", st.Outbox.RecentRefusals[0].InvocationID)
	require.Contains(t, st.Outbox.RecentRefusals[0].Reason, "signature")
	t.Logf("refused for good: %s", st.Outbox.RecentRefusals[0].Reason)
	require.Equal(t, 1.0, gauge(t, ag, "hallmark_agent_outbox_refused"))
	require.Equal(t, 1.0, counter(t, ag, `hallmark_agent_log_submissions_total{result="denied"}`))
	out, err = exec.Command(stack.Bins.CLI, "status", "--agent-health-addr", ag.HealthAddr).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "0 queued for the log, 1 refused by it")
	require.Contains(t, string(out), "REFUSED refused-by-the-log at ")
	require.Contains(t, ag.Log(), "The log refused an attestation; it will not be retried")
	_, err = client.GetBundle(ctx, &agentv1.GetBundleRequest{InvocationId: "refused-by-the-log"})
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.Equal(t, uint64(10), logSize(t, srv))
}

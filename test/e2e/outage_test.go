package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

// Timings of the outage test.
const (
	outageCertTTL  = time.Minute
	outageLogDown  = 3 * time.Minute // the log's PostgreSQL stopped
	outageAllDown  = 75 * time.Second
	outageInterval = 500 * time.Millisecond // one attestation per interval
)

// attempt is one attestation a step asked for, and what it was told.
type attempt struct {
	at      time.Time
	product string
	content []byte
	id      string
	bundle  []byte
	err     error
}

// Must show, issue #14: with a 1-minute signing certificate, the log down
// for 3 minutes (its PostgreSQL stopped; the server up) and then the whole
// server down for longer than the certificate's lifetime, under steady
// attestation: every attestation the agent answered with success is
// logged afterwards, exactly once, and verifies with `hallmark verify` and
// with sigstore-go, most of them signed with certificates that expired
// before the log came back; everything else was refused at attest time,
// only while the server was down, and left nothing in the log.
func TestOutageLongerThanTheCertificate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg, srv, ag := pgServer(t, "late", harness.ServerOptions{CertificateTTL: outageCertTTL})
	client := localClient(t, ag.Socket)
	ws := workspace(t, nil)

	var (
		mu       sync.Mutex
		attempts []attempt
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(outageInterval)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			a := attempt{at: time.Now(), product: fmt.Sprintf("out-%05d", n), content: fmt.Appendf(nil, "product %d at %s", n, time.Now())}
			if a.err = os.WriteFile(filepath.Join(ws, a.product), a.content, 0o644); a.err == nil {
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				resp, err := client.AttestStep(cctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{a.product}})
				cancel()
				a.err, a.id, a.bundle = err, resp.GetInvocationId(), resp.GetBundle()
			}
			mu.Lock()
			attempts = append(attempts, a)
			mu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-done:
		default:
			close(stop)
			<-done
		}
	}()

	time.Sleep(15 * time.Second)
	require.NoError(t, pg.Down())
	logDownAt := time.Now()
	time.Sleep(outageLogDown)
	require.NoError(t, pg.Up(ctx))
	logUpAt := time.Now()
	time.Sleep(10 * time.Second)
	require.NoError(t, srv.Stop())
	allDownAt := time.Now()
	time.Sleep(outageAllDown)
	require.NoError(t, srv.Start(ctx))
	allUpAt := time.Now()
	time.Sleep(45 * time.Second) // past the grace below, so that attestations after it are seen to succeed
	close(stop)
	<-done
	t.Logf("log down %s .. %s, server down %s .. %s", logDownAt.Format(time.TimeOnly), logUpAt.Format(time.TimeOnly),
		allDownAt.Format(time.TimeOnly), allUpAt.Format(time.TimeOnly))

	waitFor(t, "the outbox to drain", 3*time.Minute, func() error {
		if q := gauge(t, ag, "hallmark_agent_outbox_queued"); q != 0 {
			return fmt.Errorf("%v queued", q)
		}
		return nil
	})

	// What the steps were told.
	var ok []attempt
	refused, refusedDuringLogOutage, lateAfterExpiry := 0, 0, 0
	// The agent reconnects and renews after the server's return: after
	// an outage this long its retry delay has reached its bound (30 s,
	// drawn from [15 s, 30 s]: agent.go, backoffMax), plus the call.
	grace := 35 * time.Second
	for _, a := range attempts {
		if a.err != nil {
			refused++
			require.Equal(t, codes.Unavailable, status.Code(a.err), "refused at %s: %v", a.at.Format(time.TimeOnly), a.err)
			require.True(t, !a.at.Before(allDownAt.Add(-time.Second)) && a.at.Before(allUpAt.Add(grace)),
				"refused at %s, outside the server's outage: %v", a.at.Format(time.TimeOnly), a.err)
			if a.at.After(logDownAt) && a.at.Before(logUpAt) {
				refusedDuringLogOutage++
			}
			continue
		}
		ok = append(ok, a)
	}
	require.Zero(t, refusedDuringLogOutage)
	require.Greater(t, refused, 0, "attestations are refused while no server can timestamp them")

	// Every success is logged once, and nothing else is.
	ids := make([]string, len(ok))
	for i, a := range ok {
		ids[i] = a.id
	}
	requireLoggedOnce(t, client, ids)
	require.Equal(t, uint64(len(ok)), logSize(t, srv), "the log holds exactly the attestations the steps were told about")

	// Every one verifies, with Hallmark's verifier, `hallmark verify` and
	// sigstore-go, against the trusted root the server exports.
	trJSON, err := srv.Get(ctx, "/trust/trusted_root.json")
	require.NoError(t, err)
	tr, err := verify.ParseTrustedRoot(trJSON)
	require.NoError(t, err)
	dir := t.TempDir()
	rootPath := filepath.Join(dir, "trusted_root.json")
	require.NoError(t, os.WriteFile(rootPath, trJSON, 0o644))
	for i, a := range ok {
		resp, err := client.GetBundle(ctx, &agentv1.GetBundleRequest{InvocationId: a.id})
		require.NoError(t, err)
		require.True(t, resp.GetLogged())
		res, err := verify.Verify(resp.GetBundle(), []verify.Digest{verify.DigestBytes(a.product, a.content)}, verify.Options{TrustedRoot: tr})
		require.NoError(t, err, "attestation at %s", a.at.Format(time.TimeOnly))
		sum := sha256.Sum256(a.content)
		_, err = sigstorego.Verify(resp.GetBundle(), trJSON, sum[:], harness.AgentID.String())
		require.NoError(t, err, "sigstore-go, attestation at %s", a.at.Format(time.TimeOnly))

		product, bundle := filepath.Join(dir, a.product), filepath.Join(dir, a.product+".hallmark.json")
		require.NoError(t, os.WriteFile(product, a.content, 0o644))
		require.NoError(t, os.WriteFile(bundle, resp.GetBundle(), 0o644))
		out, err := exec.Command(stack.Bins.CLI, "verify", product, "--bundle", bundle, "--trusted-root", rootPath, "--builder-id-prefix", harness.AgentID.String()).CombinedOutput()
		require.NoError(t, err, "hallmark verify, attestation at %s: %s", a.at.Format(time.TimeOnly), out)
		os.Remove(product)
		os.Remove(bundle)

		b, err := attest.ParseBundle(resp.GetBundle())
		require.NoError(t, err)
		cert, err := x509.ParseCertificate(b.GetVerificationMaterial().GetCertificate().GetRawBytes())
		require.NoError(t, err)
		require.WithinDuration(t, a.at, res.SignedAt, 20*time.Second, "%d: timestamped when signed", i)
		if cert.NotAfter.Before(logUpAt) && a.at.After(logDownAt) {
			lateAfterExpiry++ // signed in the outage, its certificate gone before the log was back
		}
	}
	t.Logf("%d attestations asked for: %d succeeded, all logged and verified (%d of them logged after their certificate expired); %d refused at attest time, all while the server was down",
		len(attempts), len(ok), lateAfterExpiry, refused)
	require.Greater(t, lateAfterExpiry, 100, "entries logged after their certificates expired")
}

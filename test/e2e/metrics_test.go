package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// metric reads one sample from a Prometheus text exposition: series is the
// metric name with its labels exactly as exposed, e.g.
// `hallmark_agent_attestations_total{result="attested"}`.
// metric reads one sample of a Prometheus exposition.
func metric(body []byte, series string) (float64, bool) {
	for line := range strings.SplitSeq(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// gauge is a series that must be exposed.
func gauge(t *testing.T, s *harness.Service, series string) float64 {
	t.Helper()
	v, ok := metric(scrape(t, s), series)
	require.True(t, ok, "%s not exposed", series)
	return v
}

// counter is a series that counts from 0 (absent until first counted).
func counter(t *testing.T, s *harness.Service, series string) float64 {
	t.Helper()
	v, _ := metric(scrape(t, s), series)
	return v
}

func scrape(t *testing.T, s *harness.Service) []byte {
	t.Helper()
	body, err := s.Get(context.Background(), "/metrics")
	require.NoError(t, err)
	return body
}

// Must show: the agent counts exactly the attestations, refusals and log
// submissions it made, and the server's log and certificate metrics follow.
func TestMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// An agent of its own, so that parallel tests do not move its counters.
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-metrics", harness.AgentOptions{
		ServerAddr: stack.Server.ServerAddr(), ServerID: harness.ServerID.String(), Policy: testPolicy(stack.Dir),
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })

	const attested, denied = 3, 2
	client := localClient(t, ag.Socket)
	for i := range attested {
		ws := workspace(t, map[string]string{"out": fmt.Sprintf("product %d %d", i, time.Now().UnixNano())})
		resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}})
		require.NoError(t, err)
		if !resp.GetLogged() { // like --wait-log
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			got, err := client.GetBundle(wctx, &agentv1.GetBundleRequest{InvocationId: resp.GetInvocationId(), Wait: true})
			cancel()
			require.NoError(t, err)
			require.True(t, got.GetLogged(), "invocation %s logged", resp.GetInvocationId())
		}
	}
	for range denied {
		ws := workspace(t, map[string]string{"out": "product"})
		_, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "deploy", Workspace: ws, Products: []string{"out"}})
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	}

	// Counters are bumped right after the answers; allow that moment.
	want := map[string]float64{
		`hallmark_agent_attestations_total{result="attested"}`:      attested,
		`hallmark_agent_attestations_total{result="denied"}`:        denied,
		`hallmark_agent_attestation_seconds_count`:                  attested,
		`hallmark_agent_log_submissions_total{result="logged"}`:     attested,
		`hallmark_agent_outbox_queued`:                              0,
		`hallmark_agent_attestation_denials_total{reason="policy"}`: denied,
		`hallmark_agent_attested_steps_total{step="build"}`:         attested,
	}
	waitFor(t, "the agent's metrics", 15*time.Second, func() error {
		body := scrape(t, ag)
		for series, v := range want {
			if got, ok := metric(body, series); !ok || got != v {
				return fmt.Errorf("%s = %v (present %v), want %v", series, got, ok, v)
			}
		}
		return nil
	})
	body := scrape(t, ag)
	renewals, ok := metric(body, `hallmark_agent_signing_certificate_renewals_total{result="success"}`)
	require.True(t, ok, "renewals metric present")
	require.GreaterOrEqual(t, renewals, 1.0, "the agent obtained its first certificate")
	errored, _ := metric(body, `hallmark_agent_attestations_total{result="error"}`) // absent until one errs
	require.Zero(t, errored, "no attestation errored")

	// The server: the log holds at least these entries (the shared agent
	// logs others too), and it has certified signing keys.
	waitFor(t, "the server's log size", 15*time.Second, func() error {
		if size, ok := metric(scrape(t, stack.Server), "hallmark_server_log_size"); !ok || size < attested {
			return fmt.Errorf("hallmark_server_log_size = %v (present %v), want >= %d", size, ok, attested)
		}
		return nil
	})
	issued, ok := metric(scrape(t, stack.Server), `hallmark_server_signing_certificates_total{result="issued"}`)
	require.True(t, ok, "hallmark_server_signing_certificates_total present")
	require.GreaterOrEqual(t, issued, 2.0, "the shared agent's certificate and this agent's")
	// Each entry came with the timestamp this server granted the agent when
	// it signed; admission recognized it and skipped its signature check
	// (docs/log.md, "Timestamps and time").
	recognized, ok := metric(scrape(t, stack.Server), "hallmark_server_log_timestamps_recognized_total")
	require.True(t, ok, "hallmark_server_log_timestamps_recognized_total present")
	require.GreaterOrEqual(t, recognized, float64(attested), "the timestamps of this agent's entries")
}

// Must show: a deployed agent runs its exec canary at the pace it ships
// with (every 30 s, each waiting up to 5 s for its exec event) and its
// exec watch sees each: hallmark_agent_exec_canary_last_success_timestamp_seconds
// is 0 until the first canary, 30 to 35 s after the agent started, and
// moves on about 30 s later with the next. TestExecCanaryTiming holds the
// values, TestAgentStopsWhenTheExecCanaryFails what a failing canary does.
func TestExecCanaryAtItsRealPace(t *testing.T) {
	t.Parallel()
	const series = "hallmark_agent_exec_canary_last_success_timestamp_seconds"
	ctx := context.Background()
	before := time.Now()
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-canary", harness.AgentOptions{
		ServerAddr: stack.Server.ServerAddr(), ServerID: harness.ServerID.String(), Policy: testPolicy(stack.Dir),
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	started := time.Now()
	require.Less(t, started.Sub(before), 25*time.Second, "the agent took too long to start for this test's bounds")
	require.Zero(t, gauge(t, ag, series), "no canary before the first 30 s")

	passed := func(after float64) (at float64) {
		waitFor(t, "an exec canary", 45*time.Second, func() error {
			if at = gauge(t, ag, series); at <= after {
				return fmt.Errorf("%s = %v", series, at)
			}
			return nil
		})
		return at
	}
	first := passed(0)
	require.WithinRange(t, time.Unix(0, int64(first*1e9)), before.Add(30*time.Second-time.Second), started.Add(35*time.Second+time.Second),
		"the first canary, 30 s after the agent started (its exec event within 5 s)")
	second := passed(first)
	require.InDelta(t, 30, second-first, 5.5, "the next canary, 30 s later")
	// The agent serves all along.
	_, err = localClient(t, ag.Socket).WhoAmI(ctx, &agentv1.WhoAmIRequest{})
	require.NoError(t, err)
}

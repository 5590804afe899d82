package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/internal/peercred"
)

// Must show: the agent runs its exec canary again and again while it
// serves, and when the canary fails it stops with the canary's error and
// stops serving, rather than go on with an exec watch it cannot trust
// (its supervisor restarts it, watching anew). The canary's own failure
// modes (no exec event within the wait, dropped events) are
// peercred's TestExecCanaryFailsClosed; this is the agent's part: that
// it runs the canary at all, and that the canary's error ends Run (it
// comes back from both RunCanary and the watch's Run, each of which
// ends the agent's errgroup).
func TestAgentStopsWhenTheExecCanaryFails(t *testing.T) {
	const (
		every = 50 * time.Millisecond
		wait  = 2 * time.Second
		runs  = 3 * time.Second // the agent's life when nothing fails
	)
	for _, tc := range []struct {
		name string
		// canary is the program; count its runs in ran (a file).
		canary  func(ran string) []string
		wantErr string // "": the agent serves until its context ends
	}{
		{
			name:   "a canary that runs",
			canary: func(ran string) []string { return []string{"/bin/sh", "-c", `echo >> "$0"`, ran} },
		},
		{
			name:    "a canary that cannot run",
			canary:  func(string) []string { return []string{"/nonexistent/hallmark-agent", ExecCanaryCommand} },
			wantErr: "exec canary",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ran := filepath.Join(dir, "ran")
			a := newTestAgent(t, nil)
			a.cfg.SocketPath = filepath.Join(dir, "agent.sock")
			a.cfg.SocketMode, a.cfg.SocketGID = DefaultSocketMode, -1
			a.cfg.ExecCanary = tc.canary(ran)
			a.execCanaryEvery, a.execCanaryWait = every, wait

			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), runs)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()

			if tc.wantErr == "" {
				// Serving, canary after canary, for the whole run.
				require.Eventually(t, func() bool { return canaryRuns(ran) >= 10 }, runs, every,
					"the canary runs every %s", every)
				conn, err := net.Dial("unix", a.cfg.SocketPath)
				require.NoError(t, err, "the agent serves while its canary runs")
				conn.Close()
				err = <-done
				require.GreaterOrEqual(t, time.Since(start), runs, "the agent ran until its context ended")
				require.NotErrorIs(t, err, peercred.ErrExecWatch)
				require.GreaterOrEqual(t, canaryRuns(ran), int(runs/every)/4, "canaries in %s", runs)
				last := time.Unix(0, int64(gaugeValue(t, a.metrics.execCanaryPassed)*1e9))
				require.WithinRange(t, last, start.Add(every-time.Millisecond), time.Now(), "hallmark_agent_exec_canary_last_success_timestamp_seconds")
				require.Greater(t, last, time.Now().Add(-runs/2), "the gauge follows the canary")
				return
			}

			var err error
			select {
			case err = <-done:
			case <-time.After(runs):
				t.Fatal("the agent went on serving after its exec canary failed")
			}
			require.ErrorIs(t, err, peercred.ErrExecWatch)
			require.ErrorContains(t, err, tc.wantErr)
			require.Less(t, time.Since(start), runs, "stopped by the canary, not by its context")
			_, err = net.Dial("unix", a.cfg.SocketPath)
			require.Error(t, err, "no longer serving")
			require.Zero(t, gaugeValue(t, a.metrics.execCanaryPassed), "no canary passed")
		})
	}
}

// gaugeValue is g's value.
func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, g.Write(&m))
	return m.GetGauge().GetValue()
}

// canaryRuns is how many times the counting canary ran (none while its
// file cannot be read). It takes no t: require.Eventually calls it from
// a goroutine of its own, where a test must not fail.
func canaryRuns(ran string) int {
	b, _ := os.ReadFile(ran)
	return strings.Count(string(b), "\n")
}

// Must show: a deployed agent runs its canary every 30 s and waits 5 s
// for its exec event, as docs/security.md says (the test above runs it
// faster; TestParseConfig shows the daemon's config runs it at all).
func TestExecCanaryTiming(t *testing.T) {
	a := newTestAgent(t, nil)
	require.Equal(t, 30*time.Second, a.execCanaryEvery)
	require.Equal(t, 5*time.Second, a.execCanaryWait)
}

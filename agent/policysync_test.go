package agent

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/policy"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// fakePolicyServer answers GetPolicy with its current answer, and records
// the revisions it was told the agent knows.
type fakePolicyServer struct {
	mu     sync.Mutex
	answer *serverv1.GetPolicyResponse
	err    error
	known  []string
	// stop, when set, is called once the server was asked stopAfter times.
	stop      func()
	stopAfter int
}

func (f *fakePolicyServer) GetPolicy(_ context.Context, in *serverv1.GetPolicyRequest, _ ...grpc.CallOption) (*serverv1.GetPolicyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.known = append(f.known, in.GetKnownRevision())
	if f.stop != nil && len(f.known) >= f.stopAfter {
		f.stop()
	}
	return f.answer, f.err
}

func (f *fakePolicyServer) set(answer *serverv1.GetPolicyResponse, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer, f.err = answer, err
}

// builders is a server policy revision letting testCallerID attest step.
func builders(revision, step string) *serverv1.GetPolicyResponse {
	return &serverv1.GetPolicyResponse{Configured: true, Revision: revision, Rules: []*serverv1.PolicyRule{{
		Name: "builders", SpiffeIds: []string{testCallerID}, Steps: []string{step}, WorkspaceRoots: []string{"/ws"},
	}}}
}

// Must show (docs/configuration.md: agents "keep the last one received
// while the server is away"): the policy the server sent stays in force
// while the server cannot be reached and when it sends a revision that is
// invalid; an unchanged revision changes nothing; a new one replaces it;
// a server with no policy makes the agent deny all. Each step is checked
// by a decision of the policy in force, allowed and denied, and by the
// revision `hallmark status` shows.
func TestPolicyKeptWhileTheServerIsAway(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	a, err := New(Config{
		ServerAddress: "hallmark.test:8443", ServerID: serverID, WorkloadAPIAddr: "unix:///nonexistent/api.sock",
		Policy: policy.DenyAll(), Log: zap.New(core),
	})
	require.NoError(t, err)
	caller := policy.Identity{SPIFFEIDs: []string{testCallerID}}
	allows := func(step string) bool {
		_, err := a.policy().Decide(caller, step, "/ws/app")
		return err == nil
	}
	revision := func() string {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.policyRevision
	}
	srv := &fakePolicyServer{}
	ctx := context.Background()

	// One server, one agent: each step follows the one before.
	for _, step := range []struct {
		name     string
		answer   *serverv1.GetPolicyResponse
		err      error
		wantErr  string
		revision string
		allowed  string // a step the policy in force allows ("" for none)
		denied   string
	}{
		{"first revision", builders("r1", "build"), nil, "", "r1", "build", "release"},
		{"server unreachable", nil, status.Error(codes.Unavailable, "connection refused"), "get policy: ", "r1", "build", "release"},
		{"invalid revision", &serverv1.GetPolicyResponse{Configured: true, Revision: "r2", Rules: []*serverv1.PolicyRule{{Name: "no identity", Steps: []string{"release"}}}},
			nil, "server policy revision r2 is invalid, keeping the current one", "r1", "build", "release"},
		{"the same revision", builders("r1", "release"), nil, "", "r1", "build", "release"}, // the revision names the rules: not read again
		{"a new revision", builders("r3", "release"), nil, "", "r3", "release", "build"},
		{"server unreachable again", nil, errors.New("deadline exceeded"), "get policy: ", "r3", "release", "build"},
		{"no policy on the server", &serverv1.GetPolicyResponse{Configured: false}, nil, "", "none", "", "release"},
	} {
		srv.set(step.answer, step.err)
		err := a.syncPolicy(ctx, srv)
		if step.wantErr == "" {
			require.NoError(t, err, step.name)
		} else {
			require.ErrorContains(t, err, step.wantErr, step.name)
		}
		require.Equal(t, step.revision, revision(), step.name)
		if step.allowed != "" {
			require.True(t, allows(step.allowed), "%s: %s denied", step.name, step.allowed)
		}
		require.False(t, allows(step.denied), "%s: %s allowed", step.name, step.denied)
	}
	srv.mu.Lock()
	require.Equal(t, []string{"", "r1", "r1", "r1", "r1", "r3", "r3"}, srv.known, "the revisions the agent said it held")
	srv.mu.Unlock()

	// The loop goes on through failures, saying it keeps the policy: the
	// server ends it once asked three times, all failing.
	a.cfg.PolicyRefresh = time.Millisecond
	srv.set(builders("r4", "build"), nil)
	require.NoError(t, a.syncPolicy(ctx, srv))
	loopCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // a bound, not the end
	defer cancel()
	srv.mu.Lock()
	srv.answer, srv.err = nil, status.Error(codes.Unavailable, "connection refused")
	srv.known, srv.stop, srv.stopAfter = nil, cancel, 3
	srv.mu.Unlock()
	require.NoError(t, a.policyLoop(loopCtx, srv))
	require.ErrorIs(t, loopCtx.Err(), context.Canceled, "the loop stopped asking before its third call")
	require.Equal(t, "r4", revision())
	require.True(t, allows("build"))
	require.GreaterOrEqual(t, logs.FilterMessage("Policy fetch failed; keeping the current policy").Len(), 2,
		"the first two failures, logged (the third ends the test)")
}

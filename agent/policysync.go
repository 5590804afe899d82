package agent

import (
	"context"
	"fmt"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/hallmark-dev/hallmark/internal/policy"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// policyGetter is the server call that fetches the attestation policy.
type policyGetter interface {
	GetPolicy(ctx context.Context, in *serverv1.GetPolicyRequest, opts ...grpc.CallOption) (*serverv1.GetPolicyResponse, error)
}

// policy is the policy in force.
func (a *Agent) policy() *policy.Policy { return a.pol.Load() }

// policyLoop follows the server's policy: it fetches it now and every
// PolicyRefresh, and keeps the last one received when the server is away.
func (a *Agent) policyLoop(ctx context.Context, client policyGetter) error {
	for {
		if err := a.syncPolicy(ctx, client); err != nil && ctx.Err() == nil {
			a.log.Warn("Policy fetch failed; keeping the current policy", zap.Error(err))
		}
		if err := sleepUntil(ctx, a.cfg.Now, a.cfg.Now().Add(a.cfg.PolicyRefresh)); err != nil {
			return nil
		}
	}
}

func (a *Agent) syncPolicy(ctx context.Context, client policyGetter) error {
	a.mu.Lock()
	known := a.policyRevision
	a.mu.Unlock()
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := client.GetPolicy(callCtx, &serverv1.GetPolicyRequest{KnownRevision: known})
	if err != nil {
		return fmt.Errorf("get policy: %w", err)
	}
	if !resp.GetConfigured() {
		if known != "none" {
			a.log.Warn("The server holds no attestation policy: every attestation is denied (add a policy block to the server's or this agent's configuration)")
			a.pol.Store(policy.DenyAll())
			a.setPolicySource("server (no policy configured there: denying all)", "none")
		}
		return nil
	}
	if resp.GetRevision() == known {
		return nil
	}
	rules := make([]policy.Rule, len(resp.GetRules()))
	for i, r := range resp.GetRules() {
		rules[i] = policy.Rule{
			Name: r.GetName(), SPIFFEIDs: r.GetSpiffeIds(), SPIFFEIDPrefixes: r.GetSpiffeIdPrefixes(),
			Selectors: r.GetSelectors(), Steps: r.GetSteps(), WorkspaceRoots: r.GetWorkspaceRoots(),
		}
	}
	p, err := policy.New(rules)
	if err != nil {
		return fmt.Errorf("server policy revision %s is invalid, keeping the current one: %w", resp.GetRevision(), err)
	}
	a.pol.Store(p)
	a.setPolicySource("server", resp.GetRevision())
	a.log.Info("Attestation policy updated from the server",
		zap.String("revision", resp.GetRevision()), zap.Int("rules", len(rules)))
	return nil
}

func (a *Agent) setPolicySource(source, revision string) {
	a.mu.Lock()
	a.policySource, a.policyRevision = source, revision
	a.mu.Unlock()
}

package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// GetPolicy returns the attestation policy for agents. Every agent gets
// the same rules; the revision lets agents log when it changes.
func (a *agentService) GetPolicy(context.Context, *serverv1.GetPolicyRequest) (*serverv1.GetPolicyResponse, error) {
	p := a.s.cfg.Policy
	if p == nil {
		return &serverv1.GetPolicyResponse{Configured: false}, nil
	}
	resp := &serverv1.GetPolicyResponse{Configured: true}
	for _, r := range p.Rules() {
		resp.Rules = append(resp.Rules, &serverv1.PolicyRule{
			Name: r.Name, SpiffeIds: r.SPIFFEIDs, SpiffeIdPrefixes: r.SPIFFEIDPrefixes,
			Selectors: r.Selectors, Steps: r.Steps, WorkspaceRoots: r.WorkspaceRoots,
		})
	}
	resp.Revision = revision(resp.Rules)
	return resp, nil
}

// revision is a short digest of the rules' content.
func revision(rules []*serverv1.PolicyRule) string {
	b, _ := json.Marshal(rules) //nolint:errchkjson // generated structs always marshal
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

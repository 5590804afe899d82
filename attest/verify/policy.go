package verify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxPolicySize bounds the policy file ParsePolicy accepts.
const maxPolicySize = 1 << 20

// Policy is what a consumer accepts beyond "signed by a trusted agent and
// logged". Each list that is not empty must be satisfied; an empty list
// allows anything.
//
// In its JSON form (ParsePolicy):
//
//	{
//	  "builder_id_prefixes": ["spiffe://example.org/hallmark/agent"],
//	  "steps": ["build", "package"],
//	  "workload_spiffe_ids": ["spiffe://example.org/ci/runner/widget"],
//	  "workload_selectors": ["unix:uid:1001", "unix:sha256:9f86d0..."]
//	}
//
// The builder is the signer: only BuilderIDPrefixes say whom to trust. The
// workload fields pin what the builder attested about its caller, which a
// trusted builder vouches for.
type Policy struct {
	// BuilderIDPrefixes: builder.id (the agent's SPIFFE ID) is one of
	// these or under one of them. A trailing "/" is implied:
	// spiffe://td/agent allows spiffe://td/agent/node-1, never
	// spiffe://td/agentx.
	BuilderIDPrefixes []string `json:"builder_id_prefixes,omitempty"`
	// Steps: the step name is one of these, exactly.
	Steps []string `json:"steps,omitempty"`
	// WorkloadSPIFFEIDs: the calling workload held at least one of these
	// SPIFFE IDs, exactly.
	WorkloadSPIFFEIDs []string `json:"workload_spiffe_ids,omitempty"`
	// WorkloadSelectors: the calling workload had every one of these
	// selectors (TYPE:VALUE, as the agent's workload attestors report
	// them: unix:uid:1001, unix:path:/usr/bin/make, unix:sha256:HEX,
	// k8s:ns:ci ...). It pins workloads that hold no SPIFFE ID.
	WorkloadSelectors []string `json:"workload_selectors,omitempty"`
}

// ConstrainsBuilder reports whether the policy names the builders it
// trusts: without that, any builder the trusted root vouches for passes.
func (p *Policy) ConstrainsBuilder() bool { return p != nil && len(p.BuilderIDPrefixes) > 0 }

// ParsePolicy decodes a policy from JSON strictly (unknown keys and
// trailing data refused) and validates it.
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > maxPolicySize {
		return nil, fmt.Errorf("verify: policy is %d bytes, limit is %d", len(data), maxPolicySize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("verify: decode policy: %w", err)
	}
	if dec.More() {
		return nil, errors.New("verify: decode policy: data after the policy object")
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks that every entry is well formed and that the policy
// restricts something: an empty policy is almost surely a mistake (leave
// Options.Policy nil to mean "no policy").
func (p *Policy) Validate() error {
	if len(p.BuilderIDPrefixes) == 0 && len(p.Steps) == 0 && len(p.WorkloadSPIFFEIDs) == 0 && len(p.WorkloadSelectors) == 0 {
		return errors.New("verify: policy restricts nothing")
	}
	for _, pre := range p.BuilderIDPrefixes {
		if _, err := spiffeid.FromString(strings.TrimSuffix(pre, "/")); err != nil {
			return fmt.Errorf("verify: policy builder_id_prefixes: %q: %w", pre, err)
		}
	}
	for _, s := range p.Steps {
		if s == "" {
			return errors.New("verify: policy steps: empty step name")
		}
	}
	for _, id := range p.WorkloadSPIFFEIDs {
		if _, err := spiffeid.FromString(id); err != nil {
			return fmt.Errorf("verify: policy workload_spiffe_ids: %q: %w", id, err)
		}
	}
	for _, sel := range p.WorkloadSelectors {
		if typ, val, ok := strings.Cut(sel, ":"); !ok || typ == "" || val == "" {
			return fmt.Errorf("verify: policy workload_selectors: %q is not TYPE:VALUE", sel)
		}
	}
	return nil
}

// check applies the policy to a verified predicate.
func (p *Policy) check(prov provenance) error {
	if len(p.BuilderIDPrefixes) > 0 && !slices.ContainsFunc(p.BuilderIDPrefixes, func(pre string) bool {
		return UnderPrefix(prov.builderID, pre)
	}) {
		return fmt.Errorf("builder %s is not under an allowed prefix (%s)", prov.builderID, strings.Join(p.BuilderIDPrefixes, ", "))
	}
	if len(p.Steps) > 0 && !slices.Contains(p.Steps, prov.step) {
		return fmt.Errorf("step %q is not an allowed step (%s)", prov.step, strings.Join(p.Steps, ", "))
	}
	if len(p.WorkloadSPIFFEIDs) > 0 && !slices.ContainsFunc(prov.workload.SPIFFEIDs, func(id string) bool {
		return slices.Contains(p.WorkloadSPIFFEIDs, id)
	}) {
		held := "none"
		if len(prov.workload.SPIFFEIDs) > 0 {
			held = strings.Join(prov.workload.SPIFFEIDs, ", ")
		}
		return fmt.Errorf("workload SPIFFE IDs (%s) include none of the allowed (%s)", held, strings.Join(p.WorkloadSPIFFEIDs, ", "))
	}
	for _, sel := range p.WorkloadSelectors {
		if !slices.Contains(prov.workload.Selectors, sel) {
			return fmt.Errorf("workload selectors lack %s (required: %s)", sel, strings.Join(p.WorkloadSelectors, ", "))
		}
	}
	return nil
}

// UnderPrefix reports whether the SPIFFE ID id is prefix or a path below
// it, at a segment boundary (spiffe://td/a is under spiffe://td/a/, not
// spiffe://td/ab): what a builder ID prefix admits, here, in pipeline
// policies and in log searches by builder.
func UnderPrefix(id, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	return id == prefix || strings.HasPrefix(id, prefix+"/")
}

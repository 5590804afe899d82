package pipeline_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// SearchBuilders names to the server every builder MayBuild accepts, and
// nothing at all where it cannot: a search that named too few would lose
// attestations the walk needs.
func TestSearchBuilders(t *testing.T) {
	const (
		agents = "spiffe://example.org/hallmark/agent"
		pool   = "spiffe://example.org/hallmark/agent/pool-a"
		vms    = "spiffe://example.org/hallmark/vm"
	)
	steps := func(prefixes ...[]string) *pipeline.Policy {
		p := &pipeline.Policy{}
		for i, pre := range prefixes {
			p.Steps = append(p.Steps, pipeline.StepRule{Name: string(rune('a' + i)), BuilderIDPrefixes: pre})
		}
		return p
	}
	many := make([]string, 33)
	for i := range many {
		many[i] = agents + "/n" + strings.Repeat("x", i)
	}
	for _, tt := range []struct {
		name     string
		policy   *pipeline.Policy
		verifier []string
		want     []string
	}{
		{"the verifier's prefixes", steps(nil, []string{pool}), []string{agents + "/", agents}, []string{agents}},
		{"the deeper of each pair under both", steps([]string{pool}, []string{vms}), []string{agents}, []string{pool}},
		{"the verifier's, deeper than a step's", steps([]string{agents}), []string{pool + "/node-1"}, []string{pool + "/node-1"}},
		{"none under both", steps([]string{pool}), []string{vms}, []string{vms}},
		{"every step's, once each", steps([]string{pool}, []string{vms, pool}), nil, []string{pool, vms}},
		{"a step that names none, and no verifier prefix", steps([]string{pool}, nil), nil, nil},
		{"a prefix that is no SPIFFE ID", steps([]string{"spiffe://Example.org/agent"}), nil, nil},
		{"more than the server takes", steps(many), nil, nil},
		{"more pairs than the server takes: the verifier's", steps(many), []string{agents}, []string{agents}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.policy.SearchBuilders(tt.verifier)
			require.Equal(t, tt.want, got)
			if got == nil {
				return
			}
			for _, id := range []string{
				agents, pool, pool + "/node-1", agents + "/pool-b/node-2", vms + "/vm-1",
				"spiffe://example.org/hallmark/agentx", "spiffe://example.org/hallmark/vmx/1", "spiffe://other.org/hallmark/agent/n",
			} {
				if tt.policy.MayBuild(id, tt.verifier) {
					require.Truef(t, under(id, got), "%s may build but is under none of %v", id, got)
				}
			}
		})
	}
}

func under(id string, prefixes []string) bool {
	for _, p := range prefixes {
		if id == p || strings.HasPrefix(id, p+"/") {
			return true
		}
	}
	return false
}

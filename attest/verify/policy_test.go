package verify_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/verify"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name string
		json string
		want *verify.Policy
		err  string
	}{
		{
			name: "all fields",
			json: `{"builder_id_prefixes":["spiffe://example.org/hallmark/agent/"],"steps":["build"],"workload_spiffe_ids":["spiffe://example.org/ci/x"]}`,
			want: &verify.Policy{
				BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent/"},
				Steps:             []string{"build"},
				WorkloadSPIFFEIDs: []string{"spiffe://example.org/ci/x"},
			},
		},
		{name: "trust domain prefix", json: `{"builder_id_prefixes":["spiffe://example.org"]}`,
			want: &verify.Policy{BuilderIDPrefixes: []string{"spiffe://example.org"}}},
		{name: "empty", json: `{}`, err: "restricts nothing"},
		{name: "unknown key", json: `{"steps":["build"],"step":["x"]}`, err: "unknown field"},
		{name: "trailing data", json: `{"steps":["build"]} {}`, err: "data after"},
		{name: "not JSON", json: `steps = ["build"]`, err: "decode policy"},
		{name: "bad builder prefix", json: `{"builder_id_prefixes":["https://example.org/agent"]}`, err: "builder_id_prefixes"},
		{name: "bad workload ID", json: `{"workload_spiffe_ids":["spiffe://Example.org/x"]}`, err: "workload_spiffe_ids"},
		{name: "empty step", json: `{"steps":[""]}`, err: "empty step"},
		{name: "selectors", json: `{"workload_selectors":["unix:uid:1001","unix:sha256:ab"]}`,
			want: &verify.Policy{WorkloadSelectors: []string{"unix:uid:1001", "unix:sha256:ab"}}},
		{name: "bad selector", json: `{"workload_selectors":["uid1001"]}`, err: "not TYPE:VALUE"},
		{name: "empty selector value", json: `{"workload_selectors":["unix:"]}`, err: "not TYPE:VALUE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := verify.ParsePolicy([]byte(tc.json))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, p)
		})
	}
}

// TestPolicyAllows runs the fixture's bundle through policies that allow
// it, one dimension at a time.
func TestPolicyAllows(t *testing.T) {
	f := newFixture(t)
	data := marshal(t, f.bundle)
	for name, p := range map[string]*verify.Policy{
		"exact builder":        {BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent/node-1"}},
		"builder prefix":       {BuilderIDPrefixes: []string{"spiffe://other.org", "spiffe://example.org/hallmark/agent/"}},
		"trust domain":         {BuilderIDPrefixes: []string{"spiffe://example.org"}},
		"one of the steps":     {Steps: []string{"test", "build"}},
		"one of the workloads": {WorkloadSPIFFEIDs: []string{"spiffe://example.org/x", workloadID}},
		"workload selector":    {WorkloadSelectors: []string{"unix:uid:1001"}},
		"workload selectors":   {WorkloadSelectors: []string{"unix:gid:1001", "unix:uid:1001"}},
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, p.Validate())
			_, err := verify.Verify(data, []verify.Digest{product()}, verify.Options{TrustedRoot: f.root, Policy: p})
			require.NoError(t, err)
		})
	}
}

// Must show: the verify policy pins workloads by selectors, allowed and
// refused.
func TestPolicyRefusesWorkloadSelectors(t *testing.T) {
	f := newFixture(t)
	data := marshal(t, f.bundle)
	for name, sels := range map[string][]string{
		"another uid":                 {"unix:uid:1002"},
		"one of two missing":          {"unix:uid:1001", "unix:path:/usr/bin/make"},
		"a selector of another type":  {"k8s:ns:ci"},
		"a prefix of a real selector": {"unix:uid:100"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verify.Verify(data, []verify.Digest{product()}, verify.Options{TrustedRoot: f.root, Policy: &verify.Policy{WorkloadSelectors: sels}})
			var ce *verify.CheckError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, verify.CheckPolicy, ce.Check)
			require.ErrorContains(t, err, "workload selectors lack")
		})
	}
}

func TestPolicyConstrainsBuilder(t *testing.T) {
	var none *verify.Policy
	require.False(t, none.ConstrainsBuilder())
	require.False(t, (&verify.Policy{Steps: []string{"build"}, WorkloadSelectors: []string{"unix:uid:1"}}).ConstrainsBuilder(),
		"workload fields are the builder's word: they constrain no builder")
	require.True(t, (&verify.Policy{BuilderIDPrefixes: []string{"spiffe://example.org/hallmark/agent"}}).ConstrainsBuilder())
}

package pipeline_test

import (
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

func TestParsePolicy(t *testing.T) {
	p := mustPolicy(t, testPolicy)
	require.Equal(t, sha256.Sum256([]byte(testPolicy)), p.Digest)
	require.Len(t, p.Steps, 3)
	require.Equal(t, "checkout", p.Steps[0].Name)
	require.Equal(t, []string{"widget"}, p.Steps[0].Sources)
	require.Equal(t, []string{"checkout"}, p.Steps[1].MaterialsFrom)
	require.Equal(t, []string{"widget-*.tar.gz"}, p.Steps[2].Products)
	src, ok := p.Source("widget")
	require.True(t, ok)
	require.True(t, src.RequireClean, "a clean tree is required unless the policy says otherwise")
	require.True(t, pipeline.IsPolicy([]byte(testPolicy)))
}

// The same policy in HCL's JSON syntax: steps keep their order.
func TestParsePolicyJSON(t *testing.T) {
	js := `{
  "version": 1,
  "source": {"widget": {"repositories": ["https://git.example.org/acme/widget"], "require_clean": false}},
  "step": [
    {"checkout": {"workload_spiffe_ids": ["spiffe://example.org/ci/checkout"], "sources": ["widget"]}},
    {"build": {"workload_selectors": ["unix:uid:1001"], "materials_from": ["checkout"]}},
    {"package": {"workload_spiffe_ids": ["spiffe://example.org/ci/package"], "materials_from": ["build"], "products": ["*.tar.gz"]}}
  ]
}`
	p, err := pipeline.ParsePolicy("pipeline.json", []byte(js))
	require.NoError(t, err)
	require.Equal(t, []string{"checkout", "build", "package"}, []string{p.Steps[0].Name, p.Steps[1].Name, p.Steps[2].Name})
	require.False(t, p.Sources[0].RequireClean)
	require.True(t, pipeline.IsPolicy([]byte(js)))

	_, err = pipeline.ParsePolicy("pipeline.json", []byte(strings.Replace(js, `"products"`, `"product"`, 1)))
	require.ErrorContains(t, err, `pipeline.json:7,`)
	require.ErrorContains(t, err, `Extraneous JSON object property; No argument or block type is named "product"`)
}

// hallmark verify's single-step policy is not a pipeline policy.
func TestIsPolicy(t *testing.T) {
	require.False(t, pipeline.IsPolicy([]byte(`{"builder_id_prefixes": ["spiffe://example.org/hallmark/agent"], "steps": ["build"]}`)))
	require.False(t, pipeline.IsPolicy([]byte(`not a policy {`)))
	require.False(t, pipeline.IsPolicy(nil))
}

func TestParsePolicyErrors(t *testing.T) {
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"unknown attribute", `refs         = ["refs/heads/main"]`, `branch = "main"`, `pipeline.hcl:7,3-9: Unsupported argument; An argument named "branch" is not expected here`},
		{"unknown block", `version = 1`, "version = 1\nlayout \"x\" {}", `Unsupported block type; Blocks of type "layout" are not expected here`},
		{"no version", `version = 1`, ``, `no version: say version = 1`},
		{"future version", `version = 1`, `version = 2`, "version 2 is not supported (this verifier reads version 1)"},
		{"no repositories", `repositories = ["https://git.example.org/acme/*"]`, `repositories = []`, `source "widget": repositories: name at least one`},
		{"short commit", `commits      = ["` + commit + `"]`, `commits = ["9fceb02"]`, `source "widget": commits: "9fceb02": a commit is 40 lowercase hex digits`},
		{"ref without refs/", `refs         = ["refs/heads/main"]`, `refs = ["main"]`, `refs: "main": a ref starts with refs/`},
		{"bad pattern", `products            = ["widget-*.tar.gz"]`, `products = ["widget-[.tar.gz"]`, `products: "widget-[.tar.gz": not a pattern`},
		{"nobody may run it", `workload_spiffe_ids = ["spiffe://example.org/ci/package"]`, ``, `step "package": say who may run it`},
		{"bad SPIFFE ID", `workload_spiffe_ids = ["spiffe://example.org/ci/build"]`, `workload_spiffe_ids = ["https://example.org/ci/build"]`, `step "build": workload_spiffe_ids: "https://example.org/ci/build"`},
		{"bad selector", `workload_selectors  = ["unix:uid:1001"]`, `workload_selectors = ["uid"]`, `a selector is type:value`},
		{"materials from a later step", `materials_from      = ["checkout"]`, `materials_from = ["package"]`, `materials_from: "package": step "package" comes later`},
		{"materials from no step", `materials_from      = ["build"]`, `materials_from = ["biuld"]`, `materials_from: "biuld": no step "biuld"`},
		{"unknown source", `sources             = ["widget"]`, `sources = ["gadget"]`, `sources: "gadget": no source "gadget"`},
		{"products on an earlier step", `workload_selectors  = ["unix:uid:1001"]`, "workload_selectors  = [\"unix:uid:1001\"]\n  products = [\"app\"]", `step "build": products: only the final step's products`},
		{"unlinked step", `materials_from      = ["build"]`, `materials_from = ["checkout"]`, `step "build": no later step takes materials from it`},
		{"duplicate step", `step "package" {`, "step \"build\" {\n  workload_selectors = [\"unix:uid:1\"]\n}\nstep \"package\" {", `step "build": defined twice`},
		{"bad step name", `step "package" {`, `step "pack age" {`, `step "pack age": use 1-128 letters`},
		{"duplicate entry", `materials_from      = ["checkout"]`, `materials_from = ["checkout", "checkout"]`, `"checkout" listed twice`},
		{"unused source", `version = 1`, "version = 1\nsource \"spare\" {\n  repositories = [\"x\"]\n}", `source "spare": no step names it`},
		{"syntax error", `version = 1`, `version = `, `pipeline.hcl:2,`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Contains(t, testPolicy, tc.old)
			src := strings.Replace(testPolicy, tc.old, tc.new, 1)
			_, err := pipeline.ParsePolicy("pipeline.hcl", []byte(src))
			require.ErrorContains(t, err, tc.want)
		})
	}
	_, err := pipeline.ParsePolicy("p.hcl", []byte("version = 1\n"))
	require.ErrorContains(t, err, "no step blocks")
	_, err = pipeline.ParsePolicy("p.hcl", make([]byte, pipeline.MaxPolicySize+1))
	require.ErrorContains(t, err, "limit is")
}

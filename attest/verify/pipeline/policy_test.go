package pipeline_test

import (
	"crypto/sha256"
	"os"
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
	// A pipeline policy in JSON syntax whose version is misspelt or
	// given twice is one: ParsePolicy then says where it is wrong.
	for _, src := range []string{
		`{"versoin": 1, "step": {"a": {"workload_selectors": ["unix:uid:1"]}}}`,
		`{"version": 1, "version": 1, "step": {"a": {"workload_selectors": ["unix:uid:1"]}}}`,
	} {
		require.True(t, pipeline.IsPolicy([]byte(src)), src)
		_, err := pipeline.ParsePolicy("p.json", []byte(src))
		require.ErrorContains(t, err, "p.json:1,", src)
	}
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
		{"duplicate step after the final one", "  products            = [\"widget-*.tar.gz\"]\n}", "  products            = [\"widget-*.tar.gz\"]\n}\nstep \"build\" {\n  workload_selectors = [\"unix:uid:1\"]\n}", `step "build": defined twice`},
		{"bad step name", `step "package" {`, `step "pack age" {`, `step "pack age": use 1-128 letters`},
		{"duplicate entry", `materials_from      = ["checkout"]`, `materials_from = ["checkout", "checkout"]`, `"checkout" listed twice`},
		{"unused source", `version = 1`, "version = 1\nsource \"spare\" {\n  repositories = [\"x\"]\n}", `source "spare": no step names it`},
		{"syntax error", `version = 1`, `version = `, `pipeline.hcl:2,`},
		{"products_outside_source without sources", `materials_from      = ["build"]`, "materials_from      = [\"build\"]\n  products_outside_source = true", `step "package": products_outside_source: only for a step with sources`},
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

// A policy file is untrusted input to an admission controller as much as
// to hallmark verify. HCL's parser and evaluator recurse once per
// operator or nesting level without a bound (a Go stack overflow kills
// the process), and some expressions are slow to read: a policy uses only
// literal values, lists and blocks, and anything else, an index, nesting
// without end or a list without end is refused before HCL reads the file,
// naming where. The attacks are the outside reviews' (each crashed the
// verifier or kept it busy for minutes before).
func TestParsePolicyShape(t *testing.T) {
	deep := func(n int, open, close string) string { return strings.Repeat(open, n) + strings.Repeat(close, n) }
	list := func(n int) string { return "[" + strings.Repeat(`"x",`, n-1) + `"x"]` }
	native := func(products string) string {
		return strings.Replace(testPolicy, `products            = ["widget-*.tar.gz"]`, "products = "+products, 1)
	}
	json := func(value string) string {
		return `{"version": 1, "step": {"a": {"workload_selectors": ["unix:uid:1"], "products": ` + value + `}}}`
	}
	version := func(expr string) string { return strings.Replace(testPolicy, "version = 1", "version = "+expr, 1) }
	for _, tc := range []struct {
		name, src, want string
	}{
		{"nested lists", native(deep(100000, "[", "]")), "pipeline.hcl:25,"},
		{"nested parentheses", native("[" + deep(100000, "(", ")") + "]"), `"(" is not allowed`},
		{"nested in a template", native(`["${` + deep(100000, "[", "]") + `}"]`), `"${" is not allowed`},
		{"nested templates", native(`[` + strings.Repeat(`"${`, 50000) + strings.Repeat(`}"`, 50000) + `]`), `"${" is not allowed`},
		{"unary minus signs", version(strings.Repeat("-", 240000) + "1"), `pipeline.hcl:2,11: "-" is not allowed`},
		{"negations", version(strings.Repeat("!", 240000) + "true"), `"!" is not allowed`},
		{"a sum", version("1" + strings.Repeat("+1", 430000)), `"+" is not allowed`},
		{"an index chain", version("x" + strings.Repeat("[y]", 300000)), "an index is not allowed"},
		{"an index after a comment", version("x/**/[0]"), "an index is not allowed"},
		{"an index of a list", native(`["a"][0]`), "an index is not allowed"},
		{"unclosed template ifs", native(`["` + strings.Repeat("%{if a}", 140000) + `"]`), `"%{" is not allowed`},
		{"a heredoc", native("[<<EOT\nx\nEOT\n]"), `"<<EOT\n" is not allowed`},
		{"a function call", native(`[upper("x")]`), `"(" is not allowed`},
		{"a conditional", version("true ? 1 : 2"), `"?" is not allowed`},
		{"a for expression", native(`[for s in ["a"]: s]`), "is not allowed"},
		{"nested blocks", strings.Replace(testPolicy, `step "package" {`, strings.Repeat("step \"x\" {\n", 50000)+strings.Repeat("}\n", 50000)+`step "package" {`, 1), "nested more than 32 deep"},
		{"JSON nested arrays", json(deep(200000, "[", "]")), "pipeline.hcl:1,"},
		{"JSON nested objects", json(deep(100000, `{"a":`, "}")), "nested more than 32 deep"},
		{"a long list", native(list(50000)), "a list of more than 256 entries"},
		{"a long JSON list", json(list(50000)), "a list of more than 256 entries"},
		{"a long list in a list", native("[" + list(50000) + "]"), "a list of more than 256 entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Less(t, len(tc.src), pipeline.MaxPolicySize)
			_, err := pipeline.ParsePolicy("pipeline.hcl", []byte(tc.src))
			require.ErrorContains(t, err, tc.want)
			require.False(t, pipeline.IsPolicy([]byte(tc.src)))
		})
	}
	// At the limits: 256 entries, with or without a trailing comma, and
	// brackets inside strings, which nest nothing.
	for _, src := range []string{
		native(list(256)),
		native(`["widget-` + strings.Repeat("[", 1000) + `"]`),
		json(`["` + strings.Repeat("[", 1000) + `\"` + strings.Repeat("{", 1000) + `"]`),
	} {
		_, err := pipeline.ParsePolicy("pipeline.hcl", []byte(src))
		if err != nil {
			require.NotContains(t, err.Error(), "nested more than")
			require.NotContains(t, err.Error(), "a list of more than")
		}
	}
	src := strings.Replace(native(list(256)), `"x"]`, `"x",]`, 1)
	_, err := pipeline.ParsePolicy("pipeline.hcl", []byte(src))
	require.ErrorContains(t, err, `"x" listed twice`, "256 entries and a trailing comma reach the list's own checks")
}

// The worked example of docs/pipelines.md parses (comments and all), as
// the docs say.
func TestDocsExamplePolicyParses(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/pipelines.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(doc), "```hcl\n")
	require.True(t, ok)
	example, _, ok := strings.Cut(rest, "\n```")
	require.True(t, ok)
	p, err := pipeline.ParsePolicy("pipelines.md", []byte(example))
	require.NoError(t, err)
	require.Len(t, p.Steps, 3)
}

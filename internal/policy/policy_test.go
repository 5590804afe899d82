package policy

import (
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// ciRule is a valid rule that tests copy and alter.
func ciRule() Rule {
	return Rule{
		Name:             "ci",
		SPIFFEIDPrefixes: []string{"spiffe://td/ci"},
		Steps:            []string{"build", "test"},
		WorkspaceRoots:   []string{"/work/a"},
	}
}

func with(f func(r *Rule)) Rule {
	r := ciRule()
	f(&r)
	return r
}

func mustNew(t *testing.T, rules ...Rule) *Policy {
	t.Helper()
	p, err := New(rules)
	require.NoError(t, err)
	return p
}

func names(rules []Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.Name
	}
	return out
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		rules   []Rule
		wantErr string // empty: valid
	}{
		{name: "no rules", rules: nil},
		{name: "valid prefix rule", rules: []Rule{ciRule()}},
		{name: "valid exact ID", rules: []Rule{with(func(r *Rule) {
			r.SPIFFEIDPrefixes = nil
			r.SPIFFEIDs = []string{"spiffe://td/ci/runner"}
		})}},
		{name: "valid selectors only", rules: []Rule{with(func(r *Rule) {
			r.SPIFFEIDPrefixes = nil
			r.Selectors = []string{"unix:uid:1000", "unix:path:/usr/bin/make"}
		})}},
		{name: "valid step wildcard and root /", rules: []Rule{with(func(r *Rule) {
			r.Steps = []string{"*"}
			r.WorkspaceRoots = []string{"/"}
		})}},
		{name: "valid prefix with trailing slash", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = []string{"spiffe://td/ci/"} })}},
		{name: "valid prefix naming a whole trust domain", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = []string{"spiffe://td"} })}},
		{name: "valid step name of 128 characters", rules: []Rule{with(func(r *Rule) { r.Steps = []string{"a" + string(make128("b"))} })}},

		{name: "empty name", rules: []Rule{with(func(r *Rule) { r.Name = "" })}, wantErr: `policy: rule name "" is empty or repeated`},
		{name: "repeated name", rules: []Rule{ciRule(), ciRule()}, wantErr: `policy: rule name "ci" is empty or repeated`},
		{name: "no identity matcher", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = nil })}, wantErr: `rule "ci" matches no identity`},
		{name: "empty matcher lists", rules: []Rule{with(func(r *Rule) {
			r.SPIFFEIDs, r.SPIFFEIDPrefixes, r.Selectors = []string{}, []string{}, []string{}
		})}, wantErr: `rule "ci" matches no identity`},
		{name: "spiffe_ids: not a SPIFFE ID", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDs = []string{"https://td/ci"} })}, wantErr: `policy: rule "ci": spiffe_ids: "https://td/ci"`},
		{name: "spiffe_ids: upper-case trust domain", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDs = []string{"spiffe://TD/ci"} })}, wantErr: `spiffe_ids: "spiffe://TD/ci"`},
		{name: "spiffe_ids: dot segment", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDs = []string{"spiffe://td/ci/../admin"} })}, wantErr: `spiffe_ids: "spiffe://td/ci/../admin"`},
		{name: "spiffe_ids: trailing slash", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDs = []string{"spiffe://td/ci/"} })}, wantErr: `spiffe_ids: "spiffe://td/ci/"`},
		{name: "spiffe_ids: empty", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDs = []string{""} })}, wantErr: `spiffe_ids: ""`},
		{name: "spiffe_id_prefixes: not a SPIFFE ID", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = []string{"td/ci"} })}, wantErr: `policy: rule "ci": spiffe_id_prefixes: "td/ci"`},
		{name: "spiffe_id_prefixes: dot segment", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = []string{"spiffe://td/ci/.."} })}, wantErr: `spiffe_id_prefixes: "spiffe://td/ci/.."`},
		{name: "spiffe_id_prefixes: double slash", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = []string{"spiffe://td/ci//"} })}, wantErr: `spiffe_id_prefixes: "spiffe://td/ci//"`},
		{name: "spiffe_id_prefixes: bare scheme", rules: []Rule{with(func(r *Rule) { r.SPIFFEIDPrefixes = []string{"spiffe://"} })}, wantErr: `spiffe_id_prefixes: "spiffe://"`},
		{name: "selector without colon", rules: []Rule{with(func(r *Rule) { r.Selectors = []string{"uid"} })}, wantErr: `policy: rule "ci": selector "uid" is not TYPE:VALUE`},
		{name: "selector without type", rules: []Rule{with(func(r *Rule) { r.Selectors = []string{":1000"} })}, wantErr: `selector ":1000" is not TYPE:VALUE`},
		{name: "selector without value", rules: []Rule{with(func(r *Rule) { r.Selectors = []string{"unix:"} })}, wantErr: `selector "unix:" is not TYPE:VALUE`},
		{name: "no steps", rules: []Rule{with(func(r *Rule) { r.Steps = nil })}, wantErr: `policy: rule "ci" grants no steps`},
		{name: "empty step name", rules: []Rule{with(func(r *Rule) { r.Steps = []string{""} })}, wantErr: `policy: rule "ci": step "": use letters`},
		{name: "step with slash", rules: []Rule{with(func(r *Rule) { r.Steps = []string{"build/x"} })}, wantErr: `step "build/x"`},
		{name: "step with space", rules: []Rule{with(func(r *Rule) { r.Steps = []string{"build x"} })}, wantErr: `step "build x"`},
		{name: "step starting with a dot", rules: []Rule{with(func(r *Rule) { r.Steps = []string{".build"} })}, wantErr: `step ".build"`},
		{name: "step glob other than *", rules: []Rule{with(func(r *Rule) { r.Steps = []string{"build*"} })}, wantErr: `step "build*"`},
		{name: "step of 129 characters", rules: []Rule{with(func(r *Rule) { r.Steps = []string{"ab" + string(make128("b"))} })}, wantErr: `use letters, digits`},
		{name: "no workspace roots", rules: []Rule{with(func(r *Rule) { r.WorkspaceRoots = nil })}, wantErr: `policy: rule "ci" grants no workspace_roots`},
		{name: "relative root", rules: []Rule{with(func(r *Rule) { r.WorkspaceRoots = []string{"work/a"} })}, wantErr: `policy: rule "ci": workspace root "work/a" must be absolute`},
		{name: "dot root", rules: []Rule{with(func(r *Rule) { r.WorkspaceRoots = []string{"."} })}, wantErr: `workspace root "." must be absolute`},
		{name: "empty root", rules: []Rule{with(func(r *Rule) { r.WorkspaceRoots = []string{""} })}, wantErr: `workspace root "" must be absolute`},
		{name: "error names the second rule", rules: []Rule{ciRule(), with(func(r *Rule) { r.Name = "deploy"; r.Steps = nil })}, wantErr: `rule "deploy" grants no steps`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.rules)
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Len(t, p.Rules(), len(tt.rules))
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, p)
		})
	}
}

// make128 returns 127 copies of s, making "a"+make128("b") 128 characters.
func make128(s string) []byte {
	out := make([]byte, 0, 127)
	for range 127 {
		out = append(out, s...)
	}
	return out
}

func TestNewNormalizes(t *testing.T) {
	p := mustNew(t, with(func(r *Rule) {
		r.SPIFFEIDPrefixes = []string{"spiffe://td/ci", "spiffe://td/cd/"}
		r.WorkspaceRoots = []string{"/work/a/", "/work//b/./c/..", "//"}
	}))
	rules := p.Rules()
	require.Len(t, rules, 1)
	require.Equal(t, []string{"spiffe://td/ci/", "spiffe://td/cd/"}, rules[0].SPIFFEIDPrefixes)
	require.Equal(t, []string{"/work/a", "/work/b", "/"}, rules[0].WorkspaceRoots)
}

func TestMatching(t *testing.T) {
	p := mustNew(t,
		Rule{Name: "exact", SPIFFEIDs: []string{"spiffe://td/ci/exact"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/"}},
		Rule{Name: "prefix", SPIFFEIDPrefixes: []string{"spiffe://td/ci"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/"}},
		Rule{Name: "make-as-1000", Selectors: []string{"unix:uid:1000", "unix:path:/usr/bin/make"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/"}},
		Rule{Name: "other-td", SPIFFEIDPrefixes: []string{"spiffe://other"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/"}},
		Rule{Name: "id-or-selector", SPIFFEIDs: []string{"spiffe://td/svc"}, Selectors: []string{"unix:uid:0"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/"}},
	)
	tests := []struct {
		name string
		id   Identity
		want []string
	}{
		{name: "no identity", id: Identity{}, want: nil},
		{name: "exact ID also under the prefix", id: Identity{SPIFFEIDs: []string{"spiffe://td/ci/exact"}}, want: []string{"exact", "prefix"}},
		{name: "exact ID is not a prefix", id: Identity{SPIFFEIDs: []string{"spiffe://td/ci/exact/sub"}}, want: []string{"prefix"}},
		{name: "under the prefix", id: Identity{SPIFFEIDs: []string{"spiffe://td/ci/x"}}, want: []string{"prefix"}},
		{name: "deep under the prefix", id: Identity{SPIFFEIDs: []string{"spiffe://td/ci/x/y/z"}}, want: []string{"prefix"}},
		{name: "prefix lookalike", id: Identity{SPIFFEIDs: []string{"spiffe://td/cix"}}, want: nil},
		{name: "prefix lookalike with a path", id: Identity{SPIFFEIDs: []string{"spiffe://td/cix/y"}}, want: nil},
		{name: "the prefix itself is not under it", id: Identity{SPIFFEIDs: []string{"spiffe://td/ci"}}, want: nil},
		{name: "other trust domain, same path", id: Identity{SPIFFEIDs: []string{"spiffe://td2/ci/x"}}, want: nil},
		{name: "trust-domain prefix", id: Identity{SPIFFEIDs: []string{"spiffe://other/anything"}}, want: []string{"other-td"}},
		{name: "trust-domain prefix lookalike", id: Identity{SPIFFEIDs: []string{"spiffe://other.evil/anything"}}, want: nil},
		{name: "one of several IDs matches", id: Identity{SPIFFEIDs: []string{"spiffe://x/y", "spiffe://td/ci/x"}}, want: []string{"prefix"}},
		{name: "exact match is case-sensitive", id: Identity{SPIFFEIDs: []string{"spiffe://td/ci/EXACT"}}, want: []string{"prefix"}},
		{name: "all selectors", id: Identity{Selectors: []string{"unix:gid:1", "unix:path:/usr/bin/make", "unix:uid:1000"}}, want: []string{"make-as-1000"}},
		{name: "one selector missing", id: Identity{Selectors: []string{"unix:uid:1000"}}, want: nil},
		{name: "other selector missing", id: Identity{Selectors: []string{"unix:path:/usr/bin/make", "unix:uid:1001"}}, want: nil},
		{name: "selectors only but SPIFFE ID unrelated", id: Identity{SPIFFEIDs: []string{"spiffe://x/y"}, Selectors: []string{"unix:uid:1000"}}, want: nil},
		{name: "selector values are compared whole", id: Identity{Selectors: []string{"unix:uid:10000", "unix:path:/usr/bin/make"}}, want: nil},
		// A rule with both spiffe_ids and selectors matches either (OR).
		{name: "ID alone matches a rule that also lists selectors", id: Identity{SPIFFEIDs: []string{"spiffe://td/svc"}}, want: []string{"id-or-selector"}},
		{name: "selectors alone match a rule that also lists IDs", id: Identity{Selectors: []string{"unix:uid:0"}}, want: []string{"id-or-selector"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.Matching(tt.id)
			if tt.want == nil {
				require.Empty(t, got)
				return
			}
			require.Equal(t, tt.want, names(got))
		})
	}
}

func TestDecide(t *testing.T) {
	p := mustNew(t,
		Rule{Name: "ci", SPIFFEIDPrefixes: []string{"spiffe://td/ci"}, Steps: []string{"build", "test"}, WorkspaceRoots: []string{"/work/a", "/srv/builds/"}},
		Rule{Name: "ci-lint", SPIFFEIDPrefixes: []string{"spiffe://td/ci/lint"}, Steps: []string{"lint"}, WorkspaceRoots: []string{"/work/lint"}},
		Rule{Name: "release", SPIFFEIDs: []string{"spiffe://td/release"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/release"}},
		Rule{Name: "root", SPIFFEIDs: []string{"spiffe://td/root"}, Steps: []string{"build"}, WorkspaceRoots: []string{"/"}},
		Rule{Name: "make", Selectors: []string{"unix:uid:1000", "unix:path:/usr/bin/make"}, Steps: []string{"compile"}, WorkspaceRoots: []string{"/home/dev"}},
		Rule{Name: "ci-b", SPIFFEIDs: []string{"spiffe://td/ci/b"}, Steps: []string{"build"}, WorkspaceRoots: []string{"/work/b"}},
	)
	ci := Identity{SPIFFEIDs: []string{"spiffe://td/ci/runner"}}
	lint := Identity{SPIFFEIDs: []string{"spiffe://td/ci/lint/1"}}
	ciB := Identity{SPIFFEIDs: []string{"spiffe://td/ci/b"}}
	release := Identity{SPIFFEIDs: []string{"spiffe://td/release"}}
	root := Identity{SPIFFEIDs: []string{"spiffe://td/root"}}
	dev := Identity{Selectors: []string{"unix:uid:1000", "unix:gid:1000", "unix:path:/usr/bin/make"}}

	tests := []struct {
		name      string
		id        Identity
		step      string
		workspace string
		wantRule  string   // allowed by this rule
		wantIn    []string // denied: the reason contains each of these
		wantNotIn []string // denied: the reason contains none of these
	}{
		{name: "allowed at a root", id: ci, step: "build", workspace: "/work/a", wantRule: "ci"},
		{name: "allowed under a root", id: ci, step: "test", workspace: "/work/a/repo/sub", wantRule: "ci"},
		{name: "allowed under the second root, given with a trailing slash", id: ci, step: "build", workspace: "/srv/builds/x", wantRule: "ci"},
		{name: "allowed by selectors", id: dev, step: "compile", workspace: "/home/dev/src", wantRule: "make"},
		{name: "wildcard step", id: release, step: "anything-at-all", workspace: "/release/v1", wantRule: "release"},
		{name: "root / allows any absolute workspace", id: root, step: "build", workspace: "/etc", wantRule: "root"},
		{name: "root / allows / itself", id: root, step: "build", workspace: "/", wantRule: "root"},
		{name: "second matching rule grants the step", id: lint, step: "lint", workspace: "/work/lint/x", wantRule: "ci-lint"},
		{name: "first matching rule still grants its own steps", id: lint, step: "build", workspace: "/work/a/x", wantRule: "ci"},
		{name: "the rule whose root holds the workspace wins", id: ciB, step: "build", workspace: "/work/b/x", wantRule: "ci-b"},

		{
			name: "no matching rule", id: Identity{SPIFFEIDs: []string{"spiffe://td/cix/runner"}}, step: "build", workspace: "/work/a",
			wantIn: []string{"no policy rule matches spiffe://td/cix/runner"},
		},
		{
			name: "no matching rule, no SPIFFE ID", id: Identity{Selectors: []string{"unix:uid:1000"}}, step: "compile", workspace: "/home/dev",
			wantIn: []string{"no policy rule matches a caller with no SPIFFE ID (selectors unix:uid:1000)"},
		},
		{name: "no identity at all", id: Identity{}, step: "build", workspace: "/", wantIn: []string{"no policy rule matches"}},
		{
			name: "step not granted", id: ci, step: "deploy", workspace: "/work/a",
			wantIn: []string{`step "deploy" is not allowed for spiffe://td/ci/runner: rule "ci" allows steps build, test`},
		},
		{
			name: "step not granted names every matching rule", id: lint, step: "deploy", workspace: "/work/a",
			wantIn: []string{`step "deploy" is not allowed for spiffe://td/ci/lint/1`, `rule "ci" allows steps build, test; rule "ci-lint" allows steps lint`},
		},
		{
			name: "step not granted by selectors", id: dev, step: "build", workspace: "/home/dev",
			wantIn: []string{`step "build" is not allowed for a caller with no SPIFFE ID (selectors unix:uid:1000`, `rule "make" allows steps compile`},
		},
		{name: "step names are case-sensitive", id: ci, step: "Build", workspace: "/work/a", wantIn: []string{`step "Build" is not allowed`}},
		{name: "asking for * is not a wildcard", id: ci, step: "*", workspace: "/work/a", wantIn: []string{`step "*" is not allowed`}},
		{
			name: "workspace outside roots", id: ci, step: "build", workspace: "/work/c",
			wantIn: []string{
				`workspace /work/c is outside the workspace roots granted to spiffe://td/ci/runner for step "build"`,
				`rule "ci" allows workspaces under /work/a, /srv/builds`,
			},
		},
		{
			name: "workspace root prefix lookalike", id: ci, step: "build", workspace: "/work/ab",
			wantIn: []string{`workspace /work/ab is outside`, `rule "ci" allows workspaces under /work/a, /srv/builds`},
		},
		{name: "workspace lookalike below", id: ci, step: "build", workspace: "/work/ab/c", wantIn: []string{`workspace /work/ab/c is outside`}},
		{name: "workspace parent of a root", id: ci, step: "build", workspace: "/work", wantIn: []string{`workspace /work is outside`}},
		{name: "empty workspace", id: ci, step: "build", workspace: "", wantIn: []string{`workspace "" must be an absolute, clean path`}},
		{name: "relative workspace", id: root, step: "build", workspace: "etc", wantIn: []string{`workspace "etc" must be an absolute, clean path`}},
		{name: "unclean workspace", id: root, step: "build", workspace: "/w/../etc", wantIn: []string{`workspace "/w/../etc" must be an absolute, clean path`}},
		{
			name: "workspace denial names only the rules granting the step", id: lint, step: "lint", workspace: "/work/a",
			wantIn:    []string{`for step "lint": rule "ci-lint" allows workspaces under /work/lint`},
			wantNotIn: []string{`rule "ci" allows`},
		},
		{
			name: "workspace denial names every rule granting the step", id: ciB, step: "build", workspace: "/elsewhere",
			wantIn: []string{`rule "ci" allows workspaces under /work/a, /srv/builds; rule "ci-b" allows workspaces under /work/b`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rule, err := p.Decide(tt.id, tt.step, tt.workspace)
			if tt.wantRule != "" {
				require.NoError(t, err)
				require.Equal(t, tt.wantRule, rule.Name)
				require.True(t, slices.Contains(rule.Steps, tt.step) || slices.Contains(rule.Steps, "*"))
				require.True(t, slices.ContainsFunc(rule.WorkspaceRoots, func(root string) bool { return Within(tt.workspace, root) }))
				return
			}
			require.Error(t, err)
			require.Zero(t, rule.Name)
			require.ErrorIs(t, err, ErrDenied)
			var d *Denial
			require.ErrorAs(t, err, &d)
			require.Equal(t, d.Reason, err.Error())
			for _, s := range tt.wantIn {
				require.Contains(t, d.Reason, s)
			}
			for _, s := range tt.wantNotIn {
				require.NotContains(t, d.Reason, s)
			}
		})
	}
}

func TestDecideNoRulesDeniesEverything(t *testing.T) {
	p := mustNew(t)
	_, err := p.Decide(Identity{SPIFFEIDs: []string{"spiffe://td/ci/x"}}, "build", "/")
	require.ErrorIs(t, err, ErrDenied)
	require.ErrorContains(t, err, "no policy rule matches spiffe://td/ci/x")
}

func TestDenialIs(t *testing.T) {
	var err error = &Denial{Reason: "because"}
	require.ErrorIs(t, err, ErrDenied)
	require.EqualError(t, err, "because")
	require.NotErrorIs(t, errors.New("because"), ErrDenied)
	require.NotErrorIs(t, err, errors.New("denied by policy"), "only the sentinel itself matches")
}

func TestWithin(t *testing.T) {
	tests := []struct {
		path, root string
		want       bool
	}{
		{"/work/a", "/work/a", true},
		{"/work/a/b", "/work/a", true},
		{"/work/a/b/c", "/work/a", true},
		{"/work/ab", "/work/a", false},
		{"/work/ab/c", "/work/a", false},
		{"/work", "/work/a", false},
		{"/", "/work/a", false},
		{"/other/a", "/work/a", false},
		{"", "/work/a", false},
		{"work/a/b", "/work/a", false},
		{"/", "/", true},
		{"/x", "/", true},
		{"/x/y", "/", true},
		{"", "/", false},
		{"x", "/", false},
	}
	for _, tt := range tests {
		t.Run(tt.path+" in "+tt.root, func(t *testing.T) {
			require.Equal(t, tt.want, Within(tt.path, tt.root))
		})
	}
}

func TestValidStepName(t *testing.T) {
	for _, s := range []string{"a", "build", "Build-1", "go_test", "v1.2.3", "0", "a" + string(make128("b"))} {
		require.True(t, ValidStepName(s), s)
	}
	for _, s := range []string{"", "*", "-x", ".", "..", "_x", "a/b", "a b", "a\n", "ü", "ab" + string(make128("b"))} {
		require.False(t, ValidStepName(s), s)
	}
}

func TestIdentityString(t *testing.T) {
	require.Equal(t, "spiffe://td/a, spiffe://td/b", Identity{SPIFFEIDs: []string{"spiffe://td/a", "spiffe://td/b"}, Selectors: []string{"unix:uid:1"}}.String())
	require.Equal(t, "a caller with no SPIFFE ID (selectors unix:uid:1, unix:gid:2)", Identity{Selectors: []string{"unix:uid:1", "unix:gid:2"}}.String())
	require.Equal(t, "a caller with no SPIFFE ID (selectors )", Identity{}.String())
}

const validPolicy = `
# CI runners build and test in their workspaces.
rule "ci" {
  spiffe_id_prefixes = ["spiffe://example.org/ci/"]
  steps              = ["build", "test"]
  workspace_roots    = ["/work/ci", "/srv/builds"]
}

rule "release" {
  spiffe_ids      = ["spiffe://example.org/release"]
  steps           = ["*"]
  workspace_roots = ["/release"]
}

rule "make-as-dev" {
  selectors       = ["unix:uid:1000", "unix:path:/usr/bin/make"]
  steps           = ["compile"]
  workspace_roots = ["/home/dev/"]
}
`

func TestParse(t *testing.T) {
	p, err := Parse("policy.hcl", []byte(validPolicy))
	require.NoError(t, err)
	require.Equal(t, []Rule{
		{Name: "ci", SPIFFEIDPrefixes: []string{"spiffe://example.org/ci/"}, Steps: []string{"build", "test"}, WorkspaceRoots: []string{"/work/ci", "/srv/builds"}},
		{Name: "release", SPIFFEIDs: []string{"spiffe://example.org/release"}, Steps: []string{"*"}, WorkspaceRoots: []string{"/release"}},
		{Name: "make-as-dev", Selectors: []string{"unix:uid:1000", "unix:path:/usr/bin/make"}, Steps: []string{"compile"}, WorkspaceRoots: []string{"/home/dev"}},
	}, p.Rules())

	rule, err := p.Decide(Identity{SPIFFEIDs: []string{"spiffe://example.org/ci/runner-1"}}, "test", "/srv/builds/42")
	require.NoError(t, err)
	require.Equal(t, "ci", rule.Name)
	_, err = p.Decide(Identity{SPIFFEIDs: []string{"spiffe://example.org/ci/runner-1"}}, "release", "/srv/builds/42")
	require.ErrorIs(t, err, ErrDenied)
}

func TestParseEmpty(t *testing.T) {
	p, err := Parse("policy.hcl", nil)
	require.NoError(t, err)
	require.Empty(t, p.Rules())
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr []string
	}{
		{
			name:    "unknown key in a rule",
			src:     "rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/ci\"]\n  steps = [\"build\"]\n  workspace_roots = [\"/w\"]\n  workspace_root = \"/x\"\n}\n",
			wantErr: []string{"policy.hcl:5,3-17", `An argument named "workspace_root" is not expected here`},
		},
		{
			name:    "unknown top-level key",
			src:     "default = \"deny\"\n",
			wantErr: []string{"policy.hcl:1", `An argument named "default" is not expected here`},
		},
		{
			name:    "unknown block",
			src:     "allow \"ci\" {}\n",
			wantErr: []string{"policy.hcl:1", `Blocks of type "allow" are not expected here`},
		},
		{
			name:    "rule without a label",
			src:     "rule {\n  steps = [\"b\"]\n  workspace_roots = [\"/\"]\n}\n",
			wantErr: []string{"policy.hcl:1"},
		},
		{
			name:    "missing steps",
			src:     "rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/ci\"]\n  workspace_roots = [\"/w\"]\n}\n",
			wantErr: []string{`The argument "steps" is required`},
		},
		{
			name:    "missing workspace_roots",
			src:     "rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/ci\"]\n  steps = [\"build\"]\n}\n",
			wantErr: []string{`The argument "workspace_roots" is required`},
		},
		{
			name:    "string instead of a list",
			src:     "rule \"ci\" {\n  spiffe_ids = \"spiffe://td/ci\"\n  steps = [\"build\"]\n  workspace_roots = [\"/w\"]\n}\n",
			wantErr: []string{"policy.hcl:2"},
		},
		{
			name:    "syntax error",
			src:     "rule \"ci\" {\n",
			wantErr: []string{"policy.hcl:"},
		},
		{
			name:    "validated after decoding",
			src:     "rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/ci\"]\n  steps = [\"build\"]\n  workspace_roots = [\"work\"]\n}\n",
			wantErr: []string{`policy: rule "ci": workspace root "work" must be absolute`},
		},
		{
			name:    "repeated rule",
			src:     validPolicy + "rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/x\"]\n  steps = [\"build\"]\n  workspace_roots = [\"/w\"]\n}\n",
			wantErr: []string{`rule name "ci" is empty or repeated`},
		},
		{
			name:    "rule with an empty body",
			src:     "rule \"ci\" {}\n",
			wantErr: []string{`The argument "steps" is required`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("policy.hcl", []byte(tt.src))
			require.Error(t, err)
			require.Nil(t, p)
			for _, s := range tt.wantErr {
				require.ErrorContains(t, err, s)
			}
		})
	}
}

// FuzzParse: Parse never panics, and a policy it returns decides without
// panicking, allowing only what one of its rules grants.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validPolicy))
	f.Add([]byte(""))
	f.Add([]byte("rule \"a\" {\n  selectors = [\"unix:uid:0\"]\n  steps = [\"*\"]\n  workspace_roots = [\"/\"]\n}\n"))
	f.Add([]byte("rule \"a\" {\n  spiffe_id_prefixes = [\"spiffe://td\"]\n  steps = [\"build\"]\n  workspace_roots = [\"/work/a/\"]\n}\n"))
	f.Add([]byte("rule \"a\" {\n  spiffe_ids = [\"spiffe://td/ci/x\"]\n  steps = [\"build\"]\n  workspace_roots = [\"//work/../a\"]\n}\n"))
	f.Add([]byte("rule \"ci\" {\n  steps = [\"build\"]\n  workspace_roots = [\"/w\"]\n}\n"))
	f.Add([]byte("rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/ci\"]\n  steps = [\"build\"]\n  workspace_roots = [\"/w\"]\n  extra = 1\n}\n"))
	f.Add([]byte("rule \"ci\" {\n  spiffe_ids = [\"not an id\"]\n  steps = [\"build\"]\n  workspace_roots = [\"/w\"]\n}\n"))
	f.Add([]byte("rule \"ci\" {\n  spiffe_ids = [\"spiffe://td/ci\"]\n  steps = [\"a/b\"]\n  workspace_roots = [\"w\"]\n}\n"))
	f.Add([]byte("rule \"ci\" {\n  spiffe_ids = ${var.x}\n}\n"))
	f.Add([]byte("rule \"ci\" {"))
	f.Add([]byte("\x00\xff{{{\"\n"))
	f.Add([]byte("rule \"a\" { steps = [for s in [\"a\"] : s] }"))

	ids := []Identity{
		{},
		{SPIFFEIDs: []string{"spiffe://td/ci/x"}},
		{SPIFFEIDs: []string{"spiffe://example.org/ci/runner-1", "spiffe://example.org/release"}},
		{SPIFFEIDs: []string{"spiffe://td"}},
		{Selectors: []string{"unix:uid:0", "unix:uid:1000", "unix:path:/usr/bin/make"}},
		{SPIFFEIDs: []string{"spiffe://td/cix"}, Selectors: []string{"unix:gid:0"}},
	}
	steps := []string{"build", "test", "compile", "*", ""}
	workspaces := []string{"/", "/w", "/work/a", "/work/ab", "/release/x", "/home/dev/src", "", "relative"}

	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := Parse("fuzz.hcl", src)
		if err != nil {
			require.Nil(t, p)
			return
		}
		rules := p.Rules()
		for _, id := range ids {
			matching := p.Matching(id)
			for _, step := range steps {
				for _, ws := range workspaces {
					rule, err := p.Decide(id, step, ws)
					if err != nil {
						require.ErrorIs(t, err, ErrDenied)
						continue
					}
					require.True(t, slices.ContainsFunc(rules, func(r Rule) bool { return r.Name == rule.Name }))
					require.True(t, slices.ContainsFunc(matching, func(r Rule) bool { return r.Name == rule.Name }))
					require.True(t, slices.Contains(rule.Steps, step) || slices.Contains(rule.Steps, "*"))
					require.True(t, slices.ContainsFunc(rule.WorkspaceRoots, func(root string) bool { return Within(ws, root) }))
				}
			}
		}
	})
}

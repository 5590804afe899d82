// Package policy decides which workloads may attest which build steps, and
// in which workspaces. Rules grant step names and workspace roots to
// identities (SPIFFE IDs, exact or by path prefix, or a set of selectors
// that must all be present); anything no rule grants is denied, with a
// reason that names the rules considered.
package policy

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/internal/config"
)

// Rule grants steps in workspaces to matching identities.
type Rule struct {
	Name string `hcl:"name,label"`
	// SPIFFEIDs match a caller holding any of these IDs exactly.
	SPIFFEIDs []string `hcl:"spiffe_ids,optional"`
	// SPIFFEIDPrefixes match a caller holding an ID under any of these
	// (a trailing "/" is implied: spiffe://td/ci matches spiffe://td/ci/x,
	// never spiffe://td/cix).
	SPIFFEIDPrefixes []string `hcl:"spiffe_id_prefixes,optional"`
	// Selectors match a caller that has every one of them, e.g.
	// ["unix:uid:1000", "unix:path:/usr/bin/make"]. A rule matches when
	// any of its matchers does (IDs, prefixes, or the whole selector set).
	Selectors []string `hcl:"selectors,optional"`
	// Steps are the step names the rule grants; "*" grants every step.
	Steps []string `hcl:"steps"`
	// WorkspaceRoots are absolute directories the step's workspace must
	// lie within.
	WorkspaceRoots []string `hcl:"workspace_roots"`
}

// File is the policy block of a configuration file.
type File struct {
	Rules []Rule `hcl:"rule,block"`
}

// Identity is the caller as the workload attestors saw it.
type Identity struct {
	SPIFFEIDs []string
	Selectors []string
}

func (id Identity) String() string {
	if len(id.SPIFFEIDs) > 0 {
		return strings.Join(id.SPIFFEIDs, ", ")
	}
	return "a caller with no SPIFFE ID (selectors " + strings.Join(id.Selectors, ", ") + ")"
}

// Policy is a validated, immutable rule set.
type Policy struct {
	rules []Rule
}

// Denial is why a request was refused; it names the rules considered.
type Denial struct {
	Reason string
}

func (d *Denial) Error() string { return d.Reason }

// ErrDenied matches every *Denial with errors.Is.
var ErrDenied = errors.New("denied by policy")

// Is makes errors.Is(d, ErrDenied) true.
func (d *Denial) Is(target error) bool { return target == ErrDenied }

var stepName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidStepName reports whether s can name a step.
func ValidStepName(s string) bool { return stepName.MatchString(s) }

// New validates rules: names unique, at least one identity matcher, valid
// SPIFFE IDs, step names and absolute workspace roots.
func New(rules []Rule) (*Policy, error) {
	seen := map[string]bool{}
	out := make([]Rule, 0, len(rules))
	for _, r := range rules {
		if r.Name == "" || seen[r.Name] {
			return nil, fmt.Errorf("policy: rule name %q is empty or repeated", r.Name)
		}
		seen[r.Name] = true
		if len(r.SPIFFEIDs)+len(r.SPIFFEIDPrefixes)+len(r.Selectors) == 0 {
			return nil, fmt.Errorf("policy: rule %q matches no identity: set spiffe_ids, spiffe_id_prefixes or selectors", r.Name)
		}
		for _, id := range r.SPIFFEIDs {
			if _, err := spiffeid.FromString(id); err != nil {
				return nil, fmt.Errorf("policy: rule %q: spiffe_ids: %q: %w", r.Name, id, err)
			}
		}
		var prefixes []string
		for _, p := range r.SPIFFEIDPrefixes {
			if _, err := spiffeid.FromString(strings.TrimSuffix(p, "/")); err != nil {
				return nil, fmt.Errorf("policy: rule %q: spiffe_id_prefixes: %q: %w", r.Name, p, err)
			}
			prefixes = append(prefixes, strings.TrimSuffix(p, "/")+"/")
		}
		r.SPIFFEIDPrefixes = prefixes
		for _, s := range r.Selectors {
			if typ, val, ok := strings.Cut(s, ":"); !ok || typ == "" || val == "" {
				return nil, fmt.Errorf("policy: rule %q: selector %q is not TYPE:VALUE", r.Name, s)
			}
		}
		if len(r.Steps) == 0 {
			return nil, fmt.Errorf("policy: rule %q grants no steps", r.Name)
		}
		for _, s := range r.Steps {
			if s != "*" && !ValidStepName(s) {
				return nil, fmt.Errorf("policy: rule %q: step %q: use letters, digits, '.', '_' and '-' (or \"*\")", r.Name, s)
			}
		}
		if len(r.WorkspaceRoots) == 0 {
			return nil, fmt.Errorf("policy: rule %q grants no workspace_roots", r.Name)
		}
		var roots []string
		for _, root := range r.WorkspaceRoots {
			if !filepath.IsAbs(root) {
				return nil, fmt.Errorf("policy: rule %q: workspace root %q must be absolute", r.Name, root)
			}
			roots = append(roots, filepath.Clean(root))
		}
		r.WorkspaceRoots = roots
		out = append(out, r.clone())
	}
	return &Policy{rules: out}, nil
}

// DenyAll is the policy with no rules.
func DenyAll() *Policy { return &Policy{} }

// Matching returns (copies of) the rules whose identity matchers match id.
func (p *Policy) Matching(id Identity) []Rule {
	var out []Rule
	for _, r := range p.rules {
		if r.matches(id) {
			out = append(out, r.clone())
		}
	}
	return out
}

// clone copies r deeply, so a Policy never shares slices with callers.
func (r Rule) clone() Rule {
	r.SPIFFEIDs, r.SPIFFEIDPrefixes = slices.Clone(r.SPIFFEIDs), slices.Clone(r.SPIFFEIDPrefixes)
	r.Selectors, r.Steps, r.WorkspaceRoots = slices.Clone(r.Selectors), slices.Clone(r.Steps), slices.Clone(r.WorkspaceRoots)
	return r
}

func (r Rule) matches(id Identity) bool {
	for _, have := range id.SPIFFEIDs {
		if slices.Contains(r.SPIFFEIDs, have) {
			return true
		}
		for _, p := range r.SPIFFEIDPrefixes {
			if strings.HasPrefix(have, p) {
				return true
			}
		}
	}
	if len(r.Selectors) == 0 {
		return false
	}
	for _, s := range r.Selectors {
		if !slices.Contains(id.Selectors, s) {
			return false
		}
	}
	return true
}

// Decide returns the rule that allows id to attest step in workspace (an
// absolute, symlink-free path), or a *Denial saying why not.
func (p *Policy) Decide(id Identity, step, workspace string) (Rule, error) {
	if !filepath.IsAbs(workspace) || filepath.Clean(workspace) != workspace {
		return Rule{}, &Denial{Reason: fmt.Sprintf("workspace %q must be an absolute, clean path", workspace)}
	}
	matching := p.Matching(id)
	if len(matching) == 0 {
		return Rule{}, &Denial{Reason: fmt.Sprintf("no policy rule matches %s", id)}
	}
	var stepOK []Rule
	for _, r := range matching {
		if slices.Contains(r.Steps, step) || slices.Contains(r.Steps, "*") {
			stepOK = append(stepOK, r)
		}
	}
	if len(stepOK) == 0 {
		return Rule{}, &Denial{Reason: fmt.Sprintf("step %q is not allowed for %s: %s", step, id, describe(matching, func(r Rule) []string { return r.Steps }, "allows steps"))}
	}
	for _, r := range stepOK {
		for _, root := range r.WorkspaceRoots {
			if Within(workspace, root) {
				return r, nil
			}
		}
	}
	return Rule{}, &Denial{Reason: fmt.Sprintf("workspace %s is outside the workspace roots granted to %s for step %q: %s",
		workspace, id, step, describe(stepOK, func(r Rule) []string { return r.WorkspaceRoots }, "allows workspaces under"))}
}

func describe(rules []Rule, field func(Rule) []string, verb string) string {
	parts := make([]string, len(rules))
	for i, r := range rules {
		parts[i] = fmt.Sprintf("rule %q %s %s", r.Name, verb, strings.Join(field(r), ", "))
	}
	return strings.Join(parts, "; ")
}

// Within reports whether path is root or lies under it (both clean and
// absolute).
func Within(path, root string) bool {
	if root == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == root || strings.HasPrefix(path, root+"/")
}

// Rules returns a deep copy of the validated rules.
func (p *Policy) Rules() []Rule {
	out := make([]Rule, len(p.rules))
	for i, r := range p.rules {
		out[i] = r.clone()
	}
	return out
}

// Parse reads a policy file: rule blocks only, unknown keys rejected.
func Parse(filename string, src []byte) (*Policy, error) {
	var f File
	if err := config.Decode(filename, src, &f); err != nil {
		return nil, err
	}
	return New(f.Rules)
}

package pipeline

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/attest/verify"
)

// Version is the pipeline policy format this package reads: a policy file
// says `version = 1`.
const Version = 1

// Limits on a policy file.
const (
	MaxPolicySize = 1 << 20
	maxSteps      = 64
	maxSources    = 64
	maxListLen    = 256
)

// Policy is a parsed, validated pipeline policy: the steps of a supply
// chain in order, who may run each, where each step's materials must come
// from, and what the final step must produce. Build it with ParsePolicy;
// it is read-only and safe to share.
type Policy struct {
	// Steps in the order the file names them; the last is the final step,
	// whose products are the artifacts verified.
	Steps []StepRule
	// Sources are the repositories steps may have checked out.
	Sources []SourceRule
	// Digest is the SHA-256 of the policy file's bytes (a VSA's policy
	// digest).
	Digest [sha256.Size]byte
}

// NamesEveryBuilder reports whether every step names the builders (agent
// SPIFFE ID prefixes) it trusts. A workload's identity is the builder's
// own word, so a step that names none trusts every agent of the trust
// domain; a verifier should then ask for a builder constraint of its own.
func (p *Policy) NamesEveryBuilder() bool {
	for _, s := range p.Steps {
		if len(s.BuilderIDPrefixes) == 0 {
			return false
		}
	}
	return len(p.Steps) > 0
}

// MayBuild reports whether an attestation by builder could satisfy some
// step: builder is under verifierPrefixes (when any) and under the
// builder_id_prefixes of a step (or a step names none). One for which it
// is false is refused by every step's identity rule, whatever else it
// holds, so a verifier need not read or check it at all: neither a log
// search nor the walk counts it against their limits, and a builder that
// no rule trusts cannot bury a genuine attestation under its own.
func (p *Policy) MayBuild(builder string, verifierPrefixes []string) bool {
	under := func(prefixes []string) bool {
		return slices.ContainsFunc(prefixes, func(pre string) bool { return verify.UnderPrefix(builder, pre) })
	}
	if len(verifierPrefixes) > 0 && !under(verifierPrefixes) {
		return false
	}
	return slices.ContainsFunc(p.Steps, func(s StepRule) bool { return len(s.BuilderIDPrefixes) == 0 || under(s.BuilderIDPrefixes) })
}

// MayAttest reports whether an attestation of step, by builder, for a
// workload with those SPIFFE IDs and selectors, could satisfy the policy:
// step is one of its steps, and they pass that step's identity rules
// (builder_id_prefixes, and verifierPrefixes when any;
// workload_spiffe_ids, workload_selectors). One for which it is false is
// refused by every rule that could use it, so a log search need not
// rebuild or verify it (LogSearch.Step): a CI tenant that may attest some
// other step, or this step on another agent, cannot bury a released
// artifact under attestations of its own naming it.
func (p *Policy) MayAttest(builder, step string, workloadSPIFFEIDs, workloadSelectors, verifierPrefixes []string) bool {
	s, ok := p.Step(step)
	return ok && checkIdentity(s, verifierPrefixes, &verify.Result{BuilderID: builder,
		Workload: verify.Workload{SPIFFEIDs: workloadSPIFFEIDs, Selectors: workloadSelectors}}) == nil
}

// maxSearchBuilders is the most builders a search names to the server
// (its bound on GET /log/entries's builder parameter).
const maxSearchBuilders = 32

// SearchBuilders returns SPIFFE IDs such that every builder MayBuild
// accepts is one of them or under one, for a log search to name to the
// server (LogSearch.Builders). Where both the verifier and every step
// name prefixes, it is the deeper of each pair where one is under the
// other (a builder must be under both); else whichever of them names
// some. It returns nil, no bound, when neither does, or when a prefix is
// no SPIFFE ID or there are more than the server takes: the server could
// not keep to them exactly, and MayBuild still decides on every entry.
func (p *Policy) SearchBuilders(verifierPrefixes []string) []string {
	var steps []string
	if p.NamesEveryBuilder() {
		for _, s := range p.Steps {
			steps = append(steps, s.BuilderIDPrefixes...)
		}
	}
	var ids []string
	for _, pre := range append(slices.Clone(verifierPrefixes), steps...) {
		id, err := spiffeid.FromString(strings.TrimSuffix(pre, "/"))
		if err != nil {
			return nil
		}
		ids = append(ids, id.String())
	}
	verifier, steps := ids[:len(verifierPrefixes)], ids[len(verifierPrefixes):]
	var out []string
	add := func(id string) {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	switch {
	case len(verifier) > 0 && len(steps) > 0:
		for _, v := range verifier {
			for _, s := range steps {
				if verify.UnderPrefix(s, v) {
					add(s)
				} else if verify.UnderPrefix(v, s) {
					add(v)
				}
			}
		}
		if len(out) == 0 {
			// No builder is under both: MayBuild accepts none, so
			// any name will do; the verifier's first keeps the
			// search to what it said.
			return verifier[:1]
		}
	case len(verifier) > 0:
		for _, v := range verifier {
			add(v)
		}
	case len(steps) > 0:
		for _, s := range steps {
			add(s)
		}
	default:
		return nil
	}
	if len(out) > maxSearchBuilders {
		// More pairs than the server takes: the verifier's own list
		// is a bound too, if it is short enough.
		if out = slices.Compact(slices.Sorted(slices.Values(verifier))); len(verifier) == 0 || len(out) > maxSearchBuilders {
			return nil
		}
	}
	return out
}

// StepRule is a policy's `step "NAME" { ... }` block.
type StepRule struct {
	Name string
	// BuilderIDPrefixes: the agent (builder.id) is one of these or under
	// one; empty allows any agent the trusted root trusts.
	BuilderIDPrefixes []string
	// WorkloadSPIFFEIDs: the calling workload held at least one of these.
	WorkloadSPIFFEIDs []string
	// WorkloadSelectors: the calling workload had every one of these
	// selectors (type:value), as a SPIRE registration entry requires.
	WorkloadSelectors []string
	// MaterialsFrom names earlier steps whose products this step's
	// materials may be.
	MaterialsFrom []string
	// Sources names source blocks: the step must have recorded a git
	// source, each one allowed by one of these; its materials inside a
	// clean allowed work tree come from the source. A later step may
	// take as a material only the products of this step that lie in such
	// a tree (files of the commit), unless ProductsOutsideSource.
	Sources []string
	// ProductsOutsideSource (only with Sources) lets later steps take
	// products of this step that are no file of its source: its own
	// output (a build that reads the source and writes a binary), trusted
	// as far as its workload is.
	ProductsOutsideSource bool
	// Products (final step only) are path.Match patterns, each matching
	// at least one subject name of the final step's attestation.
	Products []string
}

// SourceRule is a policy's `source "NAME" { ... }` block.
type SourceRule struct {
	Name string
	// Repositories are path.Match patterns of the remote URL, compared
	// without a trailing "/" or ".git".
	Repositories []string
	// Commits, when set, are the commits allowed (40 hex digits).
	Commits []string
	// Refs, when set, are path.Match patterns of HEAD's branch
	// (refs/heads/main); a detached HEAD matches none.
	Refs []string
	// RequireClean (default true) refuses a work tree that is not
	// exactly its commit's tree.
	RequireClean bool
}

// file is the policy's HCL (or HCL JSON) schema, decoded strictly.
type file struct {
	Version *int          `hcl:"version"`
	Sources []sourceBlock `hcl:"source,block"`
	Steps   []stepBlock   `hcl:"step,block"`
}

type sourceBlock struct {
	Name         string   `hcl:"name,label"`
	Repositories []string `hcl:"repositories"`
	Commits      []string `hcl:"commits,optional"`
	Refs         []string `hcl:"refs,optional"`
	RequireClean *bool    `hcl:"require_clean,optional"`
}

type stepBlock struct {
	Name                  string   `hcl:"name,label"`
	BuilderIDPrefixes     []string `hcl:"builder_id_prefixes,optional"`
	WorkloadSPIFFEIDs     []string `hcl:"workload_spiffe_ids,optional"`
	WorkloadSelectors     []string `hcl:"workload_selectors,optional"`
	MaterialsFrom         []string `hcl:"materials_from,optional"`
	Sources               []string `hcl:"sources,optional"`
	ProductsOutsideSource bool     `hcl:"products_outside_source,optional"`
	Products              []string `hcl:"products,optional"`
}

// parseBody parses src as HCL native syntax, or as HCL's JSON syntax when
// its first non-space byte is '{' (filename is for messages only).
func parseBody(filename string, src []byte) (hcl.Body, error) {
	if len(src) > MaxPolicySize {
		return nil, fmt.Errorf("pipeline: policy %s is %d bytes, limit is %d", filename, len(src), MaxPolicySize)
	}
	trimmed := bytes.TrimLeft(src, " \t\r\n")
	json := len(trimmed) > 0 && trimmed[0] == '{'
	if err := checkShape(filename, src, json); err != nil {
		return nil, err
	}
	p := hclparse.NewParser()
	var f *hcl.File
	var diags hcl.Diagnostics
	if json {
		f, diags = p.ParseJSON(src, filename)
	} else {
		f, diags = p.ParseHCL(src, filename)
	}
	if diags.HasErrors() {
		return nil, fmt.Errorf("pipeline: policy: %w", diags)
	}
	return f.Body, nil
}

// IsPolicy reports whether src is a pipeline policy rather than another
// kind of policy file: it parses and has a top-level `version` attribute
// or a `step` or `source` block, so that one with a misspelt or
// duplicated version goes to ParsePolicy, which says where. (hallmark
// verify's single-step JSON policy has none of them.)
func IsPolicy(src []byte) bool {
	body, err := parseBody("policy", src)
	if err != nil {
		return false
	}
	content, _, diags := body.PartialContent(&hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "version"}},
		Blocks:     []hcl.BlockHeaderSchema{{Type: "step", LabelNames: []string{"name"}}, {Type: "source", LabelNames: []string{"name"}}},
	})
	return content != nil && (len(content.Blocks) > 0 || !diags.HasErrors() && content.Attributes["version"] != nil)
}

// ParsePolicy decodes a pipeline policy strictly (unknown attributes and
// blocks are errors naming the file, line and column) and validates it.
// filename only names the file in errors.
func ParsePolicy(filename string, src []byte) (*Policy, error) {
	body, err := parseBody(filename, src)
	if err != nil {
		return nil, err
	}
	var f file
	if diags := gohcl.DecodeBody(body, nil, &f); diags.HasErrors() {
		return nil, fmt.Errorf("pipeline: policy: %w", diags)
	}
	if f.Version == nil {
		return nil, fmt.Errorf("pipeline: policy %s: no version: say version = %d", filename, Version)
	}
	if *f.Version != Version {
		return nil, fmt.Errorf("pipeline: policy %s: version %d is not supported (this verifier reads version %d)", filename, *f.Version, Version)
	}
	p := &Policy{Digest: sha256.Sum256(src)}
	for _, s := range f.Sources {
		r := SourceRule{Name: s.Name, Repositories: s.Repositories, Commits: s.Commits, Refs: s.Refs, RequireClean: true}
		if s.RequireClean != nil {
			r.RequireClean = *s.RequireClean
		}
		p.Sources = append(p.Sources, r)
	}
	for _, s := range f.Steps {
		p.Steps = append(p.Steps, StepRule(s))
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("pipeline: policy %s: %w", filename, err)
	}
	return p, nil
}

// validate checks what the schema cannot: names, references between
// blocks, the order of steps, and the syntax of every entry.
func (p *Policy) validate() error {
	if len(p.Steps) == 0 {
		return errors.New("no step blocks: name the steps of the pipeline in order")
	}
	if len(p.Steps) > maxSteps || len(p.Sources) > maxSources {
		return fmt.Errorf("at most %d steps and %d sources", maxSteps, maxSources)
	}
	sources := map[string]bool{}
	for _, s := range p.Sources {
		at := fmt.Sprintf("source %q", s.Name)
		if !validName(s.Name) {
			return fmt.Errorf("%s: use 1-128 letters, digits, '.', '_' and '-'", at)
		}
		if sources[s.Name] {
			return fmt.Errorf("%s: defined twice", at)
		}
		sources[s.Name] = true
		if len(s.Repositories) == 0 {
			return fmt.Errorf("%s: repositories: name at least one repository URL (pattern)", at)
		}
		if err := checkList(at+": repositories", s.Repositories, checkPattern); err != nil {
			return err
		}
		if err := checkList(at+": commits", s.Commits, checkCommit); err != nil {
			return err
		}
		if err := checkList(at+": refs", s.Refs, checkRef); err != nil {
			return err
		}
	}
	// Names first: a step block given twice is that, whatever else the
	// blocks between the two get wrong.
	named := map[string]bool{}
	for _, s := range p.Steps {
		if named[s.Name] {
			return fmt.Errorf("step %q: defined twice", s.Name)
		}
		named[s.Name] = true
	}
	steps := map[string]int{}
	usedSources := map[string]bool{}
	consumed := map[string]bool{}
	for i, s := range p.Steps {
		at := fmt.Sprintf("step %q", s.Name)
		if !validName(s.Name) {
			return fmt.Errorf("%s: use 1-128 letters, digits, '.', '_' and '-'", at)
		}
		if len(s.WorkloadSPIFFEIDs) == 0 && len(s.WorkloadSelectors) == 0 {
			return fmt.Errorf("%s: say who may run it: workload_spiffe_ids or workload_selectors", at)
		}
		if err := checkList(at+": builder_id_prefixes", s.BuilderIDPrefixes, func(v string) error {
			_, err := spiffeid.FromString(strings.TrimSuffix(v, "/"))
			return err
		}); err != nil {
			return err
		}
		if err := checkList(at+": workload_spiffe_ids", s.WorkloadSPIFFEIDs, func(v string) error {
			_, err := spiffeid.FromString(v)
			return err
		}); err != nil {
			return err
		}
		if err := checkList(at+": workload_selectors", s.WorkloadSelectors, checkSelector); err != nil {
			return err
		}
		if err := checkList(at+": materials_from", s.MaterialsFrom, func(v string) error {
			if _, ok := steps[v]; !ok {
				if slices.ContainsFunc(p.Steps, func(o StepRule) bool { return o.Name == v }) {
					return fmt.Errorf("step %q comes later: a step takes materials only from earlier steps", v)
				}
				return fmt.Errorf("no step %q", v)
			}
			consumed[v] = true
			return nil
		}); err != nil {
			return err
		}
		if err := checkList(at+": sources", s.Sources, func(v string) error {
			if !sources[v] {
				return fmt.Errorf("no source %q", v)
			}
			usedSources[v] = true
			return nil
		}); err != nil {
			return err
		}
		if s.ProductsOutsideSource && len(s.Sources) == 0 {
			return fmt.Errorf("%s: products_outside_source: only for a step with sources (every other step's products are its own output)", at)
		}
		if len(s.Products) > 0 && i != len(p.Steps)-1 {
			return fmt.Errorf("%s: products: only the final step's products are required (the last step block, %q)", at, p.Steps[len(p.Steps)-1].Name)
		}
		if err := checkList(at+": products", s.Products, checkPattern); err != nil {
			return err
		}
		steps[s.Name] = i
	}
	for _, s := range p.Steps[:len(p.Steps)-1] {
		if !consumed[s.Name] {
			return fmt.Errorf("step %q: no later step takes materials from it (materials_from), so nothing links it to the final artifact", s.Name)
		}
	}
	for _, s := range p.Sources {
		if !usedSources[s.Name] {
			return fmt.Errorf("source %q: no step names it in sources", s.Name)
		}
	}
	return nil
}

// Step returns the rule of the step named name.
func (p *Policy) Step(name string) (StepRule, bool) {
	i := slices.IndexFunc(p.Steps, func(s StepRule) bool { return s.Name == name })
	if i < 0 {
		return StepRule{}, false
	}
	return p.Steps[i], true
}

// Source returns the source rule named name.
func (p *Policy) Source(name string) (SourceRule, bool) {
	i := slices.IndexFunc(p.Sources, func(s SourceRule) bool { return s.Name == name })
	if i < 0 {
		return SourceRule{}, false
	}
	return p.Sources[i], true
}

func checkList(at string, vals []string, check func(string) error) error {
	if len(vals) > maxListLen {
		return fmt.Errorf("%s: %d entries, at most %d", at, len(vals), maxListLen)
	}
	for i, v := range vals {
		if slices.Contains(vals[:i], v) {
			return fmt.Errorf("%s: %q listed twice", at, v)
		}
		if err := check(v); err != nil {
			return fmt.Errorf("%s: %q: %w", at, v, err)
		}
	}
	return nil
}

// validName is the agent's rule for step names: 1-128 letters, digits,
// '.', '_' and '-'.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func checkPattern(v string) error {
	if v == "" {
		return errors.New("empty pattern")
	}
	if _, err := path.Match(v, ""); err != nil {
		return fmt.Errorf("not a pattern (path.Match syntax): %w", err)
	}
	return nil
}

func checkCommit(v string) error {
	if len(v) != 40 || strings.Trim(v, "0123456789abcdef") != "" {
		return errors.New("a commit is 40 lowercase hex digits (the full SHA-1)")
	}
	return nil
}

func checkRef(v string) error {
	if !strings.HasPrefix(v, "refs/") {
		return errors.New("a ref starts with refs/ (refs/heads/main, refs/tags/v*)")
	}
	return checkPattern(v)
}

func checkSelector(v string) error {
	typ, val, ok := strings.Cut(v, ":")
	if !ok || typ == "" || val == "" {
		return errors.New("a selector is type:value (unix:uid:1001)")
	}
	return nil
}

package pipeline

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/hallmark-dev/hallmark/attest/verify"
)

// ErrNotVerified matches every *RuleError with errors.Is.
var ErrNotVerified = errors.New("pipeline: not verified")

// Rule names that are not an attribute of a step or source block.
const (
	// RuleLimits: the walk would verify more attestations than allowed.
	RuleLimits = "limits"
)

// Failure is the one rule that refused a chain, and why. Rule is the
// policy attribute that failed, as a dotted path: step.NAME.ATTRIBUTE
// (step.build.workload_spiffe_ids), source.NAME.ATTRIBUTE
// (source.widget.commits), or step.NAME alone when no attestation of a
// required step was found (a missing step).
type Failure struct {
	Step   string `json:"step,omitempty"`
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
}

// RuleError is a refused chain: the Failure, as an error.
type RuleError struct{ Failure Failure }

func (e *RuleError) Error() string { return "pipeline: " + e.Failure.String() }

// Is makes errors.Is(err, ErrNotVerified) true.
func (e *RuleError) Is(target error) bool { return target == ErrNotVerified }

// Options is what Verify needs besides the policy and the artifact.
type Options struct {
	// Verify holds the trusted root every bundle is verified against
	// (required). Its Policy must be nil: the pipeline policy's rules
	// replace it.
	Verify verify.Options
	// Finder finds attestations: a BundleSet, a LogSearch, or both
	// through Finders.
	Finder Finder
	// MaxAttestations bounds how many distinct bundles the walk verifies
	// (default 1000); beyond it the chain is refused (rule "limits").
	MaxAttestations int
	// BuilderIDPrefixes, when set, is the verifier's own builder
	// constraint: every step's builder must also be one of these or under
	// one (rule step.NAME.builder_id_prefixes), whatever the step names.
	BuilderIDPrefixes []string
}

// Verdicts of a Node.
const (
	VerdictVerified     = "verified"
	VerdictRefused      = "refused"       // one of the step's own rules failed
	VerdictInputRefused = "input refused" // its rules hold; an input did not
)

// Node is one attestation the walk examined, as a step of the chain.
type Node struct {
	ID      int    `json:"id"`
	Step    string `json:"step"`
	Verdict string `json:"verdict"`
	// Origin is where the bundle came from (file, log entry), and URI
	// locates it when its finder could say (Candidate.URI).
	Origin string `json:"origin"`
	URI    string `json:"uri,omitempty"`
	// BundleSHA256 is the SHA-256 of the bundle's bytes as verified.
	BundleSHA256 string `json:"bundleSha256"`
	// Attestation is what verify.Verify proved about the bundle.
	Attestation *verify.Result `json:"attestation"`
	BuildType   string         `json:"buildType"`
	// Sources are the git work trees the agent read for this step.
	Sources []GitSource `json:"sources,omitempty"`
	// CallerClaims are what the caller claimed (CI job, run, ref):
	// recorded, never verified, never used by a rule.
	CallerClaims map[string]string `json:"callerClaims,omitempty"`
	// Inputs say where the step's materials came from.
	Inputs  []Link   `json:"inputs,omitempty"`
	Failure *Failure `json:"failure,omitempty"`

	first *Failure      // own failure or the first failing input's
	trees []allowedTree // its clean allowed work trees (a step with sources)
}

// Link is a group of a step's materials with one origin: an earlier
// step's attestation (Node) or one of the step's own git sources
// (SourcePath).
type Link struct {
	Step       string   `json:"step,omitempty"`
	Node       *int     `json:"node,omitempty"`
	SourcePath string   `json:"sourcePath,omitempty"`
	Source     string   `json:"source,omitempty"` // the policy's source block
	Materials  []string `json:"materials"`
}

// Report is the outcome of Verify: the chain as examined, with each
// step's verdict, and on refusal the one rule that failed.
type Report struct {
	Verified bool           `json:"verified"`
	Artifact verify.Subject `json:"artifact"`
	// PolicySHA256 is the SHA-256 of the policy file.
	PolicySHA256 string `json:"policySha256"`
	// Root is the ID of the final step's node, when one was examined.
	Root *int `json:"root,omitempty"`
	// Nodes are every attestation examined, candidates that failed
	// included; Link.Node and Root index them.
	Nodes   []*Node  `json:"nodes"`
	Failure *Failure `json:"failure,omitempty"`
}

// Chain returns the nodes of the verified chain (reachable from the root
// through verified links), in walk order; on a refusal, every node
// examined.
func (r *Report) Chain() []*Node {
	if !r.Verified || r.Root == nil {
		return r.Nodes
	}
	return r.reachable(*r.Root)
}

// reachable returns the node root and every node its links lead to, in
// walk order.
func (r *Report) reachable(root int) []*Node {
	seen := map[int]bool{}
	var out []*Node
	var visit func(id int)
	visit = func(id int) {
		if seen[id] {
			return
		}
		seen[id] = true
		n := r.Nodes[id]
		out = append(out, n)
		for _, l := range n.Inputs {
			if l.Node != nil {
				visit(*l.Node)
			}
		}
	}
	visit(root)
	return out
}

// attestation is a verified bundle and what the walk reads from it.
type attestation struct {
	origin string
	uri    string
	sha    string
	res    *verify.Result
	prov   stepProvenance
}

type walker struct {
	ctx  context.Context
	p    *Policy
	opts Options
	max  int

	report   *Report
	bundles  int                     // how many an enumerable finder holds
	verified map[string]*attestation // bundle SHA-256 -> verified
	refused  map[string]error        // bundle SHA-256 -> why not
	claims   map[string]claim        // bundle SHA-256 -> what it claims, unverified
	checked  int                     // bundles verified, whatever the outcome (the limit's count)
	found    map[string][]Candidate  // digest -> Find's answer
	byStep   map[string][]*attestation
	producer map[string][]*attestation // step "|" subject SHA-256 -> verified attestations
	nodes    map[string]*Node          // step "|" bundle SHA-256
	all      bool                      // every bundle of an enumerable finder verified
}

// Verify checks that artifact is the product of the policy's final step
// and walks back to the source: every step's attestation is found through
// opts.Finder and fully verified (verify.Verify: signature, log entry,
// timestamp, certificate chain to the trusted root), and every rule of the
// policy is checked. The Report is returned in every case where the chain
// was examined; when it is refused the error is a *RuleError naming the
// one rule that failed (the first in walk order), else a plain error for
// a call that could not be made (no trusted root, a finder that fails).
func Verify(ctx context.Context, p *Policy, artifact verify.Digest, opts Options) (*Report, error) {
	if p == nil || opts.Verify.TrustedRoot == nil || opts.Finder == nil {
		return nil, errors.New("pipeline: a policy, Options.Verify.TrustedRoot and Options.Finder are required")
	}
	if opts.Verify.Policy != nil {
		return nil, errors.New("pipeline: Options.Verify.Policy must be nil: the pipeline policy's step rules apply")
	}
	w := &walker{
		ctx: ctx, p: p, opts: opts, max: cmp.Or(opts.MaxAttestations, 1000),
		verified: map[string]*attestation{}, refused: map[string]error{}, claims: map[string]claim{},
		found: map[string][]Candidate{}, byStep: map[string][]*attestation{}, producer: map[string][]*attestation{}, nodes: map[string]*Node{},
		report: &Report{
			Artifact:     verify.Subject{Name: artifact.Name, SHA256: hex.EncodeToString(artifact.SHA256[:])},
			PolicySHA256: hex.EncodeToString(p.Digest[:]),
			Nodes:        []*Node{},
		},
	}
	fail, err := w.walk()
	var le *limitError
	if errors.As(err, &le) {
		fail, err = &le.Failure, nil
	}
	if err != nil {
		return nil, err
	}
	if fail != nil {
		w.report.Failure = fail
		return w.report, &RuleError{Failure: *fail}
	}
	w.report.Verified = true
	return w.report, nil
}

// walk returns the first failure, or nil when the chain verifies.
func (w *walker) walk() (*Failure, error) {
	final := w.p.Steps[len(w.p.Steps)-1]
	digest := w.report.Artifact.SHA256
	cands, err := w.producers(final, digest)
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return w.noProducer(final, digest, fmt.Sprintf("no verified attestation of step %s has the artifact (sha256 %s) as a subject", final.Name, digest))
	}
	var first *Node
	for _, a := range cands {
		n, err := w.evalStep(final, a, true)
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = n
		}
		if n.first == nil {
			first = n
			break
		}
	}
	w.report.Root = &first.ID
	if first.first != nil {
		return first.first, nil
	}
	// Every step must be part of the chain that verified (not merely of
	// a candidate examined and refused): a step no material of it came
	// from is missing.
	reached := map[string]bool{}
	for _, n := range w.report.reachable(first.ID) {
		reached[n.Step] = true
	}
	for _, s := range w.p.Steps {
		if !reached[s.Name] {
			return &Failure{Step: s.Name, Rule: "step." + s.Name,
				Reason: fmt.Sprintf("missing step: no material of the chain came from an attestation of %s (the steps that take materials from it had none from it)", s.Name)}, nil
		}
	}
	return nil, nil
}

// noProducer is the failure when no verified attestation of step s has
// digest as a subject: a missing step when the finder can show that no
// attestation of s exists at all, otherwise the consumer's rule (why).
func (w *walker) noProducer(s StepRule, digest, why string) (*Failure, error) {
	if err := w.verifyAll(); err != nil {
		return nil, err
	}
	if w.all && len(w.byStep[s.Name]) == 0 {
		return &Failure{Step: s.Name, Rule: "step." + s.Name,
			Reason: fmt.Sprintf("missing step: none of the %d bundles is a verified attestation of step %s%s", w.bundles, s.Name, w.refusedSummary())}, nil
	}
	return &Failure{Step: s.Name, Rule: "step." + s.Name, Reason: why + w.otherRunHint(s.Name, digest, "") + w.refusedSummary()}, nil
}

// producers returns the verified attestations of step s that have digest
// as a subject, newest first: those already verified, then what the
// finder finds.
func (w *walker) producers(s StepRule, digest string) ([]*attestation, error) {
	if err := w.search(digest); err != nil {
		return nil, err
	}
	return w.known(s, digest), nil
}

// search asks the finder for digest, once, and verifies what it finds.
func (w *walker) search(digest string) error {
	if _, ok := w.found[digest]; ok {
		return nil
	}
	cands, err := w.opts.Finder.Find(w.ctx, digest)
	if err != nil {
		return err
	}
	w.found[digest] = cands
	var d verify.Digest
	if _, err := hex.Decode(d.SHA256[:], []byte(digest)); err != nil {
		return fmt.Errorf("pipeline: digest %q: %w", digest, err)
	}
	for _, c := range cands {
		if err := w.verifyCandidate(c, d); err != nil {
			return err
		}
	}
	return nil
}

// known returns the verified attestations of step s that have digest as
// a subject, newest first: a look-up, so that a step with many materials
// costs no scan of every subject of every attestation per material.
func (w *walker) known(s StepRule, digest string) []*attestation {
	out := slices.Clone(w.producer[s.Name+"|"+digest])
	slices.SortStableFunc(out, func(a, b *attestation) int {
		if c := b.res.SignedAt.Compare(a.res.SignedAt); c != 0 {
			return c
		}
		return strings.Compare(a.origin, b.origin)
	})
	return out
}

// verifyBundle is verify.Verify (tests count its calls).
var verifyBundle = verify.Verify

// limitError stops the walk when it would verify too many bundles.
type limitError struct{ Failure Failure }

func (e *limitError) Error() string { return e.Failure.Reason }

// verifyCandidate verifies c once, against d, remembering the outcome;
// past the limit it returns a *limitError. A bundle whose payload does
// not even claim d is skipped unverified: a finder (a log server) may
// answer with anything, and each verification costs signatures and a
// certificate chain, so every one made counts against the limit.
func (w *walker) verifyCandidate(c Candidate, d verify.Digest) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	sum := sha256.Sum256(c.Bundle)
	key := hex.EncodeToString(sum[:])
	if _, ok := w.verified[key]; ok {
		return nil
	}
	if _, ok := w.refused[key]; ok {
		return nil
	}
	cl, ok := w.claims[key]
	if !ok {
		cl = claimed(c.Bundle)
		w.claims[key] = cl
	}
	if !slices.Contains(cl.subjects, hex.EncodeToString(d.SHA256[:])) {
		return nil
	}
	// A builder no rule accepts fails every step's identity rule: not
	// verified, and not counted (Policy.MayBuild).
	if !w.p.MayBuild(cl.builder, w.opts.BuilderIDPrefixes) {
		w.refused[key] = fmt.Errorf("%s: not verified: its builder %q (as it claims) is allowed by no step's builder_id_prefixes or the verifier's", c.Origin, cl.builder)
		return nil
	}
	if w.checked >= w.max {
		return &limitError{Failure{Rule: RuleLimits, Reason: fmt.Sprintf("more than %d attestations to verify (Options.MaxAttestations)", w.max)}}
	}
	w.checked++
	res, err := verifyBundle(c.Bundle, []verify.Digest{d}, w.opts.Verify)
	if err != nil {
		w.refused[key] = fmt.Errorf("%s: %w", c.Origin, err)
		return nil
	}
	prov, err := readProvenance(c.Bundle)
	if err != nil {
		w.refused[key] = fmt.Errorf("%s: predicate: %w", c.Origin, err)
		return nil
	}
	a := &attestation{origin: c.Origin, uri: c.URI, sha: key, res: res, prov: prov}
	w.verified[key] = a
	w.byStep[res.Step] = append(w.byStep[res.Step], a)
	for _, sub := range res.Subjects {
		k := res.Step + "|" + sub.SHA256
		if p := w.producer[k]; len(p) == 0 || p[len(p)-1] != a {
			w.producer[k] = append(p, a)
		}
	}
	return nil
}

// verifyAll verifies every bundle of an enumerable finder once, so that
// a failure can say whether a step is missing altogether.
func (w *walker) verifyAll() error {
	if w.all {
		return nil
	}
	e, ok := w.opts.Finder.(enumerator)
	if !ok {
		return nil
	}
	all, ok := e.enumerate()
	if !ok {
		return nil
	}
	for _, c := range all {
		subs := claimedSubjects(c.Bundle)
		if len(subs) == 0 {
			continue
		}
		var d verify.Digest
		if _, err := hex.Decode(d.SHA256[:], []byte(subs[0])); err != nil {
			continue
		}
		if err := w.verifyCandidate(c, d); err != nil {
			return err
		}
	}
	w.all, w.bundles = true, len(all)
	return nil
}

// refusedSummary names the bundles that did not verify, if any.
func (w *walker) refusedSummary() string {
	if len(w.refused) == 0 {
		return ""
	}
	keys := make([]string, 0, len(w.refused))
	for k := range w.refused {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return strings.Compare(w.refused[a].Error(), w.refused[b].Error()) })
	msg := fmt.Sprintf("; %d bundle(s) did not verify: %v", len(keys), w.refused[keys[0]])
	if len(keys) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(keys)-1)
	}
	return msg
}

// otherRunHint points at an attestation of step that has a product of
// the same name as the material but another digest: a bundle of another
// run, or a file replaced between the steps.
func (w *walker) otherRunHint(step, digest, name string) string {
	if name == "" {
		return ""
	}
	for _, a := range w.byStep[step] {
		for _, s := range a.res.Subjects {
			if s.SHA256 != digest && (s.Name == name || path.Base(s.Name) == path.Base(name)) {
				return fmt.Sprintf("; the attestation of %s from %s has %s with sha256 %s: another run's, or the file was replaced after %s", step, a.origin, s.Name, s.SHA256, step)
			}
		}
	}
	return ""
}

// evalStep checks attestation a as step s and, recursively, the
// attestations its materials came from. Each (step, bundle) is evaluated
// once.
func (w *walker) evalStep(s StepRule, a *attestation, final bool) (*Node, error) {
	key := s.Name + "|" + a.sha
	if n, ok := w.nodes[key]; ok {
		return n, nil
	}
	n := &Node{
		ID: len(w.report.Nodes), Step: s.Name, Origin: a.origin, URI: a.uri, BundleSHA256: a.sha,
		Attestation: a.res, BuildType: a.prov.buildType, Sources: a.prov.sources, CallerClaims: a.prov.claims,
	}
	w.report.Nodes = append(w.report.Nodes, n)
	w.nodes[key] = n
	refuse := func(f *Failure) (*Node, error) {
		n.Verdict, n.Failure, n.first = VerdictRefused, f, f
		return n, nil
	}
	if f := checkIdentity(s, w.opts.BuilderIDPrefixes, a.res); f != nil {
		return refuse(f)
	}
	allowed, f := w.checkSources(s, a.prov.sources)
	if f != nil {
		return refuse(f)
	}
	n.trees = allowed
	if final {
		if f := checkProducts(s, a.res); f != nil {
			return refuse(f)
		}
		// The artifact is passed on to whoever verifies it, as a
		// material is to the next step.
		if digest := w.report.Artifact.SHA256; !passesOn(s, n, digest) {
			return refuse(outsideSource(fmt.Sprintf("the artifact (sha256 %s)", digest), digest, n))
		}
	}

	// Materials, sorted by name: each from a clean allowed work tree of
	// the step, or a product of a verified attestation of a step in
	// materials_from that itself verifies.
	mats := slices.Clone(a.prov.materials)
	slices.SortFunc(mats, func(x, y Material) int { return strings.Compare(x.Name, y.Name) })
	links := map[string]*Link{}
	var order []string
	addLink := func(key string, l Link, material string) {
		if links[key] == nil {
			links[key] = &l
			order = append(order, key)
		}
		links[key].Materials = append(links[key].Materials, material)
	}
	for _, m := range mats {
		if src, ok := coveredBy(allowed, m.Name); ok {
			addLink("source|"+src.path, Link{SourcePath: src.path, Source: src.rule}, m.Name)
			continue
		}
		producer, failed, outside, err := w.producerOf(s, m)
		if err != nil {
			return nil, err
		}
		if producer != nil {
			id := producer.ID
			addLink("node|"+producer.Step+"|"+producer.BundleSHA256, Link{Step: producer.Step, Node: &id}, m.Name)
			continue
		}
		if failed != nil {
			id := failed.ID
			addLink("node|"+failed.Step+"|"+failed.BundleSHA256, Link{Step: failed.Step, Node: &id}, m.Name)
			n.Inputs = linkList(links, order)
			n.Verdict, n.first = VerdictInputRefused, failed.first
			return n, nil
		}
		if outside != nil {
			id := outside.ID
			addLink("node|"+outside.Step+"|"+outside.BundleSHA256, Link{Step: outside.Step, Node: &id}, m.Name)
			n.Inputs = linkList(links, order)
			return refuse(outsideSource(fmt.Sprintf("material %s (sha256 %s) of step %s", m.Name, m.SHA256, s.Name), m.SHA256, outside))
		}
		fail, err := w.unproduced(s, m, len(allowed) > 0)
		if err != nil {
			return nil, err
		}
		n.Inputs = linkList(links, order)
		return refuse(fail)
	}
	n.Inputs = linkList(links, order)
	n.Verdict = VerdictVerified
	return n, nil
}

func linkList(links map[string]*Link, order []string) []Link {
	out := make([]Link, 0, len(order))
	for _, k := range order {
		out = append(out, *links[k])
	}
	return out
}

// producerOf finds the attestation material m of step s came from: the
// first (newest) verified attestation, of a step s takes materials from,
// that has m as a product and itself verifies. Otherwise it returns the
// first such attestation that verifies but, as a step with sources, has m
// only as a product that is no file of its source (outside), or else the
// first that was refused (failed), if any.
func (w *walker) producerOf(s StepRule, m Material) (ok, failed, outside *Node, err error) {
	// First the attestations already verified (a step's products are
	// usually all materials of the next: one search finds them all), then
	// what a search for the material finds.
	for pass := 0; pass < 2; pass++ {
		if pass == 1 {
			if err := w.search(m.SHA256); err != nil {
				return nil, nil, nil, err
			}
		}
		for _, from := range s.MaterialsFrom {
			t, _ := w.p.Step(from)
			for _, a := range w.known(t, m.SHA256) {
				n, err := w.evalStep(t, a, false)
				if err != nil {
					return nil, nil, nil, err
				}
				switch {
				case n.first != nil:
					if failed == nil {
						failed = n
					}
				case !passesOn(t, n, m.SHA256):
					if outside == nil {
						outside = n
					}
				default:
					return n, nil, nil, nil
				}
			}
		}
	}
	if outside != nil {
		return nil, nil, outside, nil
	}
	return nil, failed, nil, nil
}

// passesOn reports whether node n of step t may pass on its product of
// digest to a later step. A step with sources passes on only files of a
// work tree it recorded that its sources allow (clean, unless a source
// says require_clean = false), not under the tree's .git: else its
// products could be anything, with the commit it recorded as their
// credential. With products_outside_source, any of its products.
func passesOn(t StepRule, n *Node, digest string) bool {
	if len(t.Sources) == 0 || t.ProductsOutsideSource {
		return true
	}
	return slices.ContainsFunc(n.Attestation.Subjects, func(sub verify.Subject) bool {
		return sub.SHA256 == digest && slices.ContainsFunc(n.trees, func(t allowedTree) bool { return t.holds(sub.Name) })
	})
}

// outsideSource is the failure of what (a material, the artifact), of
// that digest, which step producer.Step, a step with sources, produced
// outside its source.
func outsideSource(what, digest string, producer *Node) *Failure {
	var names, trees []string
	for _, sub := range producer.Attestation.Subjects {
		if sub.SHA256 == digest {
			names = append(names, sub.Name)
		}
	}
	for _, t := range producer.Sources {
		state := "clean"
		if !t.Clean {
			state = "not clean"
		}
		trees = append(trees, t.Path+" ("+state+")")
	}
	return &Failure{Step: producer.Step, Rule: "step." + producer.Step + ".sources",
		Reason: fmt.Sprintf("%s is %s's product %s (%s), which lies in no work tree its sources allow (work trees: %s; a .git directory is the repository, not the commit's tree): a step with sources passes on only its source's files, unless the policy sets products_outside_source = true for it",
			what, producer.Step, truncList(names, 5), producer.Origin, strings.Join(trees, ", "))}
}

// unproduced is the failure of a material no allowed step produced and
// no allowed source covers.
func (w *walker) unproduced(s StepRule, m Material, hasSource bool) (*Failure, error) {
	if err := w.verifyAll(); err != nil {
		return nil, err
	}
	if w.all {
		for _, from := range s.MaterialsFrom {
			if len(w.byStep[from]) == 0 {
				return &Failure{Step: from, Rule: "step." + from,
					Reason: fmt.Sprintf("missing step: none of the %d bundles is a verified attestation of step %s (step %s takes its material %s from it)%s",
						w.bundles, from, s.Name, m.Name, w.refusedSummary())}, nil
			}
		}
	}
	var why strings.Builder
	fmt.Fprintf(&why, "material %s (sha256 %s) is ", m.Name, m.SHA256)
	if len(s.MaterialsFrom) > 0 {
		fmt.Fprintf(&why, "a product of no verified attestation of %s", strings.Join(s.MaterialsFrom, " or "))
	} else {
		why.WriteString("not allowed: the step takes materials from no earlier step")
	}
	if hasSource {
		why.WriteString(", and lies in no clean work tree of an allowed source")
	}
	for _, from := range s.MaterialsFrom {
		why.WriteString(w.otherRunHint(from, m.SHA256, m.Name))
	}
	return &Failure{Step: s.Name, Rule: "step." + s.Name + ".materials_from", Reason: why.String()}, nil
}

// checkIdentity applies the step's builder and workload rules, and the
// verifier's own builder prefixes (when any).
func checkIdentity(s StepRule, verifierPrefixes []string, r *verify.Result) *Failure {
	at := "step." + s.Name + "."
	for _, prefixes := range [][]string{s.BuilderIDPrefixes, verifierPrefixes} {
		if len(prefixes) > 0 && !slices.ContainsFunc(prefixes, func(p string) bool { return verify.UnderPrefix(r.BuilderID, p) }) {
			return &Failure{Step: s.Name, Rule: at + "builder_id_prefixes",
				Reason: fmt.Sprintf("builder %s is under none of %s", r.BuilderID, strings.Join(prefixes, ", "))}
		}
	}
	if len(s.WorkloadSPIFFEIDs) > 0 && !slices.ContainsFunc(r.Workload.SPIFFEIDs, func(id string) bool { return slices.Contains(s.WorkloadSPIFFEIDs, id) }) {
		held := "no SPIFFE ID"
		if len(r.Workload.SPIFFEIDs) > 0 {
			held = strings.Join(r.Workload.SPIFFEIDs, ", ")
		}
		return &Failure{Step: s.Name, Rule: at + "workload_spiffe_ids",
			Reason: fmt.Sprintf("the step was attested for a workload with %s, none of the allowed %s", held, strings.Join(s.WorkloadSPIFFEIDs, ", "))}
	}
	for _, sel := range s.WorkloadSelectors {
		if !slices.Contains(r.Workload.Selectors, sel) {
			return &Failure{Step: s.Name, Rule: at + "workload_selectors",
				Reason: fmt.Sprintf("the workload did not have selector %s (it had %s)", sel, strings.Join(r.Workload.Selectors, ", "))}
		}
	}
	return nil
}

// checkProducts applies the final step's products rule.
func checkProducts(s StepRule, r *verify.Result) *Failure {
	for _, pat := range s.Products {
		if !slices.ContainsFunc(r.Subjects, func(sub verify.Subject) bool { ok, _ := path.Match(pat, sub.Name); return ok }) {
			names := make([]string, 0, len(r.Subjects))
			for _, sub := range r.Subjects {
				names = append(names, sub.Name)
			}
			return &Failure{Step: s.Name, Rule: "step." + s.Name + ".products",
				Reason: fmt.Sprintf("no product matches %q (products: %s)", pat, truncList(names, 10))}
		}
	}
	return nil
}

// allowedTree is a recorded work tree that a source rule allows.
type allowedTree struct {
	path, rule string
	clean      bool
}

// checkSources applies the step's sources rule to every git source the
// step recorded and returns the work trees allowed.
func (w *walker) checkSources(s StepRule, srcs []GitSource) ([]allowedTree, *Failure) {
	if len(s.Sources) == 0 {
		return nil, nil
	}
	if len(srcs) == 0 {
		return nil, &Failure{Step: s.Name, Rule: "step." + s.Name + ".sources",
			Reason: "the attestation records no git source (was the step's workspace, or a material directory, a git work tree? attestations before build type step/v2 record none)"}
	}
	var out []allowedTree
	for _, g := range srcs {
		var firstFail *Failure
		matched := ""
		for _, name := range s.Sources {
			r, _ := w.p.Source(name)
			if f := matchSource(s.Name, r, g); f != nil {
				if firstFail == nil {
					firstFail = f
				}
				continue
			}
			matched = name
			break
		}
		if matched == "" {
			if len(s.Sources) > 1 {
				firstFail = &Failure{Step: s.Name, Rule: "step." + s.Name + ".sources",
					Reason: fmt.Sprintf("work tree %s matches none of the sources %s; first: %s: %s", g.Path, strings.Join(s.Sources, ", "), firstFail.Rule, firstFail.Reason)}
			}
			return nil, firstFail
		}
		out = append(out, allowedTree{path: g.Path, rule: matched, clean: g.Clean})
	}
	return out, nil
}

// matchSource applies source rule r to git source g of step.
func matchSource(step string, r SourceRule, g GitSource) *Failure {
	at := "source." + r.Name + "."
	f := func(attr, reason string) *Failure {
		return &Failure{Step: step, Rule: at + attr, Reason: fmt.Sprintf("work tree %s of step %s: %s", g.Path, step, reason)}
	}
	repo := normalizeRepo(g.RemoteURL)
	if g.RemoteURL == "" {
		return f("repositories", "the repository names no remote URL")
	}
	if !slices.ContainsFunc(r.Repositories, func(p string) bool { ok, _ := path.Match(normalizeRepo(p), repo); return ok }) {
		return f("repositories", fmt.Sprintf("remote %s is none of %s", g.RemoteURL, strings.Join(r.Repositories, ", ")))
	}
	if len(r.Commits) > 0 && !slices.Contains(r.Commits, g.Commit) {
		return f("commits", fmt.Sprintf("commit %s is none of the allowed %s", g.Commit, truncList(r.Commits, 5)))
	}
	if len(r.Refs) > 0 {
		if g.Ref == "" {
			return f("refs", "HEAD is detached (no branch), and the source allows only "+strings.Join(r.Refs, ", "))
		}
		if !slices.ContainsFunc(r.Refs, func(p string) bool { ok, _ := path.Match(p, g.Ref); return ok }) {
			return f("refs", fmt.Sprintf("branch %s is none of %s", g.Ref, strings.Join(r.Refs, ", ")))
		}
	}
	if r.RequireClean && !g.Clean {
		return f("require_clean", fmt.Sprintf("the work tree was not clean at commit %s (a changed, missing or extra file), and the source requires a clean tree", g.Commit))
	}
	return nil
}

// coveredBy returns the clean allowed work tree whose commit holds
// material name: a file beneath the tree, not in its .git (the
// repository, which the clean check does not compare with the commit).
func coveredBy(trees []allowedTree, name string) (allowedTree, bool) {
	for _, t := range trees {
		if t.clean && t.holds(name) {
			return t, true
		}
	}
	return allowedTree{}, false
}

// holds reports whether name is a file beneath the work tree, not in its
// .git.
func (t allowedTree) holds(name string) bool {
	rel, inside := name, t.path == "."
	if !inside {
		rel, inside = strings.CutPrefix(name, t.path+"/")
	}
	return inside && rel != ".git" && !strings.HasPrefix(rel, ".git/")
}

// normalizeRepo compares repository URLs without a trailing "/" or ".git".
func normalizeRepo(u string) string {
	return strings.TrimSuffix(strings.TrimSuffix(u, "/"), ".git")
}

func truncList(vals []string, n int) string {
	if len(vals) <= n {
		return strings.Join(vals, ", ")
	}
	return strings.Join(vals[:n], ", ") + fmt.Sprintf(", ... (%d in all)", len(vals))
}

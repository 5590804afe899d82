package pipeline

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// WriteText prints the report for people: the verdict (and, when refused,
// the one rule that failed and why), then the chain as a tree from the
// artifact back to the source, one line per attestation with its verdict.
// An attestation that feeds several steps is printed once and referred to
// after.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Verified {
		fmt.Fprintf(&b, "VERIFIED: %s (sha256 %s) against pipeline policy sha256:%s\n", r.Artifact.Name, r.Artifact.SHA256, short(r.PolicySHA256))
	} else {
		f := r.Failure
		fmt.Fprintf(&b, "NOT VERIFIED: %s (sha256 %s)\n  rule:   %s\n  reason: %s\n", r.Artifact.Name, r.Artifact.SHA256, f.Rule, f.Reason)
	}
	fmt.Fprintf(&b, "\n%s\n", r.Artifact.Name)
	if r.Root == nil {
		if r.Failure != nil {
			fmt.Fprintf(&b, "└── %s  ✗ %s\n", r.Failure.Step, r.Failure.Rule)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	shown := map[int]bool{}
	r.writeNode(&b, r.Nodes[*r.Root], "", true, shown)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) writeNode(b *strings.Builder, n *Node, indent string, last bool, shown map[int]bool) {
	branch, next := "├── ", indent+"│   "
	if last {
		branch, next = "└── ", indent+"    "
	}
	mark := "✓"
	if n.Verdict != VerdictVerified {
		mark = "✗"
	}
	if shown[n.ID] {
		fmt.Fprintf(b, "%s%s%s %s %s (as above)\n", indent, branch, mark, n.Step, n.Verdict)
		return
	}
	shown[n.ID] = true
	a := n.Attestation
	workload := "no SPIFFE ID"
	switch {
	case len(a.Workload.SPIFFEIDs) > 0:
		workload = strings.Join(a.Workload.SPIFFEIDs, ", ")
	case len(a.Workload.Selectors) > 0:
		workload = truncList(a.Workload.Selectors, 3)
	}
	fmt.Fprintf(b, "%s%s%s %s: %s  [%s; workload %s; builder %s; log entry %d, signed %s]\n",
		indent, branch, mark, n.Step, n.Verdict, n.Origin, workload, a.BuilderID, a.LogIndex, a.SignedAt.UTC().Format(time.RFC3339))
	if n.Failure != nil {
		fmt.Fprintf(b, "%s    refused by %s: %s\n", next, n.Failure.Rule, n.Failure.Reason)
	}
	for _, g := range n.Sources {
		state := "clean"
		if !g.Clean {
			state = "DIRTY"
		}
		ref := g.Ref
		if ref == "" {
			ref = "detached HEAD"
		}
		fmt.Fprintf(b, "%s    source %s: commit %s (%s, %s), remote %s\n", next, g.Path, g.Commit, ref, state, orNone(g.RemoteURL))
	}
	if len(n.CallerClaims) > 0 {
		fmt.Fprintf(b, "%s    caller claims (not verified): %s\n", next, claimsText(n.CallerClaims))
	}
	for i, l := range n.Inputs {
		lastInput := i == len(n.Inputs)-1
		ib, inext := "├── ", next+"│   "
		if lastInput {
			ib, inext = "└── ", next+"    "
		}
		what := fmt.Sprintf("%d material(s)", len(l.Materials))
		if len(l.Materials) <= 3 {
			what = strings.Join(l.Materials, ", ")
		}
		if l.Node == nil {
			fmt.Fprintf(b, "%s%s%s ← source %s (work tree %s)\n", next, ib, what, l.Source, l.SourcePath)
			continue
		}
		fmt.Fprintf(b, "%s%s%s ← %s\n", next, ib, what, l.Step)
		r.writeNode(b, r.Nodes[*l.Node], inext, true, shown)
	}
}

func claimsText(c map[string]string) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + c[k]
	}
	return strings.Join(parts, " ")
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func short(hex string) string {
	if len(hex) > 16 {
		return hex[:16] + "…"
	}
	return hex
}

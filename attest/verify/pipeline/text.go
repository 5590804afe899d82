package pipeline

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// WriteText prints the report for people: the verdict (and, when refused,
// the one rule that failed and why), then the chain as a tree from the
// artifact back to the source, one line per attestation with its verdict.
// An attestation that feeds several steps is printed once and referred to
// after. What attestations carry (file names, remote URLs, claims) is
// printed with control and other non-printing characters escaped, so
// that none can rewrite a line of the output on a terminal.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Verified {
		fmt.Fprintf(&b, "VERIFIED: %s (sha256 %s) against pipeline policy sha256:%s\n", printable(r.Artifact.Name), r.Artifact.SHA256, short(r.PolicySHA256))
	} else {
		f := r.Failure
		fmt.Fprintf(&b, "NOT VERIFIED: %s (sha256 %s)\n  rule:   %s\n  reason: %s\n", printable(r.Artifact.Name), r.Artifact.SHA256, printable(f.Rule), printable(f.Reason))
	}
	fmt.Fprintf(&b, "\n%s\n", printable(r.Artifact.Name))
	if r.Root == nil {
		if r.Failure != nil {
			fmt.Fprintf(&b, "└── %s  ✗ %s\n", printable(r.Failure.Step), printable(r.Failure.Rule))
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
		fmt.Fprintf(b, "%s%s%s %s %s (as above)\n", indent, branch, mark, printable(n.Step), n.Verdict)
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
		indent, branch, mark, printable(n.Step), n.Verdict, printable(n.Origin), printable(workload), printable(a.BuilderID), a.LogIndex, a.SignedAt.UTC().Format(time.RFC3339))
	if n.Failure != nil {
		fmt.Fprintf(b, "%s    refused by %s\n", next, n.Failure)
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
		fmt.Fprintf(b, "%s    source %s: commit %s (%s, %s), remote %s\n", next, printable(g.Path), printable(g.Commit), printable(ref), state, printable(orNone(g.RemoteURL)))
	}
	if len(n.CallerClaims) > 0 {
		fmt.Fprintf(b, "%s    caller claims (not verified): %s\n", next, printable(claimsText(n.CallerClaims)))
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
		what = printable(what)
		if l.Node == nil {
			fmt.Fprintf(b, "%s%s%s ← source %s (work tree %s)\n", next, ib, what, printable(l.Source), printable(l.SourcePath))
			continue
		}
		fmt.Fprintf(b, "%s%s%s ← %s\n", next, ib, what, printable(l.Step))
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

// String is the failure for people: "RULE: REASON", non-printing
// characters escaped (see printable).
func (f Failure) String() string { return printable(f.Rule) + ": " + printable(f.Reason) }

// printable returns s with every rune that is not printable (control
// characters such as ESC, CR and LF, bidirectional overrides, invalid
// UTF-8) written as a Go escape (\x1b, \u202e), so that text taken from
// an attestation cannot move the cursor or reorder what a terminal shows.
func printable(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case !unicode.IsPrint(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

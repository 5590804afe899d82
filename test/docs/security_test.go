// Package docs checks that the documentation's claims point at real
// tests.
package docs

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const repo = "../.."

// skipped are the directories of tools, history and packages that the
// walks of this package leave out.
func skipped(d fs.DirEntry) bool {
	return d.IsDir() && (d.Name() == ".tools" || d.Name() == ".git" || d.Name() == "node_modules")
}

// testFuncs returns the name of every Test, Fuzz and Benchmark function in
// the repository's _test.go files.
func testFuncs(t *testing.T) map[string]bool {
	t.Helper()
	decl := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)
	funcs := map[string]bool{}
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skipped(d) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllSubmatch(b, -1) {
			funcs[string(m[1])] = true
		}
		return nil
	})
	require.NoError(t, err)
	return funcs
}

// Must show: docs/security.md exists and every test it names exists (the
// suites run them; a renamed or deleted test fails here).
func TestSecurityDocNamesRealTests(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repo, "docs", "security.md"))
	require.NoError(t, err)
	named := regexp.MustCompile("`((?:Test|Fuzz)[A-Z][A-Za-z0-9_]*)`").FindAllSubmatch(doc, -1)
	require.NotEmpty(t, named)
	funcs := testFuncs(t)
	seen := map[string]bool{}
	for _, m := range named {
		name := string(m[1])
		if seen[name] {
			continue
		}
		seen[name] = true
		require.True(t, funcs[name], "docs/security.md names %s, which no _test.go defines", name)
	}
	t.Logf("docs/security.md names %d tests, all defined", len(seen))

	// Every attacker the threat model must cover has a row, and every
	// SLSA Build L3 provenance requirement.
	for _, row := range []string{
		"A build step under another uid", "A step in a container", "Another tenant on the node",
		"A step under the agent's own uid", "A stolen agent SVID", "A compromised hallmark-server",
		"The network", "A consumer fed a forged bundle",
		"Provenance exists", "Provenance is authentic", "Provenance is unforgeable", "Isolated",
	} {
		require.True(t, bytes.Contains(doc, []byte("| **"+row)), "docs/security.md has no row for %q", row)
	}
}

// Must show: every test, fuzz target and benchmark that any Markdown file
// of the repository names, as `TestX`, `FuzzX` or `BenchmarkX`, exists,
// so that a doc citing a test for a claim cannot outlive the test.
func TestDocsNameRealTests(t *testing.T) {
	funcs := testFuncs(t)
	cited := regexp.MustCompile("`((?:Test|Fuzz|Benchmark)[A-Z][A-Za-z0-9_]*)`")
	docs, names := 0, map[string]bool{}
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skipped(d) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".md") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		docs++
		for _, m := range cited.FindAllSubmatch(b, -1) {
			name := string(m[1])
			names[name] = true
			require.True(t, funcs[name], "%s names %s, which no _test.go defines", p, name)
		}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, len(names), 100, "the docs name fewer tests than they did")
	t.Logf("%d Markdown files name %d tests, all defined", docs, len(names))
}

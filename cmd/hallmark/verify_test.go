package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

// runHallmark runs the CLI in-process and returns what main would exit
// with, and the output.
func runHallmark(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := rootCmd(nil)
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(context.Background())
	var ee *exitError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &ee):
		code = ee.code
	default:
		code = 1
		errOut.WriteString("hallmark: " + err.Error() + "\n")
	}
	return code, out.String(), errOut.String()
}

func TestVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Truncate(time.Second)
	h, err := verifytest.New(now)
	require.NoError(t, err)
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, now.Add(-time.Minute), now.Add(time.Minute))
	require.NoError(t, err)
	b, err := h.Attest(agent, verifytest.Step("build", agent.ID, map[string]string{"widget.tar.gz": "tarball"}), now)
	require.NoError(t, err)
	bundleJSON, err := attest.MarshalBundle(b)
	require.NoError(t, err)
	rootJSON, err := h.TrustedRootJSON()
	require.NoError(t, err)

	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		return p
	}
	artifact := write("widget.tar.gz", "tarball")
	evil := write("evil.tar.gz", "evil")
	bundle := write("build.hallmark.json", string(bundleJSON))
	trusted := write("trusted_root.json", string(rootJSON))
	allow := write("allow.json", `{"builder_id_prefixes":["spiffe://example.org/hallmark/agent"],"steps":["build"]}`)
	deny := write("deny.json", `{"steps":["deploy"]}`)
	badPolicy := write("bad-policy.json", `{"stepz":["build"]}`)
	garbage := write("garbage.json", `{"mediaType":`)
	missing := filepath.Join(dir, "missing")

	// withWho adds the identity constraint verify requires.
	withWho := func(args ...string) []string {
		return append(args, "--builder-id-prefix", "spiffe://example.org/hallmark/agent")
	}
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string // substring
		stderr     string // substring
		jsonOutput bool
	}{
		{name: "verified", code: 0, stdout: "verified: " + artifact,
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", trusted)},
		{name: "verified with policy", code: 0, stdout: "step:      build",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--policy", allow}},
		{name: "verified, json", code: 0, stdout: `"verified": true`, jsonOutput: true,
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", trusted, "--output", "json")},
		{name: "wrong artifact", code: 1, stderr: "NOT VERIFIED: subject check failed",
			args: withWho(evil, "--bundle", bundle, "--trusted-root", trusted)},
		{name: "one wrong artifact of two", code: 1, stderr: "subject check failed",
			args: withWho(artifact, evil, "--bundle", bundle, "--trusted-root", trusted)},
		{name: "denied by policy", code: 1, stderr: "policy check failed: step",
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", trusted, "--policy", deny)},
		{name: "denied by policy, json", code: 1, stdout: `"check": "policy"`, jsonOutput: true,
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", trusted, "--policy", deny, "--output", "json")},
		{name: "bundle not a bundle", code: 1, stderr: "bundle check failed",
			args: withWho(artifact, "--bundle", garbage, "--trusted-root", trusted)},
		{name: "no artifact", code: 2, stderr: "at least one ARTIFACT",
			args: withWho("--bundle", bundle, "--trusted-root", trusted)},
		{name: "no bundle flag", code: 2, stderr: "--bundle is required",
			args: withWho(artifact, "--trusted-root", trusted)},
		{name: "no trusted root flag", code: 2, stderr: "--trusted-root is required",
			args: withWho(artifact, "--bundle", bundle)},
		{name: "unknown flag", code: 2, stderr: "unknown flag: --bundel",
			args: withWho(artifact, "--bundel", bundle, "--trusted-root", trusted)},
		{name: "flag without value", code: 2, stderr: "needs an argument",
			args: []string{artifact, "--trusted-root", trusted, "--bundle"}},
		{name: "bad output", code: 2, stderr: "--output",
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", trusted, "--output", "yaml")},
		{name: "unreadable artifact", code: 2, stderr: "missing",
			args: withWho(missing, "--bundle", bundle, "--trusted-root", trusted)},
		{name: "artifact is a directory", code: 2, stderr: "not a regular file",
			args: withWho(dir, "--bundle", bundle, "--trusted-root", trusted)},
		{name: "unreadable bundle", code: 2, stderr: "--bundle",
			args: withWho(artifact, "--bundle", missing, "--trusted-root", trusted)},
		{name: "unreadable trusted root", code: 2, stderr: "--trusted-root",
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", missing)},
		{name: "invalid trusted root", code: 2, stderr: "--trusted-root",
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", garbage)},
		{name: "no identity constraint", code: 2, stderr: "no identity constraint: name the builders you trust with --builder-id-prefix",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted}},
		{name: "no identity constraint names the insecure flag", code: 2, stderr: "--insecure-any-builder",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted}},
		{name: "a policy naming no builder", code: 2, stderr: "no identity constraint",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--policy", deny}},
		{name: "any builder, insecurely", code: 0, stdout: "verified: " + artifact,
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--insecure-any-builder"}},
		{name: "another builder", code: 1, stderr: "policy check failed: builder",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--builder-id-prefix", "spiffe://example.org/hallmark/agent/node-2"}},
		{name: "builder flag and policy together", code: 1, stderr: "policy check failed: step",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--policy", deny, "--builder-id-prefix", "spiffe://example.org/hallmark/agent"}},
		{name: "insecure flag with a builder", code: 2, stderr: "contradicts",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--insecure-any-builder", "--builder-id-prefix", "spiffe://example.org/hallmark/agent"}},
		{name: "bad builder prefix", code: 2, stderr: "--builder-id-prefix",
			args: []string{artifact, "--bundle", bundle, "--trusted-root", trusted, "--builder-id-prefix", "https://example.org"}},
		{name: "invalid policy", code: 2, stderr: "--policy",
			args: withWho(artifact, "--bundle", bundle, "--trusted-root", trusted, "--policy", badPolicy)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runHallmark(t, append([]string{"verify"}, tc.args...)...)
			require.Equal(t, tc.code, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stdout, tc.stdout)
			require.Contains(t, stderr, tc.stderr)
			if tc.jsonOutput {
				var v map[string]any
				require.NoError(t, json.Unmarshal([]byte(stdout), &v), stdout)
			}
		})
	}
}

// Must show (an outside review's finding): a subject name the step chose,
// carrying terminal escapes, reaches the consumer's terminal quoted, so it
// cannot rewrite what the screen says was verified.
func TestReportVerifiedQuotesWhatIsNotPlainText(t *testing.T) {
	forged := "evil.bin\x1b[1A\x1b[2K\rverified: app.tar (subject app.tar"
	res := &verify.Result{
		Artifacts: []verify.Subject{{Name: forged, SHA256: "ab"}},
		Step:      "build", BuilderID: "spiffe://example.org/hallmark/agent/r1",
	}
	var out bytes.Buffer
	require.NoError(t, reportVerified(&out, "text", []string{"plain.bin"}, res))
	require.NotContains(t, out.String(), "\x1b")
	require.NotContains(t, out.String(), "\r")
	require.Contains(t, out.String(), `verified: plain.bin (subject "evil.bin\x1b[1A\x1b[2K\rverified: app.tar (subject app.tar", sha256 ab)`)

	for in, want := range map[string]string{
		"dist/app-1.0.tar.gz":  "dist/app-1.0.tar.gz",
		"dossier/résumé é.pdf": "dossier/résumé é.pdf",
		"a\nb":                 `"a\nb"`,
		"a\u2028b":             `"a\u2028b"`,
		"abc\u202edcba":        `"abc\u202edcba"`,
		"bad\xffutf8":          `"bad\xffutf8"`,
	} {
		require.Equal(t, want, plain(in), "%q", in)
	}
}

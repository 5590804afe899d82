package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/modfile"

	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

// Versions of the third-party verifiers the interop test runs; the README
// and docs/log.md name these and no others.
const (
	sigstoreGoVersion = "v1.3.0"
	cosignVersion     = "v3.1.3"
	sigstoreJSVersion = "4.1.3" // @sigstore/verify
)

// interopCase is one bundle to verify: the bundle, the trusted root, the
// artifact it should vouch for and the signer identity expected.
type interopCase struct {
	bundle, root, artifact, identity string
}

// interopVerifier verifies as one third-party verifier does, with no
// Hallmark code in its path but for `hallmark verify` itself.
type interopVerifier struct {
	name   string
	verify func(t *testing.T, c interopCase) error
}

// Interop, end to end: a bundle the real agent and server made on real
// SPIRE is accepted by sigstore-go, the cosign CLI, sigstore-js and
// `hallmark verify`, each given only the trusted root the server serves and
// exactly the options docs/log.md gives; and each refuses a tampered
// artifact, a tampered payload, the bundle without its log entry, and the
// bundle checked against another identity.
func TestInteropVerifiers(t *testing.T) {
	t.Parallel()
	verifiers := interopVerifiers(t)

	ws := workspace(t, map[string]string{"src.c": "int main(void) { return 3; }"})
	bundle := filepath.Join(ws, "build.hallmark.json")
	// The light step client, as build steps run it.
	cmd := exec.Command(stack.Bins.Attest, "--socket", stack.Agent.Socket, "--step", "build", "--wait-log",
		"--product", "app", "--out", bundle, "--", "cp", "src.c", "app")
	cmd.Dir = ws
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "output: %s", output)

	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootFile := filepath.Join(ws, "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, root, 0o644))
	artifact := filepath.Join(ws, "app")
	good := interopCase{bundle: bundle, root: rootFile, artifact: artifact, identity: harness.AgentID.String()}

	// The attacker's artifact, and the bundle's statement rewritten to name
	// it (the signature no longer covers the payload).
	evil := filepath.Join(ws, "app.evil")
	require.NoError(t, os.WriteFile(evil, []byte("int main(void) { return 66; }"), 0o644))
	tamperedPayload := rewriteBundle(t, bundle, filepath.Join(ws, "tampered-payload.json"), func(b map[string]any) {
		env := b["dsseEnvelope"].(map[string]any)
		payload, err := base64.StdEncoding.DecodeString(env["payload"].(string))
		require.NoError(t, err)
		app, err := os.ReadFile(artifact)
		require.NoError(t, err)
		evilContent, err := os.ReadFile(evil)
		require.NoError(t, err)
		from, to := sha256.Sum256(app), sha256.Sum256(evilContent)
		changed := bytes.ReplaceAll(payload, []byte(hex.EncodeToString(from[:])), []byte(hex.EncodeToString(to[:])))
		require.NotEqual(t, payload, changed)
		env["payload"] = base64.StdEncoding.EncodeToString(changed)
	})
	noLogEntry := rewriteBundle(t, bundle, filepath.Join(ws, "no-log-entry.json"), func(b map[string]any) {
		delete(b["verificationMaterial"].(map[string]any), "tlogEntries")
	})

	cases := []struct {
		name string
		c    interopCase
		ok   bool
	}{
		{"good bundle", good, true},
		{"tampered artifact", interopCase{bundle: bundle, root: rootFile, artifact: evil, identity: good.identity}, false},
		{"tampered payload", interopCase{bundle: tamperedPayload, root: rootFile, artifact: evil, identity: good.identity}, false},
		{"log entry removed", interopCase{bundle: noLogEntry, root: rootFile, artifact: artifact, identity: good.identity}, false},
		{"wrong identity", interopCase{bundle: bundle, root: rootFile, artifact: artifact, identity: "spiffe://example.org/hallmark/agent/node-2"}, false},
	}
	for _, v := range verifiers {
		for _, tc := range cases {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				err := v.verify(t, tc.c)
				if tc.ok {
					require.NoError(t, err)
				} else {
					require.Error(t, err, "%s must refuse: %s", v.name, tc.name)
					require.NotErrorIs(t, err, errNoVerdict)
					t.Logf("%s refused %s: %v", v.name, tc.name, err)
				}
			})
		}
	}
}

// interopVerifiers are the verifiers of the interop tests, each checked to
// be the version the docs name.
func interopVerifiers(t *testing.T) []interopVerifier {
	t.Helper()
	root, err := harness.RepoRoot()
	require.NoError(t, err)

	// sigstore-go: the version this module requires (and so links).
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	mf, err := modfile.Parse("go.mod", gomod, nil)
	require.NoError(t, err)
	linked := ""
	for _, r := range mf.Require {
		if r.Mod.Path == "github.com/sigstore/sigstore-go" {
			linked = r.Mod.Version
		}
	}
	require.Equal(t, sigstoreGoVersion, linked, "the sigstore-go the docs name")

	// cosign: built by test/scripts/install-cosign.sh (make interop-tools).
	cosign := filepath.Join(root, ".tools", "bin", "cosign")
	out, err := exec.Command(cosign, "version").CombinedOutput()
	require.NoError(t, err, "cosign is missing: run make interop-tools (%s)", out)
	require.Contains(t, string(out), cosignVersion, "the cosign the docs name")

	// sigstore-js: installed by test/scripts/install-sigstorejs.sh.
	jsDir := filepath.Join(root, "test", "interop", "sigstorejs")
	pkg, err := os.ReadFile(filepath.Join(jsDir, "node_modules", "@sigstore", "verify", "package.json"))
	require.NoError(t, err, "sigstore-js is missing: run make interop-tools")
	var meta struct{ Version string }
	require.NoError(t, json.Unmarshal(pkg, &meta))
	require.Equal(t, sigstoreJSVersion, meta.Version, "the @sigstore/verify the docs name")
	node, err := exec.Command("node", "--version").Output()
	require.NoError(t, err, "node is missing")
	t.Logf("sigstore-js runs on Node %s", strings.TrimSpace(string(node))) // docs/log.md names the one CI has

	return []interopVerifier{
		{"sigstore-go", func(t *testing.T, c interopCase) error {
			b, r, a := readCase(t, c)
			digest := sha256.Sum256(a)
			_, err := sigstorego.Verify(b, r, digest[:], c.identity)
			return err
		}},
		// Exactly the flags docs/log.md gives.
		{"cosign", func(t *testing.T, c interopCase) error {
			return runVerifier(exec.Command(cosign, "verify-blob-attestation",
				"--bundle", c.bundle, "--trusted-root", c.root,
				"--type", "slsaprovenance1",
				"--certificate-identity", c.identity,
				"--certificate-oidc-issuer-regexp", ".*",
				"--insecure-ignore-sct",
				"--use-signed-timestamps",
				c.artifact))
		}},
		{"sigstore-js", func(t *testing.T, c interopCase) error {
			return runVerifier(exec.Command("node", filepath.Join(jsDir, "verify.js"),
				"--bundle", c.bundle, "--trusted-root", c.root, "--artifact", c.artifact, "--san", c.identity))
		}},
		{"hallmark verify", func(t *testing.T, c interopCase) error {
			return hallmarkVerifyAs(t, c.artifact, c.bundle, c.root, c.identity)
		}},
	}
}

// errNoVerdict: a verifier command failed otherwise than by refusing.
var errNoVerdict = errors.New("not a verdict")

// runVerifier runs a verifier command: nil when it exits 0, an error with
// its output when it exits 1 (refused); anything else is errNoVerdict.
func runVerifier(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return fmt.Errorf("exit 1: %s", strings.TrimSpace(string(out)))
	default:
		return fmt.Errorf("%s: %w (%v): %s", cmd.Path, errNoVerdict, err, out)
	}
}

func readCase(t *testing.T, c interopCase) (bundle, root, artifact []byte) {
	t.Helper()
	var err error
	bundle, err = os.ReadFile(c.bundle)
	require.NoError(t, err)
	root, err = os.ReadFile(c.root)
	require.NoError(t, err)
	artifact, err = os.ReadFile(c.artifact)
	require.NoError(t, err)
	return bundle, root, artifact
}

// rewriteBundle writes to out the bundle at in changed by fn.
func rewriteBundle(t *testing.T, in, out string, fn func(map[string]any)) string {
	t.Helper()
	data, err := os.ReadFile(in)
	require.NoError(t, err)
	var b map[string]any
	require.NoError(t, json.Unmarshal(data, &b))
	fn(b)
	data, err = json.Marshal(b)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(out, data, 0o644))
	return out
}

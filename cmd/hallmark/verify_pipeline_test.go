package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	vsa1 "github.com/in-toto/attestation/go/predicates/vsa/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

const cliPipelinePolicy = `version = 1

source "widget" {
  repositories = ["https://git.example.org/acme/widget.git"]
}

step "build" {
  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = ["spiffe://example.org/ci/build"]
  sources             = ["widget"]
}

step "package" {
  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = ["spiffe://example.org/ci/package"]
  materials_from      = ["build"]
}
`

// pipelineFiles writes a two-step pipeline's files, bundles, policy and
// trusted root into a directory; packageWorkload is who attested package.
func pipelineFiles(t *testing.T, packageWorkload string) (dir string) {
	t.Helper()
	dir = t.TempDir()
	now := time.Now().Truncate(time.Second)
	h, err := verifytest.New(now)
	require.NoError(t, err)
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, now.Add(-time.Minute), now.Add(time.Minute))
	require.NoError(t, err)
	write := func(name, content string) {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	art := func(name, content string) attest.Artifact {
		d := verify.DigestBytes(name, []byte(content))
		return attest.Artifact{Name: name, SHA256: fmt.Sprintf("%x", d.SHA256)}
	}
	write("app", "ELF")
	write("app.tar.gz", "tarball")
	build := verifytest.Step("build", agent.ID, map[string]string{"app": "ELF"})
	build.Workload.SPIFFEIDs = []string{"spiffe://example.org/ci/build"}
	build.Sources = []attest.GitSource{{Path: ".", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("b", 40), Clean: true,
		RemoteURL: "https://git.example.org/acme/widget.git"}}
	pkg := verifytest.Step("package", agent.ID, map[string]string{"app.tar.gz": "tarball"})
	pkg.Workload.SPIFFEIDs = []string{packageWorkload}
	pkg.Materials = []attest.Artifact{art("app", "ELF")}
	for _, s := range []attest.Step{build, pkg} {
		b, err := h.Attest(agent, s, now)
		require.NoError(t, err)
		js, err := attest.MarshalBundle(b)
		require.NoError(t, err)
		write("bundles/"+s.Name+".hallmark.json", string(js))
	}
	rootJSON, err := h.TrustedRootJSON()
	require.NoError(t, err)
	write("trusted_root.json", string(rootJSON))
	write("pipeline.hcl", cliPipelinePolicy)
	return dir
}

func TestVerifyPipelineCommand(t *testing.T) {
	dir := pipelineFiles(t, "spiffe://example.org/ci/package")
	p := func(name string) string { return filepath.Join(dir, name) }
	base := []string{"verify", p("app.tar.gz"), "--policy", p("pipeline.hcl"), "--trusted-root", p("trusted_root.json")}

	code, out, errOut := runHallmark(t, append(base, "--bundle-dir", p("bundles"))...)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	require.Contains(t, out, "VERIFIED: "+p("app.tar.gz"))
	require.Contains(t, out, "✓ package: verified")
	require.Contains(t, out, "app ← build")
	require.Contains(t, out, "✓ build: verified")

	// The same from bundles named one by one, as JSON.
	code, out, errOut = runHallmark(t, append(base, "--bundle", p("bundles/package.hallmark.json"), "--bundle", p("bundles/build.hallmark.json"), "--json")...)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	var rep struct {
		Verified bool `json:"verified"`
		Nodes    []struct {
			Step    string `json:"step"`
			Verdict string `json:"verdict"`
		} `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.True(t, rep.Verified)
	require.Len(t, rep.Nodes, 2)

	// A missing step: exit 1, the rule on stderr and in the tree.
	code, out, errOut = runHallmark(t, append(base, "--bundle", p("bundles/package.hallmark.json"))...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "NOT VERIFIED: rule step.build: missing step")
	require.Contains(t, out, "rule:   step.build")

	// A VSA, signed with a key only its owner reads.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	keyFile := p("vsa.key")
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o644))
	code, _, errOut = runHallmark(t, append(base, "--bundle-dir", p("bundles"), "--vsa", p("vsa.json"), "--vsa-key", keyFile)...)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "readable by group or others")
	require.NoError(t, os.Chmod(keyFile, 0o600))
	code, _, errOut = runHallmark(t, append(base, "--bundle-dir", p("bundles"), "--vsa", p("vsa.json"), "--vsa-key", keyFile)...)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	envJSON, err := os.ReadFile(p("vsa.json"))
	require.NoError(t, err)
	var env struct {
		PayloadType string `json:"payloadType"`
		Payload     []byte `json:"payload"`
	}
	require.NoError(t, json.Unmarshal(envJSON, &env))
	require.Equal(t, attest.PayloadType, env.PayloadType)
	var st ita1.Statement
	require.NoError(t, protojson.Unmarshal(env.Payload, &st))
	require.NoError(t, st.Validate())
	pj, err := protojson.Marshal(st.GetPredicate())
	require.NoError(t, err)
	var vsa vsa1.VerificationSummary
	require.NoError(t, protojson.Unmarshal(pj, &vsa))
	require.Equal(t, "PASSED", vsa.GetVerificationResult())
	require.Equal(t, "file://"+p("app.tar.gz"), vsa.GetResourceUri())
}

func TestVerifyPipelineRefusalAndUsage(t *testing.T) {
	dir := pipelineFiles(t, "spiffe://example.org/ci/build") // package run by build's workload
	p := func(name string) string { return filepath.Join(dir, name) }
	base := []string{"verify", p("app.tar.gz"), "--policy", p("pipeline.hcl"), "--trusted-root", p("trusted_root.json")}

	code, out, errOut := runHallmark(t, append(base, "--bundle-dir", p("bundles"))...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "rule step.package.workload_spiffe_ids")
	require.Contains(t, out, "✗ package: refused")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{base, "name the attestations"},
		{[]string{"verify", p("app.tar.gz"), p("app"), "--policy", p("pipeline.hcl"), "--trusted-root", p("trusted_root.json"), "--bundle-dir", p("bundles")}, "one ARTIFACT, 2 given"},
		{[]string{"verify", p("app.tar.gz"), "--policy", p("pipeline.hcl"), "--bundle-dir", p("bundles")}, "--trusted-root is required"},
		{append(base, "--bundle-dir", p("nowhere")), "no *.json file"},
		{append(base, "--bundle-dir", p("bundles"), "--vsa-key", p("k")), "name the file with --vsa"},
	} {
		code, _, errOut := runHallmark(t, tc.args...)
		require.Equal(t, 2, code, "args %v: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.want)
	}

	// A pipeline policy with a mistake is a usage error naming the line.
	require.NoError(t, os.WriteFile(p("bad.hcl"), []byte(strings.Replace(cliPipelinePolicy, "materials_from", "materials", 1)), 0o644))
	code, _, errOut = runHallmark(t, "verify", p("app.tar.gz"), "--policy", p("bad.hcl"), "--trusted-root", p("trusted_root.json"), "--bundle-dir", p("bundles"))
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `bad.hcl:16,3-12: Unsupported argument; An argument named "materials"`)
}

// A pipeline policy so broken that it does not parse, or whose version
// line is misspelt, is still reported as the pipeline policy it was meant
// to be, with the position of the mistake, not as a single-step policy
// (whose error would be about --bundle or JSON).
func TestVerifyPipelineBrokenPolicy(t *testing.T) {
	dir := pipelineFiles(t, "spiffe://example.org/ci/package")
	p := func(name string) string { return filepath.Join(dir, name) }
	for _, tc := range []struct{ name, policy, want string }{
		{"unclosed block", strings.TrimSuffix(strings.TrimSpace(cliPipelinePolicy), "}"), "broken.hcl:"},
		{"misspelt version", strings.Replace(cliPipelinePolicy, "version = 1", "verison = 1", 1), `broken.hcl:1,1-8: Unsupported argument; An argument named "verison"`},
		{"no version", strings.Replace(cliPipelinePolicy, "version = 1", "", 1), "no version: say version = 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(p("broken.hcl"), []byte(tc.policy), 0o644))
			code, _, errOut := runHallmark(t, "verify", p("app.tar.gz"), "--policy", p("broken.hcl"), "--trusted-root", p("trusted_root.json"), "--bundle-dir", p("bundles"))
			require.Equal(t, 2, code)
			require.Contains(t, errOut, tc.want)
		})
	}
}

// The VSA's resourceUri, policy.uri and every inputAttestations[].uri are
// URIs (SLSA VSA v1.0: ResourceURI, ResourceDescriptor.uri), here file:
// URIs of the absolute paths, not paths as typed.
func TestVerifyPipelineVSAURIs(t *testing.T) {
	dir := pipelineFiles(t, "spiffe://example.org/ci/package")
	t.Chdir(dir)
	code, _, errOut := runHallmark(t, "verify", "app.tar.gz", "--policy", "pipeline.hcl", "--trusted-root", "trusted_root.json",
		"--bundle-dir", "bundles", "--vsa", "vsa.json")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	data, err := os.ReadFile(filepath.Join(dir, "vsa.json"))
	require.NoError(t, err)
	var st ita1.Statement
	require.NoError(t, protojson.Unmarshal(data, &st))
	pj, err := protojson.Marshal(st.GetPredicate())
	require.NoError(t, err)
	var vsa vsa1.VerificationSummary
	require.NoError(t, protojson.Unmarshal(pj, &vsa))
	fileURI := func(p string) string { return (&url.URL{Scheme: "file", Path: filepath.Join(dir, p)}).String() }
	require.Equal(t, fileURI("app.tar.gz"), vsa.GetResourceUri())
	require.Equal(t, fileURI("pipeline.hcl"), vsa.GetPolicy().GetUri())
	var uris []string
	for _, in := range vsa.GetInputAttestations() {
		uris = append(uris, in.GetUri())
	}
	require.ElementsMatch(t, []string{fileURI("bundles/build.hallmark.json"), fileURI("bundles/package.hallmark.json")}, uris)
}

// Pipeline mode refuses to guess whom to trust, like single-step mode: a
// policy with a step that names no builders needs --builder-id-prefix or
// --insecure-any-builder.
func TestVerifyPipelineNeedsBuilders(t *testing.T) {
	dir := pipelineFiles(t, "spiffe://example.org/ci/package")
	p := func(name string) string { return filepath.Join(dir, name) }
	noBuilders := strings.Replace(cliPipelinePolicy, `  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = ["spiffe://example.org/ci/package"]`, `  workload_spiffe_ids = ["spiffe://example.org/ci/package"]`, 1)
	require.NotEqual(t, cliPipelinePolicy, noBuilders)
	require.NoError(t, os.WriteFile(p("nobuilders.hcl"), []byte(noBuilders), 0o644))
	base := []string{"verify", p("app.tar.gz"), "--trusted-root", p("trusted_root.json"), "--bundle-dir", p("bundles")}

	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"a step names no builders", []string{"--policy", p("nobuilders.hcl")}, 2, "--builder-id-prefix"},
		{"--builder-id-prefix for every step", []string{"--policy", p("nobuilders.hcl"), "--builder-id-prefix", "spiffe://example.org/hallmark/agent"}, 0, ""},
		{"another builder", []string{"--policy", p("nobuilders.hcl"), "--builder-id-prefix", "spiffe://example.org/hallmark/other"}, 1, ""},
		{"--insecure-any-builder", []string{"--policy", p("nobuilders.hcl"), "--insecure-any-builder"}, 0, ""},
		{"every step names builders", []string{"--policy", p("pipeline.hcl")}, 0, ""},
		{"--insecure-any-builder contradicts them", []string{"--policy", p("pipeline.hcl"), "--insecure-any-builder"}, 2, "contradicts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runHallmark(t, append(slices.Clone(base), tc.args...)...)
			require.Equal(t, tc.code, code, "stderr: %s", errOut)
			require.Contains(t, errOut, tc.stderr)
			if tc.code == 2 && tc.stderr == "--builder-id-prefix" {
				require.Contains(t, errOut, "--insecure-any-builder")
			}
		})
	}
}

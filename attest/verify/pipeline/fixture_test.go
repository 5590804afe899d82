package pipeline_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

// Workloads of the three steps of the test pipeline.
const (
	checkoutID = "spiffe://example.org/ci/checkout"
	buildID    = "spiffe://example.org/ci/build"
	packageID  = "spiffe://example.org/ci/package"
	repoURL    = "https://git.example.org/acme/widget.git"
	commit     = "9fceb02d0ae598e95dc970b74767f19372d61af8"
	tree       = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
)

// testPolicy is the pipeline policy of the tests: checkout from the
// widget repository at commit, build from checkout, package from build.
const testPolicy = `
version = 1

source "widget" {
  repositories = ["https://git.example.org/acme/*"]
  commits      = ["` + commit + `"]
  refs         = ["refs/heads/main"]
}

step "checkout" {
  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = ["` + checkoutID + `"]
  sources             = ["widget"]
}

step "build" {
  workload_spiffe_ids = ["` + buildID + `"]
  workload_selectors  = ["unix:uid:1001"]
  materials_from      = ["checkout"]
}

step "package" {
  workload_spiffe_ids = ["` + packageID + `"]
  materials_from      = ["build"]
  products            = ["widget-*.tar.gz"]
}
`

// run is one run of the test pipeline: the content of every file and the
// steps as the agents would attest them.
type run struct {
	files                   map[string]string
	checkout, build, packag attest.Step
}

// newRun is a run whose build output is app built from the sources.
func newRun(tag string) *run {
	r := &run{files: map[string]string{
		"src/main.c":            "int main(void) { return 0; }",
		"src/Makefile":          "app: main.c\n\tcc -o app main.c\n",
		"app":                   "ELF app " + tag,
		"widget-1.0.tar.gz":     "tarball of app " + tag,
		"widget-1.0.tar.gz.sig": "unrelated",
	}}
	r.checkout = r.step("checkout", checkoutID, []string{"src/main.c", "src/Makefile"}, nil)
	r.checkout.Sources = []attest.GitSource{{Path: "src", Commit: commit, Tree: tree, Clean: true, Ref: "refs/heads/main", RemoteURL: repoURL}}
	r.checkout.CallerClaims = map[string]string{"ci": "test", "job": "checkout", "run_id": tag}
	r.build = r.step("build", buildID, []string{"app"}, []string{"src/main.c", "src/Makefile"})
	r.packag = r.step("package", packageID, []string{"widget-1.0.tar.gz"}, []string{"app"})
	return r
}

func (r *run) step(name, workload string, products, materials []string) attest.Step {
	s := verifytest.Step(name, verifytest.AgentID, nil)
	s.Workload.SPIFFEIDs = []string{workload}
	for _, p := range products {
		s.Products = append(s.Products, artifact(p, r.files[p]))
	}
	for _, m := range materials {
		s.Materials = append(s.Materials, artifact(m, r.files[m]))
	}
	return s
}

func artifact(name, content string) attest.Artifact {
	d := verify.DigestBytes(name, []byte(content))
	return attest.Artifact{Name: name, SHA256: fmt.Sprintf("%x", d.SHA256)}
}

// fixture is a deployment that signs and logs bundles, and its trusted
// root.
type fixture struct {
	h     *verifytest.Hallmark
	agent *verifytest.Agent
	root  *verify.TrustedRoot
	now   time.Time
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	now := time.Now()
	h, err := verifytest.New(now)
	require.NoError(t, err)
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, now.Add(-time.Hour), now.Add(time.Hour))
	require.NoError(t, err)
	rootJSON, err := h.TrustedRootJSON()
	require.NoError(t, err)
	root, err := verify.ParseTrustedRoot(rootJSON)
	require.NoError(t, err)
	return &fixture{h: h, agent: agent, root: root, now: now}
}

// bundle signs and logs s, as an agent and server do.
func (f *fixture) bundle(t testing.TB, s attest.Step) []byte {
	t.Helper()
	b, err := f.h.Attest(f.agent, s, f.now)
	require.NoError(t, err)
	out, err := protojson.Marshal(b)
	require.NoError(t, err)
	return out
}

// bundleBy signs and logs s as agent.
func (f *fixture) bundleBy(t testing.TB, agent *verifytest.Agent, s attest.Step) []byte {
	t.Helper()
	b, err := f.h.Attest(agent, s, f.now)
	require.NoError(t, err)
	out, err := protojson.Marshal(b)
	require.NoError(t, err)
	return out
}

// bundles signs the steps of r, named like bundle files.
func (f *fixture) bundles(t testing.TB, steps ...attest.Step) []pipeline.Candidate {
	t.Helper()
	var out []pipeline.Candidate
	for _, s := range steps {
		out = append(out, pipeline.Candidate{Bundle: f.bundle(t, s), Origin: s.Name + ".hallmark.json", URI: "file:///bundles/" + s.Name + ".hallmark.json"})
	}
	return out
}

func mustPolicy(t testing.TB, src string) *pipeline.Policy {
	t.Helper()
	p, err := pipeline.ParsePolicy("pipeline.hcl", []byte(src))
	require.NoError(t, err)
	return p
}

// verifyArtifact runs the walk over bundles for the artifact's content.
func (f *fixture) verifyArtifact(p *pipeline.Policy, name, content string, src pipeline.Finder) (*pipeline.Report, error) {
	return pipeline.Verify(context.Background(), p, verify.DigestBytes(name, []byte(content)),
		pipeline.Options{Verify: verify.Options{TrustedRoot: f.root}, Finder: src})
}

// policyWith is testPolicy with old replaced by new.
func policyWith(t testing.TB, old, new string) *pipeline.Policy {
	t.Helper()
	require.Contains(t, testPolicy, old)
	return mustPolicy(t, strings.Replace(testPolicy, old, new, 1))
}

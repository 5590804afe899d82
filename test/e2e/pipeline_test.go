package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vsa1 "github.com/in-toto/attestation/go/predicates/vsa/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// The three workloads of the pipeline, each a copy of the hallmark CLI at
// its own path, registered in SPIRE by that path.
var pipelineWorkloads = map[string]string{
	"checkout": "spiffe://example.org/ci/checkout",
	"build":    "spiffe://example.org/ci/build",
	"package":  "spiffe://example.org/ci/package",
}

const pipelineRemote = "https://git.example.org/acme/widget.git"

// pipelinePolicyHCL is the pipeline policy, for the source's commit.
func pipelinePolicyHCL(commit, repo string) string {
	return fmt.Sprintf(`version = 1

source "widget" {
  repositories = [%q]
  commits      = [%q]
  refs         = ["refs/heads/main"]
}

step "checkout" {
  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = [%q]
  sources             = ["widget"]
}

step "build" {
  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = [%q]
  materials_from      = ["checkout"]
}

step "package" {
  builder_id_prefixes = ["spiffe://example.org/hallmark/agent"]
  workload_spiffe_ids = [%q]
  materials_from      = ["build"]
  products            = ["widget-*.tar"]
}
`, repo, commit, pipelineWorkloads["checkout"], pipelineWorkloads["build"], pipelineWorkloads["package"])
}

type pipelineEnv struct {
	t       *testing.T
	dir     string // workspaces, beneath the agent's policy root
	out     string // bundles, policies, trusted root
	socket  string
	bins    map[string]string // step workload -> its CLI copy
	commit  string
	gitEnv  []string
	rootPEM string
}

func (e *pipelineEnv) git(dir string, args ...string) string {
	e.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), e.gitEnv...)
	out, err := cmd.CombinedOutput()
	require.NoError(e.t, err, "git %v: %s", args, out)
	return strings.TrimSpace(string(out))
}

// attest runs `hallmark attest` as workload (a step's CLI copy) in ws and
// returns the bundle's path.
func (e *pipelineEnv) attest(workload, step, ws, bundle string, args ...string) string {
	e.t.Helper()
	out := filepath.Join(e.out, bundle)
	all := append([]string{"attest", "--socket", e.socket, "--step", step, "--wait-log", "--out", out}, args...)
	cmd := exec.Command(e.bins[workload], all...)
	cmd.Dir = ws
	cmd.Env = append(os.Environ(), "GITHUB_ACTIONS=true", "GITHUB_JOB="+step, "GITHUB_RUN_ID=4711")
	b, err := cmd.CombinedOutput()
	require.NoError(e.t, err, "%s attest %s: %s", workload, step, b)
	return out
}

// verify runs `hallmark verify` in pipeline mode and returns its exit
// code, stdout and stderr.
func (e *pipelineEnv) verify(artifact string, args ...string) (int, string, string) {
	e.t.Helper()
	cmd := exec.Command(stack.Bins.CLI, append([]string{"verify", artifact, "--trusted-root", e.rootPEM}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errOut.String()
	}
	require.NoError(e.t, err)
	return 0, out.String(), errOut.String()
}

func (e *pipelineEnv) write(name, content string) string {
	e.t.Helper()
	p := filepath.Join(e.out, name)
	require.NoError(e.t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(e.t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

// place copies from to to, making to's directory.
func place(t *testing.T, from, to string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(to), 0o755))
	copyFile(t, from, to)
}

// buildAndPackage runs the build step on copies of mainC and makefile
// (as main.c and Makefile) and the package step on its app, in
// workspaces build-NAME and package-NAME, and returns their bundles
// (build-NAME.hallmark.json, package-NAME.hallmark.json) and the tarball.
func (e *pipelineEnv) buildAndPackage(name, mainC, makefile string) (build, pkg, artifact string) {
	e.t.Helper()
	buildWS := filepath.Join(e.dir, "build-"+name)
	place(e.t, mainC, filepath.Join(buildWS, "main.c"))
	place(e.t, makefile, filepath.Join(buildWS, "Makefile"))
	build = e.attest("build", "build", buildWS, "build-"+name+".hallmark.json", "--material", "main.c", "--material", "Makefile", "--product", "app",
		"--", "sh", "-c", "cat main.c > app")
	pkgWS := filepath.Join(e.dir, "package-"+name)
	place(e.t, filepath.Join(buildWS, "app"), filepath.Join(pkgWS, "app"))
	pkg = e.attest("package", "package", pkgWS, "package-"+name+".hallmark.json", "--material", "app", "--product", "widget-1.0.tar",
		"--", "tar", "--mtime=@0", "--owner=0", "--group=0", "-cf", "widget-1.0.tar", "app")
	return build, pkg, filepath.Join(pkgWS, "widget-1.0.tar")
}

// bundleDir makes a directory holding the named bundles.
func (e *pipelineEnv) bundleDir(name string, bundles ...string) string {
	e.t.Helper()
	d := filepath.Join(e.out, name)
	require.NoError(e.t, os.MkdirAll(d, 0o755))
	for _, b := range bundles {
		place(e.t, b, filepath.Join(d, filepath.Base(b)))
	}
	return d
}

// newPipelineEnv starts an agent of its own whose policy lets each
// workload attest its step (and the package workload also "build", for
// the refusal of a step run by the wrong workload), registers the three
// workloads in SPIRE, and makes a real git repository.
func newPipelineEnv(t *testing.T) *pipelineEnv {
	t.Helper()
	ctx := context.Background()
	e := &pipelineEnv{t: t, out: t.TempDir(), bins: map[string]string{},
		gitEnv: []string{"GIT_CONFIG_NOSYSTEM=1", "HOME=" + t.TempDir(), "GIT_AUTHOR_NAME=dev", "GIT_AUTHOR_EMAIL=dev@example.org",
			"GIT_COMMITTER_NAME=dev", "GIT_COMMITTER_EMAIL=dev@example.org"}}
	root := filepath.Join(stack.Dir, "pipeline-workspaces")
	require.NoError(t, os.MkdirAll(root, 0o755))
	var err error
	e.dir, err = os.MkdirTemp(root, "run-")
	require.NoError(t, err)

	rules := ""
	for step, id := range pipelineWorkloads {
		steps := fmt.Sprintf("%q", step)
		if step == "package" {
			steps += `, "build"`
		}
		rules += fmt.Sprintf("  rule %q {\n    spiffe_ids = [%q]\n    steps = [%s]\n    workspace_roots = [%q]\n  }\n", step, id, steps, root)
	}
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-pipeline", harness.AgentOptions{
		ServerAddr: stack.Server.ServerAddr(), ServerID: harness.ServerID.String(), Policy: rules,
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	e.socket = ag.Socket

	for step, id := range pipelineWorkloads {
		bin := filepath.Join(stack.Dir, "pipeline-bin", step, "hallmark")
		if _, err := os.Stat(bin); err != nil {
			place(t, stack.Bins.CLI, bin)
			require.NoError(t, stack.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: spiffeid.RequireFromString(id), Binary: bin, X509SVIDTTL: time.Hour}))
		}
		e.bins[step] = bin
	}
	for step, id := range pipelineWorkloads {
		waitFor(t, "the agent to identify the "+step+" workload", time.Minute, func() error {
			out, err := exec.Command(e.bins[step], "whoami", "--socket", e.socket).CombinedOutput()
			if err != nil || !strings.Contains(string(out), id) {
				return fmt.Errorf("whoami: %v: %s", err, out)
			}
			return nil
		})
	}

	rootJSON, err := stack.Server.Get(ctx, "/trust/trusted_root.json")
	require.NoError(t, err)
	e.rootPEM = e.write("trusted_root.json", string(rootJSON))
	return e
}

// TestPipelineEndToEnd: three steps run by three workloads on real SPIRE
// (checkout in a real git repository at a commit, build, package); the
// artifact verifies against the pipeline policy from bundles on disk and
// from the log by digest alone, and every way the chain can be broken is
// refused with the rule named.
func TestPipelineEndToEnd(t *testing.T) {
	t.Parallel()
	e := newPipelineEnv(t)

	// The source: a repository with two commits; checkout clones it and
	// works on main.
	origin := filepath.Join(e.dir, "origin")
	require.NoError(t, os.MkdirAll(origin, 0o755))
	e.git(origin, "init", "-q", "-b", "main")
	require.NoError(t, os.WriteFile(filepath.Join(origin, "main.c"), []byte("int main(void) { return 1; }\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(origin, "Makefile"), []byte("app: main.c\n\tcat main.c > app\n"), 0o644))
	e.git(origin, "add", "-A")
	e.git(origin, "commit", "-q", "-m", "first")
	first := e.git(origin, "rev-parse", "HEAD")
	require.NoError(t, os.WriteFile(filepath.Join(origin, "main.c"), []byte("int main(void) { return 0; }\n"), 0o644))
	e.git(origin, "commit", "-q", "-am", "fix")
	e.commit = e.git(origin, "rev-parse", "HEAD")
	src := filepath.Join(e.dir, "checkout", "src")
	e.git(e.dir, "clone", "-q", origin, src)
	e.git(src, "remote", "set-url", "origin", pipelineRemote)

	// checkout: the work tree is the workspace; the agent reads the
	// commit itself.
	checkout := e.attest("checkout", "checkout", src, "checkout.hallmark.json", "--product", "main.c", "--product", "Makefile")
	// build: the sources copied, "compiled".
	buildWS := filepath.Join(e.dir, "build")
	place(t, filepath.Join(src, "main.c"), filepath.Join(buildWS, "main.c"))
	place(t, filepath.Join(src, "Makefile"), filepath.Join(buildWS, "Makefile"))
	build := e.attest("build", "build", buildWS, "build.hallmark.json", "--material", "main.c", "--material", "Makefile", "--product", "app",
		"--", "sh", "-c", "cat main.c > app")
	// package: app into a tarball.
	pkgWS := filepath.Join(e.dir, "package")
	place(t, filepath.Join(buildWS, "app"), filepath.Join(pkgWS, "app"))
	pkg := e.attest("package", "package", pkgWS, "package.hallmark.json", "--material", "app", "--product", "widget-1.0.tar",
		"--", "tar", "--mtime=@0", "--owner=0", "--group=0", "-cf", "widget-1.0.tar", "app")
	artifact := filepath.Join(pkgWS, "widget-1.0.tar")
	policy := e.write("widget.pipeline.hcl", pipelinePolicyHCL(e.commit, pipelineRemote))

	// The checkout attestation records the source as the agent read it.
	src0 := gitSourceOf(t, checkout)
	require.Equal(t, e.commit, src0["commit"])
	require.Equal(t, e.git(src, "rev-parse", "HEAD^{tree}"), src0["tree"])
	require.Equal(t, true, src0["clean"])
	require.Equal(t, "refs/heads/main", src0["ref"])
	require.Equal(t, pipelineRemote, src0["remote_url"])

	good := e.bundleDir("good", checkout, build, pkg)
	t.Run("verifies from bundles on disk", func(t *testing.T) {
		code, out, errOut := e.verify(artifact, "--policy", policy, "--bundle-dir", good)
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
		require.Contains(t, out, "VERIFIED")
		require.Contains(t, out, "✓ package: verified")
		require.Contains(t, out, "✓ build: verified")
		require.Contains(t, out, "✓ checkout: verified")
		require.Contains(t, out, "source .: commit "+e.commit+" (refs/heads/main, clean), remote "+pipelineRemote)
		require.Contains(t, out, "caller claims (not verified): ci=github job=checkout run_id=4711")
		t.Logf("hallmark verify:\n%s", out)
	})
	t.Run("verifies from the log by digest alone", func(t *testing.T) {
		code, out, errOut := e.verify(artifact, "--policy", policy, "--server", "http://"+stack.Server.HealthAddr, "--json")
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
		var rep struct {
			Verified bool `json:"verified"`
			Nodes    []struct {
				Step, Verdict, Origin string
			} `json:"nodes"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &rep))
		require.True(t, rep.Verified)
		steps := map[string]string{}
		for _, n := range rep.Nodes {
			if n.Verdict == "verified" {
				steps[n.Step] = n.Origin
			}
		}
		require.Len(t, steps, 3)
		for _, origin := range steps {
			require.True(t, strings.HasPrefix(origin, "log entry "), origin)
		}
	})
	t.Run("VSA", func(t *testing.T) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		der, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		keyFile := filepath.Join(e.out, "vsa.key")
		require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
		vsaFile := filepath.Join(e.out, "widget.vsa.json")
		code, out, errOut := e.verify(artifact, "--policy", policy, "--bundle-dir", good, "--vsa", vsaFile, "--vsa-key", keyFile)
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
		checkVSA(t, vsaFile, key, policy, []string{checkout, build, pkg})
	})

	// The refusals, each with its rule.
	type refusal struct {
		name     string
		artifact string
		policy   string
		bundles  []string
		rule     string
		reason   string
	}
	var cases []refusal

	// The build's output replaced between build and package: package
	// consumed an app build never produced.
	pkg2WS := filepath.Join(e.dir, "package-replaced")
	require.NoError(t, os.MkdirAll(pkg2WS, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(pkg2WS, "app"), []byte("int main(void) { return 0; } /* and a backdoor */\n"), 0o644))
	pkgReplaced := e.attest("package", "package", pkg2WS, "package-replaced.hallmark.json", "--material", "app", "--product", "widget-1.0.tar",
		"--", "tar", "--mtime=@0", "--owner=0", "--group=0", "-cf", "widget-1.0.tar", "app")
	cases = append(cases, refusal{"build output replaced before package", filepath.Join(pkg2WS, "widget-1.0.tar"), policy,
		[]string{checkout, build, pkgReplaced}, "step.package.materials_from", "material app (sha256 "})

	// A missing step.
	cases = append(cases, refusal{"missing step", artifact, policy, []string{checkout, pkg}, "step.build", "missing step"})

	// A step attested by a workload the policy does not allow for it: the
	// package workload ran build (the agent's policy lets it; the
	// pipeline's does not).
	wrongWS := filepath.Join(e.dir, "build-wrong-workload")
	place(t, filepath.Join(buildWS, "main.c"), filepath.Join(wrongWS, "main.c"))
	place(t, filepath.Join(buildWS, "Makefile"), filepath.Join(wrongWS, "Makefile"))
	buildWrong := e.attest("package", "build", wrongWS, "build-by-package.hallmark.json", "--material", "main.c", "--material", "Makefile", "--product", "app",
		"--", "sh", "-c", "cat main.c > app")
	cases = append(cases, refusal{"step attested by a workload the policy does not allow", artifact, policy,
		[]string{checkout, buildWrong, pkg}, "step.build.workload_spiffe_ids", "workload with " + pipelineWorkloads["package"]})

	// A material that no earlier step produced and no source allows.
	evilWS := filepath.Join(e.dir, "build-extra-material")
	place(t, filepath.Join(buildWS, "main.c"), filepath.Join(evilWS, "main.c"))
	place(t, filepath.Join(buildWS, "Makefile"), filepath.Join(evilWS, "Makefile"))
	require.NoError(t, os.WriteFile(filepath.Join(evilWS, "evil.patch"), []byte("--- a/main.c\n+++ b/main.c\n"), 0o644))
	buildEvil := e.attest("build", "build", evilWS, "build-extra-material.hallmark.json", "--material", "main.c", "--material", "Makefile",
		"--material", "evil.patch", "--product", "app", "--", "sh", "-c", "cat main.c > app")
	cases = append(cases, refusal{"material no earlier step produced", artifact, policy,
		[]string{checkout, buildEvil, pkg}, "step.build.materials_from", "material evil.patch (sha256 "})

	// The source at a commit, or from a repository, the policy does not
	// allow: the policy pins the first commit; or another repository.
	cases = append(cases,
		refusal{"source at a commit the policy does not allow", artifact, e.write("first-commit.pipeline.hcl", pipelinePolicyHCL(first, pipelineRemote)),
			[]string{checkout, build, pkg}, "source.widget.commits", "commit " + e.commit + " is none of the allowed " + first},
		refusal{"source from a repository the policy does not allow", artifact, e.write("other-repo.pipeline.hcl", pipelinePolicyHCL(e.commit, "https://git.example.org/acme/gadget.git")),
			[]string{checkout, build, pkg}, "source.widget.repositories", "remote " + pipelineRemote + " is none of"})

	// A checkout at the older commit, really: the work tree moved to it.
	oldWS := filepath.Join(e.dir, "checkout-old", "src")
	e.git(e.dir, "clone", "-q", origin, oldWS)
	e.git(oldWS, "remote", "set-url", "origin", pipelineRemote)
	e.git(oldWS, "checkout", "-q", "-B", "main", first)
	checkoutOld := e.attest("checkout", "checkout", oldWS, "checkout-old.hallmark.json", "--product", "main.c", "--product", "Makefile")
	buildOld, pkgOld, artifactOld := e.buildAndPackage("old", filepath.Join(oldWS, "main.c"), filepath.Join(oldWS, "Makefile"))
	cases = append(cases, refusal{"a real checkout at a commit the policy does not allow", artifactOld, policy,
		[]string{checkoutOld, buildOld, pkgOld}, "source.widget.commits", "commit " + first + " is none of the allowed"})

	// A bundle of the same step from another run whose products do not
	// match: build ran again and stamped its run into app.
	run2WS := filepath.Join(e.dir, "build-run-2")
	place(t, filepath.Join(buildWS, "main.c"), filepath.Join(run2WS, "main.c"))
	place(t, filepath.Join(buildWS, "Makefile"), filepath.Join(run2WS, "Makefile"))
	buildRun2 := e.attest("build", "build", run2WS, "build-run-2.hallmark.json", "--material", "main.c", "--material", "Makefile", "--product", "app",
		"--", "sh", "-c", "cat main.c > app && echo '/* run 2 */' >> app")
	cases = append(cases, refusal{"build bundle of another run", artifact, policy,
		[]string{checkout, buildRun2, pkg}, "step.package.materials_from", "another run's, or the file was replaced after build"})

	// A checkout of the allowed commit, clean, that also lists as a
	// product a file it wrote under the tree's .git (which the clean check
	// does not compare); build compiles that file as main.c. It is no
	// file of the commit: the chain must not pass it off as the source's.
	plantedCheckout := e.attest("checkout", "checkout", src, "checkout-planted.hallmark.json", "--product", "main.c", "--product", "Makefile",
		"--product", ".git/evil.c", "--", "sh", "-c", `printf 'int main(void) { /* backdoor */ return 1; }\n' > .git/evil.c`)
	require.Equal(t, true, gitSourceOf(t, plantedCheckout)["clean"], "the work tree is clean: .git is the repository")
	buildPlanted, pkgPlanted, artifactPlanted := e.buildAndPackage("planted", filepath.Join(src, ".git", "evil.c"), filepath.Join(src, "Makefile"))
	cases = append(cases, refusal{"checkout passes on a file it planted under .git", artifactPlanted, policy,
		[]string{plantedCheckout, buildPlanted, pkgPlanted}, "step.checkout.sources", "is checkout's product .git/evil.c "})

	// A dirty work tree is recorded as dirty, and the policy (clean
	// required by default) refuses it.
	require.NoError(t, os.WriteFile(filepath.Join(src, "local-change.txt"), []byte("uncommitted"), 0o644))
	checkoutDirty := e.attest("checkout", "checkout", src, "checkout-dirty.hallmark.json", "--product", "main.c", "--product", "Makefile")
	dirty := gitSourceOf(t, checkoutDirty)
	require.Equal(t, false, dirty["clean"], "the dirty work tree is recorded as dirty")
	require.Equal(t, e.commit, dirty["commit"])
	cases = append(cases, refusal{"dirty work tree", artifact, policy,
		[]string{checkoutDirty, build, pkg}, "source.widget.require_clean", "was not clean at commit " + e.commit})

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := e.bundleDir(fmt.Sprintf("case-%d", i), tc.bundles...)
			code, out, errOut := e.verify(tc.artifact, "--policy", tc.policy, "--bundle-dir", dir)
			require.Equal(t, 1, code, "stdout: %s\nstderr: %s", out, errOut)
			require.Contains(t, errOut, "NOT VERIFIED: rule "+tc.rule+": ", "stdout: %s", out)
			require.Contains(t, errOut, tc.reason)
			require.Contains(t, out, "rule:   "+tc.rule)
			t.Logf("%s:\n%s", tc.name, errOut)
		})
	}

	// A policy that allows a dirty tree accepts the dirty checkout.
	t.Run("dirty allowed when the policy says so", func(t *testing.T) {
		lenient := e.write("lenient.pipeline.hcl", strings.Replace(pipelinePolicyHCL(e.commit, pipelineRemote), `refs         = ["refs/heads/main"]`, "refs         = [\"refs/heads/main\"]\n  require_clean = false", 1))
		code, out, errOut := e.verify(artifact, "--policy", lenient, "--bundle-dir", e.bundleDir("dirty-lenient", checkoutDirty, build, pkg))
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
		require.Contains(t, out, "DIRTY")
	})
}

// gitSourceOf returns the annotations (and commit) of the one git source
// of a bundle's statement.
func gitSourceOf(t *testing.T, bundlePath string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(bundlePath)
	require.NoError(t, err)
	b, err := attest.ParseBundle(data)
	require.NoError(t, err)
	var st struct {
		Predicate struct {
			BuildDefinition struct {
				BuildType            string `json:"buildType"`
				ResolvedDependencies []struct {
					Name        string            `json:"name"`
					URI         string            `json:"uri"`
					Digest      map[string]string `json:"digest"`
					Annotations map[string]any    `json:"annotations"`
				} `json:"resolvedDependencies"`
			} `json:"buildDefinition"`
		} `json:"predicate"`
	}
	require.NoError(t, json.Unmarshal(b.GetDsseEnvelope().GetPayload(), &st))
	require.Equal(t, attest.BuildType, st.Predicate.BuildDefinition.BuildType)
	var found map[string]any
	for _, d := range st.Predicate.BuildDefinition.ResolvedDependencies {
		if c, ok := d.Digest["gitCommit"]; ok {
			require.Nil(t, found, "one git source")
			found = d.Annotations
			found["commit"] = c
			found["uri"] = d.URI
		}
	}
	require.NotNil(t, found, "the attestation records a git source")
	return found
}

// checkVSA validates the VSA with in-toto's Go bindings and its DSSE
// signature with go-securesystemslib.
func checkVSA(t *testing.T, path string, key *ecdsa.PrivateKey, policyPath string, bundles []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var env dsse.Envelope
	require.NoError(t, json.Unmarshal(data, &env))
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	sum := sha256.Sum256(der)
	keyID := hex.EncodeToString(sum[:])
	sv, err := signerverifier.NewECDSASignerVerifierFromSSLibKey(&signerverifier.SSLibKey{
		KeyID: keyID, KeyType: signerverifier.ECDSAKeyType, Scheme: signerverifier.ECDSAKeyScheme,
		KeyVal: signerverifier.KeyVal{Public: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
	})
	require.NoError(t, err)
	ev, err := dsse.NewEnvelopeVerifier(sv)
	require.NoError(t, err)
	accepted, err := ev.Verify(context.Background(), &env)
	require.NoError(t, err, "go-securesystemslib verifies the VSA's DSSE signature")
	require.Len(t, accepted, 1)
	payload, err := env.DecodeB64Payload()
	require.NoError(t, err)

	var st ita1.Statement
	require.NoError(t, protojson.Unmarshal(payload, &st))
	require.NoError(t, st.Validate())
	require.Equal(t, "https://slsa.dev/verification_summary/v1", st.GetPredicateType())
	pj, err := protojson.Marshal(st.GetPredicate())
	require.NoError(t, err)
	var vsa vsa1.VerificationSummary
	require.NoError(t, protojson.Unmarshal(pj, &vsa), "in-toto's VSA binding decodes the predicate strictly")
	require.Equal(t, "PASSED", vsa.GetVerificationResult())
	require.Equal(t, []string{"SLSA_BUILD_LEVEL_2"}, vsa.GetVerifiedLevels())
	policy, err := os.ReadFile(policyPath)
	require.NoError(t, err)
	psum := sha256.Sum256(policy)
	require.Equal(t, hex.EncodeToString(psum[:]), vsa.GetPolicy().GetDigest()["sha256"])
	want := map[string]bool{}
	for _, b := range bundles {
		data, err := os.ReadFile(b)
		require.NoError(t, err)
		s := sha256.Sum256(data)
		want[hex.EncodeToString(s[:])] = true
	}
	got := map[string]bool{}
	for _, in := range vsa.GetInputAttestations() {
		got[in.GetDigest()["sha256"]] = true
	}
	require.Equal(t, want, got, "the input attestations are the chain's bundles")
	require.True(t, time.Since(vsa.GetTimeVerified().AsTime()) < 10*time.Minute)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// demoPipelinePolicy is the demo's pipeline policy (docs/pipelines.md):
// checkout of the demo repository at its commit, build from checkout's
// files, package from build's.
const demoPipelinePolicy = `version = 1

source "widget" {
  repositories = ["https://git.example.org/acme/widget.git"]
  commits      = [%q]
}

step "checkout" {
  builder_id_prefixes = [%[3]q]
  workload_selectors  = ["unix:uid:%[2]d"]
  sources            = ["widget"]
}

step "build" {
  builder_id_prefixes = [%[3]q]
  workload_selectors  = ["unix:uid:%[2]d"]
  materials_from     = ["checkout"]
}

step "package" {
  builder_id_prefixes = [%[3]q]
  workload_selectors  = ["unix:uid:%[2]d"]
  materials_from     = ["build"]
  products           = ["widget-*.tar"]
}
`

// pipelineWalkthrough runs a three-step pipeline (checkout of a real git
// repository at a commit, build, package), verifies the package against
// a pipeline policy, then shows a refusal: the build's output replaced
// before packaging.
func pipelineWalkthrough(ctx context.Context, st *harness.Stack) error {
	base := filepath.Join(st.Dir, "pipeline")
	gitEnv := append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+base, "GIT_AUTHOR_NAME=dev", "GIT_AUTHOR_EMAIL=dev@example.org",
		"GIT_COMMITTER_NAME=dev", "GIT_COMMITTER_EMAIL=dev@example.org")
	run := func(dir string, env []string, name string, args ...string) (string, error) {
		c := exec.CommandContext(ctx, name, args...)
		c.Dir, c.Env = dir, env
		out, err := c.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out)), nil
	}
	hallmarkEnv := append(os.Environ(), "HALLMARK_AGENT_SOCKET="+st.Agent.Socket)
	show := func(dir string, args ...string) error {
		fmt.Printf("   $ hallmark %s\n", strings.Join(args, " "))
		c := exec.CommandContext(ctx, st.Bins.CLI, args...)
		c.Dir, c.Env = dir, hallmarkEnv
		c.Stdout, c.Stderr = os.Stdout, os.Stdout
		return c.Run()
	}

	step("A supply chain: checkout of a git repository at a commit, build, package")
	origin := filepath.Join(base, "origin")
	src := filepath.Join(base, "checkout")
	if err := os.MkdirAll(origin, 0o755); err != nil {
		return err
	}
	for name, content := range map[string]string{"main.c": "int main(void) { return 0; }\n", "Makefile": "app: main.c\n\tcp main.c app\n"} {
		if err := os.WriteFile(filepath.Join(origin, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"commit", "-q", "-m", "widget 1.0"}} {
		if _, err := run(origin, gitEnv, "git", args...); err != nil {
			return err
		}
	}
	commit, err := run(origin, gitEnv, "git", "rev-parse", "HEAD")
	if err != nil {
		return err
	}
	if _, err := run(base, gitEnv, "git", "clone", "-q", origin, src); err != nil {
		return err
	}
	if _, err := run(src, gitEnv, "git", "remote", "set-url", "origin", "https://git.example.org/acme/widget.git"); err != nil {
		return err
	}
	fmt.Printf("   repository at commit %s, cloned into %s\n", commit, src)

	bundles := filepath.Join(base, "bundles")
	buildWS, pkgWS := filepath.Join(base, "build"), filepath.Join(base, "package")
	for _, d := range []string{bundles, buildWS, pkgWS} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := show(src, "attest", "--wait-log", "--step", "checkout", "--product", "main.c", "--product", "Makefile",
		"--out", filepath.Join(bundles, "checkout.hallmark.json")); err != nil {
		return fmt.Errorf("attest checkout: %w", err)
	}
	fmt.Println("   (the agent read the work tree's repository itself: commit, tree, clean, branch, remote)")
	for _, f := range []string{"main.c", "Makefile"} {
		if _, err := run(base, nil, "cp", filepath.Join(src, f), buildWS); err != nil {
			return err
		}
	}
	if err := show(buildWS, "attest", "--wait-log", "--step", "build", "--material", "main.c", "--material", "Makefile", "--product", "app",
		"--out", filepath.Join(bundles, "build.hallmark.json"), "--", "make", "-s", "app"); err != nil {
		return fmt.Errorf("attest build: %w", err)
	}
	if _, err := run(base, nil, "cp", filepath.Join(buildWS, "app"), pkgWS); err != nil {
		return err
	}
	if err := show(pkgWS, "attest", "--wait-log", "--step", "package", "--material", "app", "--product", "widget-1.0.tar",
		"--out", filepath.Join(bundles, "package.hallmark.json"), "--", "tar", "--mtime=@0", "-cf", "widget-1.0.tar", "app"); err != nil {
		return fmt.Errorf("attest package: %w", err)
	}

	policy := filepath.Join(base, "widget.pipeline.hcl")
	if err := os.WriteFile(policy, []byte(fmt.Sprintf(demoPipelinePolicy, commit, os.Getuid(), harness.AgentID.String())), 0o644); err != nil {
		return err
	}
	root, err := st.Server.Get(ctx, "/trust/trusted_root.json")
	if err != nil {
		return err
	}
	rootFile := filepath.Join(base, "trusted_root.json")
	if err := os.WriteFile(rootFile, root, 0o644); err != nil {
		return err
	}
	step("The package verified against the pipeline policy (%s), back to the commit", policy)
	if err := show(pkgWS, "verify", "widget-1.0.tar", "--policy", policy, "--trusted-root", rootFile, "--bundle-dir", bundles,
		"--vsa", filepath.Join(base, "widget.vsa.json")); err != nil {
		return fmt.Errorf("verify the pipeline: %w", err)
	}
	fmt.Printf("   (an SLSA verification summary was written to %s)\n", filepath.Join(base, "widget.vsa.json"))

	step("Refused: the build's output replaced before packaging")
	evilWS := filepath.Join(base, "package-replaced")
	if err := os.MkdirAll(evilWS, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(evilWS, "app"), []byte("int main(void) { return 0; } /* backdoor */\n"), 0o644); err != nil {
		return err
	}
	evilBundles := filepath.Join(base, "bundles-replaced")
	if err := os.MkdirAll(evilBundles, 0o755); err != nil {
		return err
	}
	for _, b := range []string{"checkout.hallmark.json", "build.hallmark.json"} {
		if _, err := run(base, nil, "cp", filepath.Join(bundles, b), evilBundles); err != nil {
			return err
		}
	}
	if err := show(evilWS, "attest", "--wait-log", "--step", "package", "--material", "app", "--product", "widget-1.0.tar",
		"--out", filepath.Join(evilBundles, "package.hallmark.json"), "--", "tar", "--mtime=@0", "-cf", "widget-1.0.tar", "app"); err != nil {
		return fmt.Errorf("attest package: %w", err)
	}
	err = show(evilWS, "verify", "widget-1.0.tar", "--policy", policy, "--trusted-root", rootFile, "--bundle-dir", evilBundles)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		return fmt.Errorf("a package of a replaced build output was not refused (%v)", err)
	}
	fmt.Println("   (refused with the rule that caught it, as expected)")
	return nil
}

package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// ciJob is the shell a CI example runs, as read from its file: scripts in
// order, each with the environment the CI system would give it.
type ciJob struct {
	scripts []string
	env     [][]string // per script, NAME=VALUE
}

// The CI examples in deploy/examples, run the way their CI systems would:
// the shell blocks read from each file, with its variables filled in,
// against the shared stack's agent, in a workspace the policy covers. Each
// must attest the build (its bundle verifies against the server's trusted
// root) and run its own verify step, which fetches that root over plain
// HTTP and so checks it against a pinned digest: a wrong pin, or none, and
// the verify step refuses.
func TestDeployExamples(t *testing.T) {
	t.Parallel()
	root, err := harness.RepoRoot()
	require.NoError(t, err)
	examples := filepath.Join(root, "deploy", "examples")
	trusted, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootURL := "http://" + stack.Server.HealthAddr + "/trust/trusted_root.json"
	pin := fmt.Sprintf("%x", sha256.Sum256(trusted)) // as the operator read it from a channel they trust
	const command = "mkdir -p dist && cp src/main.c dist/app"

	for _, tc := range []struct {
		name string
		job  func(t *testing.T, ws string) ciJob
	}{
		{"github", func(t *testing.T, ws string) ciJob {
			return githubJob(t, filepath.Join(examples, "github"), ws, map[string]string{
				"step": "build", "products": "dist/app", "materials": "src", "command": command,
				"trusted-root-url": rootURL, "trusted-root-sha256": pin, "builder-prefix": "spiffe://example.org/hallmark/agent",
				"agent-socket": stack.Agent.Socket,
			})
		}},
		{"gitlab", func(t *testing.T, ws string) ciJob {
			return gitlabJob(t, filepath.Join(examples, "gitlab", "hallmark.gitlab-ci.yml"), map[string]string{
				"HALLMARK_STEP": "build", "HALLMARK_PRODUCTS": "dist/app", "HALLMARK_MATERIALS": "src", "HALLMARK_COMMAND": command,
				"HALLMARK_AGENT_SOCKET": stack.Agent.Socket, "HALLMARK_SCRIPTS": filepath.Join(examples, "scripts"),
				"HALLMARK_TRUSTED_ROOT_URL": rootURL, "HALLMARK_TRUSTED_ROOT_SHA256": pin,
			})
		}},
		{"tekton", func(t *testing.T, ws string) ciJob {
			return tektonJob(t, filepath.Join(examples, "tekton", "hallmark-attest-task.yaml"), ws, map[string]string{
				"step": "build", "products": "dist/app", "materials": "src", "command": command,
				"scripts": filepath.Join(examples, "scripts"), "trusted-root-url": rootURL, "trusted-root-sha256": pin,
			}, map[string]string{"HALLMARK_AGENT_SOCKET": stack.Agent.Socket})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := workspace(t, map[string]string{"src/main.c": "int main(void) { return 0; } // " + tc.name})
			job := tc.job(t, ws)
			require.Len(t, job.scripts, 2, "an attest step, then a verify step")
			base := append(os.Environ(), "PATH="+stack.Bins.Dir+string(os.PathListSeparator)+os.Getenv("PATH"))
			run := func(i int, extra ...string) (string, error) {
				cmd := exec.Command("bash", "-euo", "pipefail", "-c", job.scripts[i])
				cmd.Dir = ws
				cmd.Env = append(append(append([]string{}, base...), job.env[i]...), extra...)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			for i, script := range job.scripts {
				out, err := run(i)
				require.NoError(t, err, "script %d:\n%s\noutput:\n%s", i, script, out)
				t.Logf("script %d: %s", i, strings.TrimSpace(out))
			}

			// Independently of the example's own verify step: the bundle
			// verifies against the trusted root the server publishes.
			bundle := filepath.Join(ws, ".hallmark", "build.hallmark.json")
			require.FileExists(t, bundle)
			rootFile := filepath.Join(ws, "trusted_root.test.json")
			require.NoError(t, os.WriteFile(rootFile, trusted, 0o644))
			verify := exec.Command(stack.Bins.CLI, "verify", "dist/app", "--bundle", bundle, "--trusted-root", rootFile, "--builder-id-prefix", harness.AgentID.String())
			verify.Dir = ws
			out, err := verify.CombinedOutput()
			require.NoError(t, err, "verify: %s", out)

			// Trust material from plain HTTP is taken only with its pin.
			text, err := run(1, "HALLMARK_TRUSTED_ROOT_SHA256="+strings.Repeat("0", 64))
			require.Error(t, err, "verify step took a trusted root whose digest is not the pinned one: %s", text)
			require.Contains(t, text, "not the pinned")
			text, err = run(1, "HALLMARK_TRUSTED_ROOT_SHA256=")
			require.Error(t, err, "verify step took a trusted root from plain HTTP without a pin: %s", text)
			require.Contains(t, text, "not authenticated")

			// The example's verify step fails the job for a changed product.
			require.NoError(t, os.WriteFile(filepath.Join(ws, "dist", "app"), []byte("tampered"), 0o644))
			text, err = run(1)
			require.Error(t, err, "verify step accepted a tampered product: %s", text)
			require.Contains(t, text, "subject")
		})
	}
}

// githubJob reads the composite action's run steps, filling in
// ${{ inputs.* }} (the given inputs over the action's defaults).
func githubJob(t *testing.T, actionDir, ws string, inputs map[string]string) ciJob {
	t.Helper()
	var action struct {
		Inputs map[string]struct {
			Default string `json:"default"`
		} `json:"inputs"`
		Runs struct {
			Using string `json:"using"`
			Steps []struct {
				If  string            `json:"if"`
				Run string            `json:"run"`
				Env map[string]string `json:"env"`
			} `json:"steps"`
		} `json:"runs"`
	}
	readYAML(t, filepath.Join(actionDir, "action.yml"), &action)
	require.Equal(t, "composite", action.Runs.Using)
	for name := range inputs {
		require.Contains(t, action.Inputs, name, "the action has no input %q", name)
	}
	expr := regexp.MustCompile(`\$\{\{\s*inputs\.([a-z0-9-]+)\s*\}\}`)
	fill := func(s string) string {
		return expr.ReplaceAllStringFunc(s, func(m string) string {
			name := expr.FindStringSubmatch(m)[1]
			if v, ok := inputs[name]; ok {
				return v
			}
			in, ok := action.Inputs[name]
			require.True(t, ok, "unknown input %q", name)
			return in.Default
		})
	}
	var job ciJob
	for _, step := range action.Runs.Steps {
		if step.If != "" {
			require.Equal(t, "inputs.verify == 'true'", step.If)
			if fill("${{ inputs.verify }}") != "true" {
				continue
			}
		}
		env := []string{"GITHUB_ACTION_PATH=" + actionDir, "GITHUB_OUTPUT=" + filepath.Join(ws, ".github_output")}
		for k, v := range step.Env {
			env = append(env, k+"="+fill(v))
		}
		job.scripts = append(job.scripts, step.Run)
		job.env = append(job.env, env)
	}
	return job
}

// gitlabJob reads the .hallmark-attest template's script with its
// variables, the given ones (a job's variables) overriding them.
func gitlabJob(t *testing.T, file string, vars map[string]string) ciJob {
	t.Helper()
	var tmpl map[string]struct {
		Variables map[string]string `json:"variables"`
		Script    []string          `json:"script"`
	}
	readYAML(t, file, &tmpl)
	job, ok := tmpl[".hallmark-attest"]
	require.True(t, ok, "no .hallmark-attest template")
	var env []string
	for k, v := range job.Variables {
		if over, ok := vars[k]; ok {
			v = over
		}
		env = append(env, k+"="+v)
	}
	for k := range vars {
		require.Contains(t, job.Variables, k, "the template has no variable %q", k)
	}
	out := ciJob{scripts: job.Script}
	for range job.Script {
		out.env = append(out.env, env)
	}
	return out
}

// tektonJob reads the Task's step scripts and env, substituting
// $(params.*) (the given params over the defaults), the workspace path and
// result paths. extra is what the pod spec would add (the socket path).
func tektonJob(t *testing.T, file, ws string, params, extra map[string]string) ciJob {
	t.Helper()
	var task struct {
		Kind string `json:"kind"`
		Spec struct {
			Params []struct {
				Name    string  `json:"name"`
				Default *string `json:"default"`
			} `json:"params"`
			Steps []struct {
				Name string `json:"name"`
				Env  []struct {
					Name  string `json:"name"`
					Value string `json:"value"`
				} `json:"env"`
				Script string `json:"script"`
			} `json:"steps"`
		} `json:"spec"`
	}
	readYAML(t, file, &task)
	require.Equal(t, "Task", task.Kind)
	values := map[string]string{}
	for _, p := range task.Spec.Params {
		if v, ok := params[p.Name]; ok {
			values[p.Name] = v
		} else if p.Default != nil {
			values[p.Name] = *p.Default
		}
	}
	results := t.TempDir()
	expr := regexp.MustCompile(`\$\((params|workspaces|results)\.([a-z0-9-]+)(\.path)?\)`)
	fill := func(s string) string {
		return expr.ReplaceAllStringFunc(s, func(m string) string {
			sub := expr.FindStringSubmatch(m)
			switch sub[1] {
			case "params":
				v, ok := values[sub[2]]
				require.True(t, ok, "param %q has no value", sub[2])
				return v
			case "workspaces":
				require.Equal(t, "source", sub[2])
				return ws
			default:
				return filepath.Join(results, sub[2])
			}
		})
	}
	var job ciJob
	for _, step := range task.Spec.Steps {
		var env []string
		for _, e := range step.Env {
			if v, ok := extra[e.Name]; ok {
				env = append(env, e.Name+"="+v)
				continue
			}
			env = append(env, e.Name+"="+fill(e.Value))
		}
		job.scripts = append(job.scripts, fill(step.Script))
		job.env = append(job.env, env)
	}
	return job
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, v), file)
}

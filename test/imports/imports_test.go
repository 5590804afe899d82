// Package imports keeps hallmark's halves apart: a test fails when the agent
// (transitively) imports server-side code or the server imports agent code,
// in the manner of Tailscale's deptest. The package has no code of its own.
package imports

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/hallmark-dev/hallmark"

func TestForbiddenImports(t *testing.T) {
	tests := []struct {
		pkg       string
		forbidden []string // import path prefixes, relative to the module
	}{
		{
			pkg: "agent",
			// The agent runs on every CI runner: no server, no key manager
			// (the vault one would also drag in Vault's client), no store.
			forbidden: []string{"server", "plugins/keymanager/", "plugins/store/", "cmd/", "test/"},
		},
		{
			pkg:       "server",
			forbidden: []string{"agent", "plugins/workloadattestor/", "cmd/", "test/"},
		},
		// Plugins implement interfaces the agent and server declare, and
		// import neither.
		{pkg: "plugins/workloadattestor/unix", forbidden: []string{"agent", "server", "cmd/", "test/"}},
		{pkg: "plugins/workloadattestor/spire", forbidden: []string{"agent", "server", "cmd/", "test/"}},
		{pkg: "plugins/keymanager/local", forbidden: []string{"agent", "server", "cmd/", "test/"}},
		{pkg: "plugins/keymanager/vault", forbidden: []string{"agent", "server", "cmd/", "test/"}},
		{pkg: "plugins/store/sqlite", forbidden: []string{"agent", "server", "cmd/", "test/"}},
		{pkg: "plugins/store/postgres", forbidden: []string{"agent", "server", "cmd/", "test/"}},
		{pkg: "plugins/keymanager", forbidden: []string{"agent", "server", "cmd/", "test/", "internal/"}},
		// attest is the public library consumers import alone: nothing of
		// the repository but its own packages.
		{pkg: "attest", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "test/", "proto/"}},
		{pkg: "attest/tlog", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "test/", "proto/"}},
		{pkg: "attest/tsa", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "test/", "proto/"}},
		{pkg: "attest/trust", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "test/", "proto/"}},
		{pkg: "attest/verify", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "test/", "proto/"}},
		{pkg: "attest/verify/pipeline", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "test/", "proto/"}},
		// The interop check verifies with sigstore-go and nothing of ours.
		{pkg: "test/interop/sigstorego", forbidden: []string{"agent", "server", "plugins/", "internal/", "cmd/", "proto/", "attest"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			deps := listDeps(t, module+"/"+tt.pkg)
			require.Contains(t, deps, module+"/"+tt.pkg, "go list lists the package itself")
			if tt.pkg == "agent" || tt.pkg == "server" {
				require.Contains(t, deps, "google.golang.org/grpc/internal/transport", "go list lists indirect imports")
			}
			for _, dep := range deps {
				rel, ok := strings.CutPrefix(dep, module+"/")
				if !ok {
					continue
				}
				for _, f := range tt.forbidden {
					if forbids(f, rel) {
						t.Errorf("%s imports %s (directly or not); it must not import %s/%s", tt.pkg, dep, module, f)
					}
				}
			}
		})
	}
}

// listDeps returns the import paths of pkg and everything it imports,
// test files excluded, as `go list -deps -json` reports them.
func listDeps(t *testing.T, pkg string) []string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed to list imports")
	cmd := exec.Command(goCmd, "list", "-deps", "-json=ImportPath,Error,DepsErrors", pkg)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list: %s", stderr.String())

	var deps []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Error      *struct{ Err string }
		}
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.Nil(t, p.Error, "go list: %s", p.ImportPath)
		deps = append(deps, p.ImportPath)
	}
	return deps
}

// forbids reports whether the forbidden prefix f covers rel, a path
// relative to the module: "server" covers "server" and "server/x" but not
// "serverless"; "plugins/" covers everything under plugins.
func forbids(f, rel string) bool {
	f = strings.TrimSuffix(f, "/")
	return rel == f || strings.HasPrefix(rel, f+"/")
}

func TestForbids(t *testing.T) {
	tests := []struct {
		f, rel string
		want   bool
	}{
		{f: "server", rel: "server", want: true},
		{f: "server", rel: "server/internal", want: true},
		{f: "server", rel: "serverless", want: false},
		{f: "agent", rel: "agentx", want: false},
		{f: "plugins/", rel: "plugins/keymanager/vault", want: true},
		{f: "plugins/", rel: "internal/plugins", want: false},
		{f: "cmd/", rel: "cmd", want: true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, forbids(tt.f, tt.rel), "forbids(%q, %q)", tt.f, tt.rel)
	}
}

// hallmark-attest is started once per build step: its start-up is most of
// what a step pays for Hallmark (make bench, figure fresh). It must not
// link grpc-go, protobuf-go (its internal/detrand reads the executable at
// init), the CLI framework, the verification code, or package net (whose
// resolver links C when cgo is enabled, making the binary dynamically
// linked).
func TestStepClientIsLight(t *testing.T) {
	deps := listDeps(t, module+"/cmd/hallmark-attest")
	require.Contains(t, deps, module+"/internal/agentclient", "go list lists indirect imports")
	for _, dep := range deps {
		for _, f := range []string{"net", "runtime/cgo", "crypto/tls", "google.golang.org/grpc", "google.golang.org/protobuf",
			"github.com/spf13/cobra", module + "/attest/verify", module + "/proto"} {
			require.False(t, dep == f || strings.HasPrefix(dep, f+"/"), "hallmark-attest imports %s (directly or not)", dep)
		}
		if rel, ok := strings.CutPrefix(dep, module+"/"); ok {
			require.Contains(t, []string{"cmd/hallmark-attest", "internal/attestcmd", "internal/agentclient", "internal/wholefile", "attest/claims"}, rel,
				"hallmark-attest imports %s", dep)
		}
	}
}

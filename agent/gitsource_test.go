package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/agent/measure"
)

func gitCmd(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir(),
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "git %v: %s", args, out)
	return strings.TrimSpace(string(out))
}

// The agent finds the work trees of the workspace and of a named
// directory, and a file whose measured digest is not what the clean check
// read makes the tree count as not clean.
func TestGitSources(t *testing.T) {
	ws := t.TempDir()
	src := filepath.Join(ws, "src")
	require.NoError(t, os.MkdirAll(src, 0o755))
	gitCmd(t, src, "init", "-q", "-b", "main")
	gitCmd(t, src, "remote", "add", "origin", "https://token:x-oauth@git.example.org/acme/widget.git")
	require.NoError(t, os.WriteFile(filepath.Join(src, "main.c"), []byte("int main;"), 0o644))
	gitCmd(t, src, "add", "-A")
	gitCmd(t, src, "commit", "-q", "-m", "c")
	require.NoError(t, os.WriteFile(filepath.Join(ws, "notes.txt"), []byte("not a repo"), 0o644))

	root, err := measure.OpenRoot(ws)
	require.NoError(t, err)
	defer root.Close()
	products, err := root.Hash(context.Background(), []string{"src/main.c", "notes.txt"}, measure.Limits{})
	require.NoError(t, err)

	got, err := gitSources(root, []string{"src", "notes.txt", "./src", "../x"}, measure.Limits{}, products)
	require.NoError(t, err)
	require.Len(t, got, 1, "the workspace is no work tree; src is")
	require.Equal(t, "src", got[0].Path)
	require.Equal(t, gitCmd(t, src, "rev-parse", "HEAD"), got[0].Commit)
	require.Equal(t, gitCmd(t, src, "rev-parse", "HEAD^{tree}"), got[0].Tree)
	require.Equal(t, "refs/heads/main", got[0].Ref)
	require.Equal(t, "https://git.example.org/acme/widget.git", got[0].RemoteURL)
	require.True(t, got[0].Clean)

	// The product measured before main.c changed back and forth: its
	// digest is not the one the clean check read.
	changed := append([]measure.Digest(nil), products...)
	for i := range changed {
		if changed[i].Name == "src/main.c" {
			changed[i].SHA256 = strings.Repeat("0", 64)
		}
	}
	got, err = gitSources(root, []string{"src"}, measure.Limits{}, changed)
	require.NoError(t, err)
	require.False(t, got[0].Clean)

	// Named as a product only by a path inside it, the work tree is not
	// looked for: only the workspace and named directories are.
	got, err = gitSources(root, []string{"src/main.c"}, measure.Limits{}, products)
	require.NoError(t, err)
	require.Empty(t, got)

	// The workspace itself as the work tree, dirty.
	root2, err := measure.OpenRoot(src)
	require.NoError(t, err)
	defer root2.Close()
	require.NoError(t, os.WriteFile(filepath.Join(src, "main.o"), []byte("obj"), 0o644))
	got, err = gitSources(root2, []string{"main.c"}, measure.Limits{}, nil)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, ".", got[0].Path)
	require.False(t, got[0].Clean)
}

package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hallmark-dev/hallmark/agent/measure"
	"github.com/hallmark-dev/hallmark/attest"
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

// gitSources reads the work trees of the workspace ws as the agent does,
// with the test's own credentials.
func gitSources(t *testing.T, ws string, paths []string, measured []measure.Digest) ([]attest.GitSource, error) {
	t.Helper()
	root, err := os.OpenRoot(ws)
	require.NoError(t, err)
	defer root.Close()
	g := &gitWorkTrees{paths: paths}
	if err := g.read(root); err != nil {
		return nil, err
	}
	return g.sources(measured), nil
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

	products, err := measure.Hash(context.Background(), ws, []string{"src/main.c", "notes.txt"}, measure.Limits{})
	require.NoError(t, err)

	got, err := gitSources(t, ws, []string{"src", "notes.txt", "./src", "../x"}, products)
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
	got, err = gitSources(t, ws, []string{"src"}, changed)
	require.NoError(t, err)
	require.False(t, got[0].Clean)

	// Named as a product only by a path inside it, the work tree is not
	// looked for: only the workspace and named directories are.
	got, err = gitSources(t, ws, []string{"src/main.c"}, products)
	require.NoError(t, err)
	require.Empty(t, got)

	// The workspace itself as the work tree, dirty.
	require.NoError(t, os.WriteFile(filepath.Join(src, "main.o"), []byte("obj"), 0o644))
	got, err = gitSources(t, src, []string{"main.c"}, nil)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, ".", got[0].Path)
	require.False(t, got[0].Clean)
}

// A step plants a FIFO where the repository has a file: reading it must
// fail the attestation at once, not block the agent's handler forever
// (nothing would ever write to it).
func TestGitSourcesFIFO(t *testing.T) {
	for _, name := range []string{".git/HEAD", ".git/config", ".git/refs/heads/main", ".git/packed-refs"} {
		t.Run(name, func(t *testing.T) {
			ws := t.TempDir()
			gitCmd(t, ws, "init", "-q", "-b", "main")
			require.NoError(t, os.WriteFile(filepath.Join(ws, "main.c"), []byte("int main;"), 0o644))
			gitCmd(t, ws, "add", "-A")
			gitCmd(t, ws, "commit", "-q", "-m", "c")
			if name == ".git/packed-refs" {
				gitCmd(t, ws, "pack-refs", "--all")
			}
			p := filepath.Join(ws, name)
			require.NoError(t, os.Remove(p))
			require.NoError(t, unix.Mkfifo(p, 0o644))

			products, err := measure.Hash(context.Background(), ws, []string{"main.c"}, measure.Limits{})
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() {
				_, err := gitSources(t, ws, []string{"main.c"}, products)
				done <- err
			}()
			select {
			case err := <-done:
				require.ErrorContains(t, err, "not a regular file")
			case <-time.After(20 * time.Second):
				t.Fatalf("reading a work tree whose %s is a FIFO blocked", name)
			}
		})
	}
}

// The agent reads a step's work tree with the step's own rights, like
// its products: a repository the step could not read is no source it may
// claim (the attestation fails), and the same repository made readable is
// read and recorded.
func TestGitSourcesWithCallersRights(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("measuring as another user takes CAP_SETUID and CAP_SETGID: run as root (CI does)")
	}
	const stepUID, stepGID = 4011, 4011
	base, err := os.MkdirTemp("", "hm-gitsrc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	base, err = filepath.EvalSymlinks(base)
	require.NoError(t, err)
	ws := filepath.Join(base, "ws")
	require.NoError(t, os.Mkdir(ws, 0o755))
	gitCmd(t, ws, "init", "-q", "-b", "main")
	require.NoError(t, os.WriteFile(filepath.Join(ws, "main.c"), []byte("int main;"), 0o644))
	gitCmd(t, ws, "add", "-A")
	gitCmd(t, ws, "commit", "-q", "-m", "c")
	commit := gitCmd(t, ws, "rev-parse", "HEAD")
	// Readable by everyone: git writes objects 0444 and directories 0755.
	require.NoError(t, filepath.Walk(filepath.Join(ws, ".git"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chmod(p, fi.Mode().Perm()|0o444)
	}))

	rootfd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(rootfd)
	step := measure.Caller{Root: rootfd, UID: stepUID, GID: stepGID}
	attestAs := func() ([]attest.GitSource, error) {
		g := &gitWorkTrees{paths: []string{"main.c"}}
		prods, _, err := measure.MeasureAndRead(context.Background(), step, ws, []string{"main.c"}, nil, measure.Limits{}, nil, g.read)
		if err != nil {
			return nil, err
		}
		return g.sources(prods), nil
	}

	got, err := attestAs()
	require.NoError(t, err, "a repository the step can read")
	require.Len(t, got, 1)
	require.Equal(t, commit, got[0].Commit)
	require.True(t, got[0].Clean)

	// HEAD made root's alone (0600): the step could not read it, so
	// neither does the agent on its behalf.
	head := filepath.Join(ws, ".git", "HEAD")
	require.NoError(t, os.Chmod(head, 0o600))
	_, err = attestAs()
	require.Error(t, err, "a repository file the step cannot read")
	require.ErrorContains(t, err, "permission denied")

	// Given to the step's uid, it is read again.
	require.NoError(t, os.Chown(head, stepUID, stepGID))
	got, err = attestAs()
	require.NoError(t, err)
	require.Equal(t, commit, got[0].Commit)
}

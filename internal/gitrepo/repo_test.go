package gitrepo_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hallmark-dev/hallmark/internal/gitrepo"
)

// The tests build real repositories with the git program and compare
// what Read finds with what git says; the agent itself never runs git.

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir(),
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "git %v: %s", args, out)
	return strings.TrimSpace(string(out))
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte(content), mode))
	require.NoError(t, os.Chmod(p, mode))
}

// newRepo makes a repository with a few commits: files in directories, an
// executable, a symbolic link, an ignored pattern, and a remote whose URL
// carries credentials.
func newRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	git(t, dir, "remote", "add", "origin", "https://ci-bot:s3cret@git.example.org/acme/widget.git")
	writeFile(t, filepath.Join(dir, "README"), "widget\n", 0o644)
	writeFile(t, filepath.Join(dir, ".gitignore"), "*.o\n", 0o644)
	for i := range 3 {
		writeFile(t, filepath.Join(dir, "src", "main.c"), strings.Repeat("int main(void) { return 0; }\n", 50+i), 0o644)
		writeFile(t, filepath.Join(dir, "src", "lib", "util.c"), strings.Repeat("/* util */\n", 80-i), 0o644)
		writeFile(t, filepath.Join(dir, "build.sh"), "#!/bin/sh\nmake\n", 0o755)
		git(t, dir, "add", "-A")
		git(t, dir, "commit", "-q", "-m", "commit")
	}
	require.NoError(t, os.Symlink("src/main.c", filepath.Join(dir, "main-link")))
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "link")
	return dir
}

func read(t *testing.T, dir, sub string) *gitrepo.Source {
	t.Helper()
	root, err := os.OpenRoot(dir)
	require.NoError(t, err)
	t.Cleanup(func() { root.Close() })
	src, err := gitrepo.Read(gitrepo.FS(root), sub, gitrepo.Limits{})
	require.NoError(t, err)
	return src
}

func TestReadLooseAndPacked(t *testing.T) {
	dir := newRepo(t)
	check := func(t *testing.T, src *gitrepo.Source) {
		require.Equal(t, git(t, dir, "rev-parse", "HEAD"), src.Commit)
		require.Equal(t, git(t, dir, "rev-parse", "HEAD^{tree}"), src.Tree)
		require.Equal(t, "refs/heads/main", src.Ref)
		require.Equal(t, "https://git.example.org/acme/widget.git", src.RemoteURL, "credentials removed")
		require.True(t, src.Clean, src.Difference)
		require.Empty(t, git(t, dir, "status", "--porcelain", "--ignored"))
		sum := sha256.Sum256([]byte(strings.Repeat("int main(void) { return 0; }\n", 52)))
		require.Equal(t, hex.EncodeToString(sum[:]), src.Files["src/main.c"])
		require.Contains(t, src.Files, "build.sh")
		require.Equal(t, src.Files["src/main.c"], src.Files["main-link"], "a link to a file of the tree names its content")
	}
	t.Run("loose", func(t *testing.T) { check(t, read(t, dir, ".")) })
	// Packed, with deltas, packed refs and no loose object left.
	git(t, dir, "gc", "-q", "--aggressive", "--prune=now")
	loose, err := filepath.Glob(filepath.Join(dir, ".git", "objects", "??", "*"))
	require.NoError(t, err)
	require.Empty(t, loose)
	require.FileExists(t, filepath.Join(dir, ".git", "packed-refs"))
	verify := git(t, dir, "verify-pack", "-v", mustGlob(t, filepath.Join(dir, ".git", "objects", "pack", "*.idx")))
	require.Contains(t, verify, "chain length = 1", "the pack has deltas")
	t.Run("packed", func(t *testing.T) { check(t, read(t, dir, ".")) })

	// A detached HEAD (as CI checks out) has no branch.
	git(t, dir, "checkout", "-q", "--detach", "HEAD~1")
	src := read(t, dir, ".")
	require.Equal(t, git(t, dir, "rev-parse", "HEAD"), src.Commit)
	require.Empty(t, src.Ref)
	require.True(t, src.Clean, src.Difference)
}

func mustGlob(t *testing.T, pattern string) string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	require.NoError(t, err)
	require.Len(t, m, 1)
	return m[0]
}

// Every way the work tree can differ from the commit makes it dirty, as
// `git status --ignored` would show it.
func TestReadDirty(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir string)
		want   string
	}{
		{"modified file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "src", "main.c"), "int main(void) { return 1; }\n", 0o644)
		}, "src/main.c differs from the commit"},
		{"same size, other content", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "README"), "gadget\n", 0o644)
		}, "README differs from the commit"},
		{"untracked file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "src", "lib", "new.c"), "x", 0o644)
		}, "extra file src/lib/new.c"},
		{"ignored file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "src", "main.o"), "obj", 0o644)
		}, "extra file src/main.o"},
		{"file in a new directory", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "out", "deep", "a"), "x", 0o644)
		}, "extra file out"},
		{"deleted file", func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, "build.sh")))
		}, "missing build.sh"},
		{"executable bit", func(t *testing.T, dir string) {
			require.NoError(t, os.Chmod(filepath.Join(dir, "build.sh"), 0o644))
		}, "build.sh: executable bit differs"},
		{"link retargeted", func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, "main-link")))
			require.NoError(t, os.Symlink("README", filepath.Join(dir, "main-link")))
		}, "main-link: link target differs"},
		{"file replaced by a link", func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, "README")))
			require.NoError(t, os.Symlink("build.sh", filepath.Join(dir, "README")))
		}, "README is not a regular file"},
		{"directory replaced by a file", func(t *testing.T, dir string) {
			require.NoError(t, os.RemoveAll(filepath.Join(dir, "src", "lib")))
			writeFile(t, filepath.Join(dir, "src", "lib"), "x", 0o644)
		}, "src/lib is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newRepo(t)
			tc.change(t, dir)
			require.NotEmpty(t, git(t, dir, "status", "--porcelain", "--ignored"), "git agrees the tree is dirty")
			src := read(t, dir, ".")
			require.False(t, src.Clean)
			require.Contains(t, src.Difference, tc.want)
			require.Nil(t, src.Files)
			require.Equal(t, git(t, dir, "rev-parse", "HEAD"), src.Commit)
		})
	}
	// An empty new directory is no file: git does not track it.
	dir := newRepo(t)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "empty", "dirs"), 0o755))
	require.True(t, read(t, dir, ".").Clean)
}

// A work tree in a subdirectory of the root, with a .git file pointing to
// its repository elsewhere inside the root, is read; one pointing outside
// is refused.
func TestReadGitFile(t *testing.T) {
	root := t.TempDir()
	repo := newRepo(t)
	require.NoError(t, os.Rename(repo, filepath.Join(root, "src")))
	require.NoError(t, os.Rename(filepath.Join(root, "src", ".git"), filepath.Join(root, "repo.git")))
	writeFile(t, filepath.Join(root, "src", ".git"), "gitdir: ../repo.git\n", 0o644)
	src := read(t, root, "src")
	require.True(t, src.Clean, src.Difference)

	writeFile(t, filepath.Join(root, "src", ".git"), "gitdir: ../../elsewhere.git\n", 0o644)
	r, err := os.OpenRoot(root)
	require.NoError(t, err)
	defer r.Close()
	_, err = gitrepo.Read(gitrepo.FS(r), "src", gitrepo.Limits{})
	require.ErrorContains(t, err, "points outside the workspace")
	writeFile(t, filepath.Join(root, "src", ".git"), "gitdir: /etc\n", 0o644)
	_, err = gitrepo.Read(gitrepo.FS(r), "src", gitrepo.Limits{})
	require.ErrorContains(t, err, "only a relative 'gitdir:'")

	_, err = gitrepo.Read(gitrepo.FS(r), ".", gitrepo.Limits{})
	require.ErrorIs(t, err, gitrepo.ErrNotRepository)
}

// A tampered object store is caught: the object read is not the one its ID
// names.
func TestReadTamperedObject(t *testing.T) {
	dir := newRepo(t)
	head := git(t, dir, "rev-parse", "HEAD")
	other := git(t, dir, "rev-parse", "HEAD~1")
	// The loose commit object of HEAD replaced by HEAD~1's.
	obj := func(id string) string { return filepath.Join(dir, ".git", "objects", id[:2], id[2:]) }
	b, err := os.ReadFile(obj(other))
	require.NoError(t, err)
	require.NoError(t, os.Chmod(obj(head), 0o644))
	require.NoError(t, os.WriteFile(obj(head), b, 0o644))
	root, err := os.OpenRoot(dir)
	require.NoError(t, err)
	defer root.Close()
	_, err = gitrepo.Read(gitrepo.FS(root), ".", gitrepo.Limits{})
	require.ErrorContains(t, err, "hashes to "+other)
}

func TestReadLimits(t *testing.T) {
	dir := newRepo(t)
	root, err := os.OpenRoot(dir)
	require.NoError(t, err)
	defer root.Close()
	// Too large to compare: the commit is read, clean is never claimed.
	for _, tc := range []struct {
		lim  gitrepo.Limits
		want string
	}{
		{gitrepo.Limits{MaxFiles: 3}, "not compared: more than 3"},
		{gitrepo.Limits{MaxFileBytes: 100}, "not compared: src/lib/util.c is larger than 100 bytes"},
		{gitrepo.Limits{MaxTotalBytes: 1000}, "not compared: work tree larger than 1000 bytes"},
	} {
		src, err := gitrepo.Read(gitrepo.FS(root), ".", tc.lim)
		require.NoError(t, err)
		require.False(t, src.Clean)
		require.Equal(t, git(t, dir, "rev-parse", "HEAD"), src.Commit)
		require.Contains(t, src.Difference, tc.want)
	}
	_, err = gitrepo.Read(gitrepo.FS(root), ".", gitrepo.Limits{MaxObjectBytes: 10})
	require.ErrorContains(t, err, "larger than 10 bytes")
}

func TestRemoteURL(t *testing.T) {
	for _, tc := range []struct{ config, ref, want string }{
		{"[remote \"origin\"]\n\turl = https://u:p@h/o/r.git\n", "refs/heads/main", "https://h/o/r.git"},
		{"[remote \"origin\"]\n\turl = ssh://git:pw@h/o/r.git\n", "", "ssh://git@h/o/r.git"},
		{"[remote \"origin\"]\n\turl = git@h:o/r.git\n", "", "git@h:o/r.git"},
		{"[remote \"up\"]\n\turl = https://h/up\n[remote \"origin\"]\n\turl = https://h/origin\n[branch \"main\"]\n\tremote = up\n", "refs/heads/main", "https://h/up"},
		{"[remote \"up\"]\n\turl = https://h/up\n[remote \"origin\"]\n\turl = https://h/origin\n", "refs/heads/main", "https://h/origin"},
		{"[remote \"only\"]\n\turl = \"https://h/only\" ; comment\n", "", "https://h/only"},
		{"[remote \"a\"]\n\turl = https://h/a\n[remote \"b\"]\n\turl = https://h/b\n", "", ""},
		{"[core]\n\tbare = false\n", "", ""},
	} {
		dir := newRepo(t)
		require.NoError(t, os.WriteFile(filepath.Join(dir, ".git", "config"), []byte(tc.config), 0o644))
		if tc.ref == "" {
			git(t, dir, "checkout", "-q", "--detach")
		}
		require.Equal(t, tc.want, read(t, dir, ".").RemoteURL, tc.config)
	}
}

// FS opens no FIFO (open(2) would block until a writer came) and lists
// directories in name order, as os.Root's FS does.
func TestFSRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	writeFile(t, filepath.Join(dir, "b"), "b", 0o644)
	writeFile(t, filepath.Join(dir, "a", "x"), "x", 0o644)
	root, err := os.OpenRoot(dir)
	require.NoError(t, err)
	defer root.Close()
	fsys := gitrepo.FS(root)
	_, err = fsys.Open("fifo")
	require.ErrorContains(t, err, "not a regular file")
	_, err = fs.ReadDir(fsys, "fifo")
	require.ErrorContains(t, err, "not a regular file")
	_, err = fsys.Open("../escape")
	require.ErrorIs(t, err, fs.ErrInvalid)
	list, err := fs.ReadDir(fsys, ".")
	require.NoError(t, err)
	names := []string{}
	for _, e := range list {
		names = append(names, e.Name())
	}
	require.Equal(t, []string{"a", "b", "fifo"}, names)
	b, err := fs.ReadFile(fsys, "a/x")
	require.NoError(t, err)
	require.Equal(t, "x", string(b))
	fi, err := fs.Lstat(fsys, "fifo")
	require.NoError(t, err)
	require.Equal(t, fs.ModeNamedPipe, fi.Mode().Type())
}

// A remote URL that Go's URL parser refuses (a token with '/', '#' or a
// stray '%', a control character) or that has no scheme must not carry
// its password into an attestation, which is public and permanent.
func TestAttackRemoteURLCredentials(t *testing.T) {
	dir := newRepo(t)
	for _, tc := range []struct{ url, want string }{
		{`https://ci:tok/en@git.example.org/acme/widget.git`, ""},
		{`"https://ci:se#cret@git.example.org/acme/widget.git"`, ""},
		{`https://ci:p%zzsecret@git.example.org/acme/widget.git`, ""},
		{`ssh://git:secret@git.example.org:bad/acme/widget.git`, ""},
		{`//ci:secret@git.example.org/acme/widget.git`, "//git.example.org/acme/widget.git"},
		{`ci:secret@git.example.org:acme/widget.git`, ""},
		{`"https://ci:secret@git.example.org/acme/widget.git\n"`, ""},
		{`"https://git.example.org/acme/widget.git\t\b"`, ""},
		// What has no password stays as written.
		{`git@git.example.org:acme/widget.git`, "git@git.example.org:acme/widget.git"},
		{`/srv/git/widget.git`, "/srv/git/widget.git"},
		{`https://ci:secret@git.example.org/acme/widget.git`, "https://git.example.org/acme/widget.git"},
	} {
		cfg := "[remote \"origin\"]\n\turl = " + tc.url + "\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, ".git", "config"), []byte(cfg), 0o644))
		got := read(t, dir, ".").RemoteURL
		require.Equal(t, tc.want, got, tc.url)
		require.NotContains(t, got, "secret")
		require.NotContains(t, got, "tok/en")
	}
}

// A step commits a large file: the agent compares it with the commit
// without holding it in memory (each attestation would otherwise hold up
// to MaxFileBytes, a GiB by default, per file).
func TestAttackLargeFileMemory(t *testing.T) {
	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	const size = 48 << 20
	big := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "big.bin"), big, 0o644))
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "big")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	src := read(t, dir, ".")
	runtime.ReadMemStats(&after)
	require.True(t, src.Clean, src.Difference)
	sum := sha256.Sum256(big)
	require.Equal(t, hex.EncodeToString(sum[:]), src.Files["big.bin"])
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB to compare a %d MiB file", allocated>>10, size>>20)
	require.Less(t, allocated, uint64(4<<20))
}

// Repositories a step may shape to make the agent record a commit or a
// clean state that is not so: each is read as git reads it, or refused.
func TestAttackRepositoryShapes(t *testing.T) {
	readErr := func(t *testing.T, dir string) error {
		root, err := os.OpenRoot(dir)
		require.NoError(t, err)
		defer root.Close()
		_, err = gitrepo.Read(gitrepo.FS(root), ".", gitrepo.Limits{})
		return err
	}
	t.Run("symlinked .git", func(t *testing.T) {
		ws := t.TempDir()
		repo := newRepo(t)
		require.NoError(t, os.Rename(filepath.Join(repo, ".git"), filepath.Join(ws, "elsewhere.git")))
		require.NoError(t, os.Symlink("elsewhere.git", filepath.Join(ws, ".git")))
		require.ErrorContains(t, readErr(t, ws), "neither a directory nor a file")
	})
	t.Run("loose ref beats packed-refs, as in git", func(t *testing.T) {
		dir := newRepo(t)
		git(t, dir, "pack-refs", "--all")
		// packed-refs keeps HEAD~1's ID for main; a loose ref says HEAD.
		head, prev := git(t, dir, "rev-parse", "HEAD"), git(t, dir, "rev-parse", "HEAD~1")
		packed, err := os.ReadFile(filepath.Join(dir, ".git", "packed-refs"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, ".git", "packed-refs"), []byte(strings.ReplaceAll(string(packed), head, prev)), 0o644))
		writeFile(t, filepath.Join(dir, ".git", "refs", "heads", "main"), head+"\n", 0o644)
		require.Equal(t, head, git(t, dir, "rev-parse", "HEAD"))
		src := read(t, dir, ".")
		require.Equal(t, head, src.Commit)
		require.True(t, src.Clean, src.Difference)
	})
	t.Run("pack index pointing an ID at another object", func(t *testing.T) {
		dir := newRepo(t)
		git(t, dir, "gc", "-q", "--prune=now")
		idxPath := mustGlob(t, filepath.Join(dir, ".git", "objects", "pack", "*.idx"))
		idx, err := os.ReadFile(idxPath)
		require.NoError(t, err)
		// Swap the offsets of HEAD's tree and HEAD~1's tree.
		n := int(binary.BigEndian.Uint32(idx[8+255*4:]))
		pos := func(hexID string) int {
			id, err := hex.DecodeString(hexID)
			require.NoError(t, err)
			for m := range n {
				if bytes.Equal(idx[8+1024+20*m:8+1024+20*m+20], id) {
					return 8 + 1024 + 24*n + 4*m
				}
			}
			t.Fatalf("%s not in the index", hexID)
			return 0
		}
		a, b := pos(git(t, dir, "rev-parse", "HEAD^{tree}")), pos(git(t, dir, "rev-parse", "HEAD~1^{tree}"))
		for i := range 4 {
			idx[a+i], idx[b+i] = idx[b+i], idx[a+i]
		}
		require.NoError(t, os.Chmod(idxPath, 0o644))
		require.NoError(t, os.WriteFile(idxPath, idx, 0o644))
		require.ErrorContains(t, readErr(t, dir), "the repository is corrupt or was tampered with")
	})
	t.Run("objects only in alternates", func(t *testing.T) {
		dir := newRepo(t)
		store := t.TempDir()
		require.NoError(t, os.Rename(filepath.Join(dir, ".git", "objects"), filepath.Join(store, "objects")))
		writeFile(t, filepath.Join(dir, ".git", "objects", "info", "alternates"), filepath.Join(store, "objects")+"\n", 0o644)
		git(t, dir, "cat-file", "-e", "HEAD:src/main.c") // git reads them
		require.ErrorContains(t, readErr(t, dir), "alternates and promisor remotes are not read")
	})
	t.Run("trees nested deeper than the reader goes", func(t *testing.T) {
		dir := t.TempDir()
		git(t, dir, "init", "-q", "-b", "main")
		deep := filepath.Join(append([]string{dir}, slices.Repeat([]string{"d"}, 300)...)...)
		writeFile(t, filepath.Join(deep, "f"), "x", 0o644)
		git(t, dir, "add", "-A")
		git(t, dir, "commit", "-q", "-m", "deep")
		require.ErrorContains(t, readErr(t, dir), "nested deeper than 256")
	})
}

// emptyFiles makes n empty files named prefix0000000... in dir, quickly
// (no per-file path walk).
func emptyFiles(t *testing.T, dir, prefix string, n int) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	dfd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(dfd)
	for i := range n {
		fd, err := unix.Openat(dfd, fmt.Sprintf("%s%07d-padding-padding-padding-padding", prefix, i), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		require.NoError(t, err)
		unix.Close(fd)
	}
}

// readAllocating reads the work tree at dir and returns what it found and
// the bytes allocated meanwhile.
func readAllocating(t *testing.T, dir string, lim gitrepo.Limits) (*gitrepo.Source, uint64) {
	t.Helper()
	root, err := os.OpenRoot(dir)
	require.NoError(t, err)
	defer root.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	src, err := gitrepo.Read(gitrepo.FS(root), ".", lim)
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	return src, after.TotalAlloc - before.TotalAlloc
}

// A step's workspace holds a repository (one empty commit) and a directory
// of a great many empty files; the step names one small product. The
// agent reads the workspace's work tree for each attestation: it read
// every directory whole before counting its entries, 174 MiB for a
// directory of 400,000 (MaxFiles 100,000) in a review, per concurrent
// attestation. Directories are read a batch at a time: an untracked
// directory is decided at its first file, and a directory the clean check
// must list whole (for git's sorted first difference) stops at MaxFiles,
// keeping names only of the untracked directories in it.
func TestAttackHugeDirectoryMemory(t *testing.T) {
	const n = 20000 // files: ~450 bytes each, 9 MiB, when listed whole
	// What a read allocates beyond the repository's few objects: for
	// each entry read (not kept), its DirEntry.
	const perEntry, base = 512, 256 << 10
	const dirBatch = 256 // gitrepo's
	t.Run("untracked directory of files", func(t *testing.T) {
		ws := t.TempDir()
		git(t, ws, "init", "-q", "-b", "main")
		git(t, ws, "commit", "-q", "--allow-empty", "-m", "empty")
		emptyFiles(t, filepath.Join(ws, "junk"), "f", n)
		src, allocated := readAllocating(t, ws, gitrepo.Limits{})
		t.Logf("allocated %d KiB for an untracked directory of %d files", allocated>>10, n)
		require.False(t, src.Clean)
		require.Equal(t, "extra file junk", src.Difference)
		require.Less(t, allocated, uint64(base+dirBatch*perEntry), "a batch, not the directory")
	})
	t.Run("files in the work tree's root", func(t *testing.T) {
		ws := t.TempDir()
		git(t, ws, "init", "-q", "-b", "main")
		git(t, ws, "commit", "-q", "--allow-empty", "-m", "empty")
		emptyFiles(t, ws, "f", n)
		const limit = 1000
		src, allocated := readAllocating(t, ws, gitrepo.Limits{MaxFiles: limit})
		t.Logf("allocated %d KiB to stop at %d of %d untracked files", allocated>>10, limit, n)
		require.False(t, src.Clean)
		require.Equal(t, "not compared: more than 1000 entries (MaxFiles), reading .", src.Difference)
		require.Less(t, allocated, uint64(base+limit*perEntry), "entries to the limit, not the directory")
	})
	t.Run("empty directories in the work tree's root", func(t *testing.T) {
		// Only the names of untracked directories are kept: at most
		// MaxFiles of them.
		const dirs, limit = 5000, 1000
		ws := t.TempDir()
		git(t, ws, "init", "-q", "-b", "main")
		git(t, ws, "commit", "-q", "--allow-empty", "-m", "empty")
		for i := range dirs {
			require.NoError(t, os.Mkdir(filepath.Join(ws, fmt.Sprintf("d%07d-padding-padding-padding-padding", i)), 0o755))
		}
		src, allocated := readAllocating(t, ws, gitrepo.Limits{MaxFiles: limit})
		t.Logf("allocated %d KiB to stop at %d of %d untracked directories", allocated>>10, limit, dirs)
		require.False(t, src.Clean)
		require.Equal(t, "not compared: more than 1000 entries (MaxFiles), reading .", src.Difference)
		require.Less(t, allocated, uint64(base+limit*perEntry), "entries to the limit, not the directory")
	})
}

// Within the limit, reading in batches changes nothing: a tracked
// directory of more entries than a batch is clean, and so is one beside
// untracked empty directories (git tracks no directory) while the tree's
// entries and the untracked ones together are at most MaxFiles; one
// fewer and the tree is not compared.
func TestReadManyEntriesWithinLimit(t *testing.T) {
	const tracked, emptyDirs = 1500, 700
	ws := t.TempDir()
	git(t, ws, "init", "-q", "-b", "main")
	emptyFiles(t, filepath.Join(ws, "many"), "t", tracked)
	git(t, ws, "add", "-A")
	git(t, ws, "commit", "-q", "-m", "many")
	for i := range emptyDirs {
		require.NoError(t, os.MkdirAll(filepath.Join(ws, "many", fmt.Sprintf("e%04d", i), "sub"), 0o755))
	}
	require.Empty(t, git(t, ws, "status", "--porcelain", "--ignored"))
	// The tree's entries: "many" and its files; read beside them: each
	// empty directory and the one inside it.
	within := 1 + tracked + 2*emptyDirs
	for _, tc := range []struct {
		maxFiles int
		want     string
	}{
		{0, ""},
		{within, ""},
		{within - 1, fmt.Sprintf("not compared: more than %d entries (MaxFiles)", within-1)},
	} {
		src, _ := readAllocating(t, ws, gitrepo.Limits{MaxFiles: tc.maxFiles})
		require.Equal(t, tc.want == "", src.Clean, "MaxFiles %d: %s", tc.maxFiles, src.Difference)
		require.Contains(t, src.Difference, tc.want)
		if src.Clean {
			require.Len(t, src.Files, tracked)
		}
	}
	// A file among them is found, however the directory lists it.
	writeFile(t, filepath.Join(ws, "many", "e0500", "sub", "x"), "", 0o644)
	src, _ := readAllocating(t, ws, gitrepo.Limits{})
	require.False(t, src.Clean)
	require.Equal(t, "extra file many/e0500", src.Difference)
}

//go:build linux

package measure

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// modes runs f once with openat2 (when the kernel has it) and once with the
// fallback walk.
func modes(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	for _, m := range []struct {
		name    string
		disable bool
	}{{"openat2", false}, {"fallback", true}} {
		t.Run(m.name, func(t *testing.T) {
			setFallback(t, m.disable)
			f(t)
		})
	}
}

func setFallback(tb testing.TB, disable bool) {
	tb.Helper()
	old := disableOpenat2
	disableOpenat2 = disable
	tb.Cleanup(func() { disableOpenat2 = old })
}

func writeFile(t testing.TB, root, name string, content []byte) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(name))
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, content, 0o644))
}

func symlink(t testing.TB, target, root, name string) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(name))
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.Symlink(target, p))
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func digest(name string, content []byte) Digest {
	return Digest{Name: name, SHA256: sum(content), Size: int64(len(content))}
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = r.Read(b)
	return b
}

// fixture is a workspace root with good files, files that escape and
// special files, beside a secret outside it.
type fixture struct {
	root, outside string
	content       map[string][]byte
}

const secret = "outside the workspace: must never be measured\n"

func newFixture(t *testing.T) fixture {
	t.Helper()
	parent := t.TempDir()
	fx := fixture{
		root:    filepath.Join(parent, "root"),
		outside: parent,
		content: map[string][]byte{
			"a.txt":                []byte("alpha\n"),
			"empty":                {},
			"dir/b.txt":            []byte("bravo\n"),
			"dir/sub/c.txt":        []byte("charlie\n"),
			"dir/sub/deeper/d.bin": randomBytes(1, 100_000),
			"loop/f.txt":           []byte("foxtrot\n"),
			"loop/sub/g.txt":       []byte("golf\n"),
		},
	}
	for name, c := range fx.content {
		writeFile(t, fx.root, name, c)
	}
	writeFile(t, parent, "secret.txt", []byte(secret))
	writeFile(t, parent, "outdir/secret.txt", []byte(secret))

	symlink(t, "../a.txt", fx.root, "links/in")
	symlink(t, "../dir/sub", fx.root, "links/indir")
	symlink(t, ".", fx.root, "loop/self")
	symlink(t, "..", fx.root, "loop/sub/up")

	symlink(t, "/etc/passwd", fx.root, "bad/passwd")
	symlink(t, filepath.Join(parent, "secret.txt"), fx.root, "bad/abs")
	symlink(t, "../../secret.txt", fx.root, "bad/up")
	symlink(t, "../../../outdir", fx.root, "bad/escdir/out")
	symlink(t, "nowhere", fx.root, "broken/dangling")
	symlink(t, "loop2", fx.root, "broken/loop1")
	symlink(t, "loop1", fx.root, "broken/loop2")
	symlink(t, "nowhere", fx.root, "dangle/link")

	require.NoError(t, os.MkdirAll(filepath.Join(fx.root, "special"), 0o755))
	require.NoError(t, unix.Mkfifo(filepath.Join(fx.root, "special/fifo"), 0o644))
	l, err := net.Listen("unix", filepath.Join(fx.root, "special/sock"))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	writeFile(t, fx.root, "fifodir/ok.txt", []byte("ok\n"))
	require.NoError(t, unix.Mkfifo(filepath.Join(fx.root, "fifodir/fifo"), 0o644))
	return fx
}

func (fx fixture) digests(names ...string) []Digest {
	out := []Digest{}
	for _, n := range names {
		src := n
		if n == "links/in" {
			src = "a.txt"
		}
		for link, target := range map[string]string{"links/indir/": "dir/sub/", "loop/sub/up/": "loop/"} {
			if rest, ok := strings.CutPrefix(n, link); ok {
				src = target + rest
			}
		}
		c, ok := fx.content[src]
		if !ok {
			panic("no content for " + n)
		}
		out = append(out, digest(n, c))
	}
	return out
}

func TestHash(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		for _, tc := range []struct {
			name  string
			paths []string
			want  []string
		}{
			{"file", []string{"a.txt"}, []string{"a.txt"}},
			{"empty file", []string{"empty"}, []string{"empty"}},
			{"no paths", nil, nil},
			{"directory recursively", []string{"dir"}, []string{"dir/b.txt", "dir/sub/c.txt", "dir/sub/deeper/d.bin"}},
			{"nested file", []string{"dir/sub/deeper/d.bin"}, []string{"dir/sub/deeper/d.bin"}},
			{
				"sorted and deduplicated",
				[]string{"dir/sub/c.txt", "a.txt", "dir", "./a.txt", "dir/../a.txt", "dir/sub/", "a.txt"},
				[]string{"a.txt", "dir/b.txt", "dir/sub/c.txt", "dir/sub/deeper/d.bin"},
			},
			{"symlink to a file inside", []string{"links/in"}, []string{"links/in"}},
			{"symlink to a directory inside", []string{"links/indir"}, []string{"links/indir/c.txt", "links/indir/deeper/d.bin"}},
			{"path through a symlink", []string{"links/indir/deeper/d.bin"}, []string{"links/indir/deeper/d.bin"}},
			{"dot dot that stays inside", []string{"dir/sub/../b.txt"}, []string{"dir/b.txt"}},
			{"symlinks in a walked directory", []string{"links"}, []string{"links/in", "links/indir/c.txt", "links/indir/deeper/d.bin"}},
			// loop/self and loop/sub/up lead back to directories being
			// walked: not walked again.
			{"symlink loops walked once", []string{"loop"}, []string{"loop/f.txt", "loop/sub/g.txt"}},
			{"symlink to a parent walked once", []string{"loop/sub"}, []string{"loop/sub/g.txt", "loop/sub/up/f.txt"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := Hash(context.Background(), fx.root, tc.paths, Limits{})
				require.NoError(t, err)
				require.Equal(t, fx.digests(tc.want...), append([]Digest{}, got...))
			})
		}
	})
}

func TestHashErrors(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		for _, tc := range []struct {
			name  string
			paths []string
			lim   Limits
			want  error  // nil: any error
			msg   string // the error names this
		}{
			{"dot dot", []string{"../x"}, Limits{}, ErrEscapes, `"../x"`},
			{"dot dot after a directory", []string{"a/../../x"}, Limits{}, ErrEscapes, `"a/../../x"`},
			{"only dot dot", []string{"dir/../.."}, Limits{}, ErrEscapes, `"dir/../.."`},
			{"absolute", []string{"/etc/passwd"}, Limits{}, ErrEscapes, `"/etc/passwd"`},
			{"one bad path among good ones", []string{"a.txt", "../secret.txt"}, Limits{}, ErrEscapes, "secret.txt"},
			{"symlink to /etc/passwd", []string{"bad/passwd"}, Limits{}, ErrEscapes, `"bad/passwd"`},
			{"absolute symlink", []string{"bad/abs"}, Limits{}, ErrEscapes, `"bad/abs"`},
			{"relative symlink climbing out", []string{"bad/up"}, Limits{}, ErrEscapes, `"bad/up"`},
			{"symlinked directory escaping", []string{"bad/escdir"}, Limits{}, ErrEscapes, `"bad/escdir/out"`},
			{"path through an escaping directory", []string{"bad/escdir/out/secret.txt"}, Limits{}, ErrEscapes, `"bad/escdir/out/secret.txt"`},
			{"walk meets escaping symlinks", []string{"bad"}, Limits{}, ErrEscapes, `"bad/`},
			{"missing", []string{"missing"}, Limits{}, ErrNotFound, `"missing"`},
			{"below a file", []string{"a.txt/x"}, Limits{}, ErrNotFound, `"a.txt/x"`},
			{"dangling symlink", []string{"broken/dangling"}, Limits{}, ErrNotFound, `"broken/dangling"`},
			{"dangling symlink in a walked directory", []string{"dangle"}, Limits{}, ErrNotFound, `"dangle/link": no such file or directory (symbolic link to "nowhere")`},
			{"symlink loop", []string{"broken/loop1"}, Limits{}, nil, "symbolic links"},
			{"fifo", []string{"special/fifo"}, Limits{}, ErrNotRegular, `"special/fifo": not a regular file (fifo)`},
			{"socket", []string{"special/sock"}, Limits{}, ErrNotRegular, `"special/sock": not a regular file (socket)`},
			{"fifo in a walked directory", []string{"fifodir"}, Limits{}, ErrNotRegular, `"fifodir/fifo"`},
			{"too many files", []string{"a.txt", "empty", "dir/b.txt"}, Limits{MaxFiles: 2}, ErrTooManyFiles, "more than 2 files"},
			{"too many directories", []string{"dir"}, Limits{MaxFiles: 1}, ErrTooManyFiles, "more than 1 directories and symbolic links"},
			{"too many symbolic links", []string{"links"}, Limits{MaxFiles: 2}, ErrTooManyFiles, "more than 2 directories and symbolic links"},
			{"file too large", []string{"dir"}, Limits{MaxFileBytes: 99_999}, ErrTooLarge, `"dir/sub/deeper/d.bin"`},
			{"total too large", []string{"a.txt", "dir"}, Limits{MaxTotalBytes: 100_010}, ErrTooLarge, "files total more than 100010 bytes"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := Hash(context.Background(), fx.root, tc.paths, tc.lim)
				require.Error(t, err)
				require.Nil(t, got)
				if tc.want != nil {
					require.ErrorIs(t, err, tc.want)
				}
				require.ErrorContains(t, err, tc.msg)
				require.NotContains(t, err.Error(), secret)
			})
		}
	})
}

func TestHashEscapesBeforeOpening(t *testing.T) {
	// The root does not exist: the path is refused before it is opened.
	for _, p := range []string{"../x", "a/../../x", "/etc/passwd", ".."} {
		_, err := Hash(context.Background(), "/nonexistent/root", []string{p}, Limits{})
		require.ErrorIs(t, err, ErrEscapes, p)
	}
}

func TestHashRoot(t *testing.T) {
	_, err := Hash(context.Background(), "relative/root", []string{"a"}, Limits{})
	require.ErrorContains(t, err, "not an absolute path")

	_, err = Hash(context.Background(), filepath.Join(t.TempDir(), "missing"), []string{"a"}, Limits{})
	require.ErrorIs(t, err, ErrNotFound)

	_, err = Hash(context.Background(), "/root", []string{"a\x00b"}, Limits{})
	require.ErrorContains(t, err, "NUL")
}

func TestHashSymlinkEscapeMessage(t *testing.T) {
	fx := newFixture(t)
	_, err := Hash(context.Background(), fx.root, []string{"bad"}, Limits{})
	require.ErrorIs(t, err, ErrEscapes)
	// The walk names the link and where it points.
	require.ErrorContains(t, err, `"bad/`)
	require.ErrorContains(t, err, `": path escapes the root`)
	require.ErrorContains(t, err, "(symbolic link to ")
}

func TestHashMatchesSha256sum(t *testing.T) {
	bin, err := exec.LookPath("sha256sum")
	if err != nil {
		t.Skip("no sha256sum")
	}
	modes(t, func(t *testing.T) {
		root := t.TempDir()
		sizes := []int{0, 1, 55, 56, 64, 1000, 1 << 20, 1<<20 + 1, 3<<20 + 17}
		for i, n := range sizes {
			writeFile(t, root, path.Join("d"+string(rune('a'+i%3)), "sub", "f"+string(rune('a'+i))), randomBytes(uint64(i), n))
		}
		writeFile(t, root, "top", []byte("top\n"))

		var names []string
		require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				rel, _ := filepath.Rel(root, p)
				names = append(names, filepath.ToSlash(rel))
			}
			return err
		}))
		cmd := exec.Command(bin, names...)
		cmd.Dir = root
		out, err := cmd.Output()
		require.NoError(t, err)
		var want []Digest
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			hexsum, name, ok := strings.Cut(sc.Text(), "  ")
			require.True(t, ok, sc.Text())
			fi, err := os.Stat(filepath.Join(root, name))
			require.NoError(t, err)
			want = append(want, Digest{Name: name, SHA256: hexsum, Size: fi.Size()})
		}
		slices.SortFunc(want, func(a, b Digest) int { return strings.Compare(a.Name, b.Name) })

		for _, workers := range []int{0, 1, 3} {
			got, err := Hash(context.Background(), root, []string{"."}, Limits{Workers: workers})
			require.NoError(t, err)
			require.Equal(t, want, got)
		}
	})
}

func TestHashCancelled(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Hash(ctx, fx.root, []string{"dir"}, Limits{})
		require.ErrorIs(t, err, context.Canceled)

		// Cancelled between the walk and the hashing.
		r := openTestResolver(t, fx.root)
		_, err = hashFiles(ctx, r, []file{{name: "a.txt"}, {name: "dir/b.txt"}}, Limits{}.withDefaults(), nil, nil)
		require.ErrorIs(t, err, context.Canceled)
	})
}

func openTestResolver(t *testing.T, root string) *resolver {
	t.Helper()
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	r, err := newResolver(fd)
	require.NoError(t, err)
	return r
}

// TestOpenat2Support: resolvers use openat2(2) exactly where this process
// may call it (probed here directly, as an unprivileged walk would), the
// first resolver that probes and every later one that takes its answer
// alike; so the slower fallback walk never runs by accident on a kernel
// that has openat2.
func TestOpenat2Support(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.Openat2(unix.AT_FDCWD, dir, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_MAGICLINKS})
	if err == nil {
		unix.Close(fd)
	}
	has := !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM)
	first := openTestResolver(t, dir)
	require.Equal(t, has, first.openat2, "openat2 probed: %v", err)
	require.Equal(t, has, openTestResolver(t, dir).openat2, "a later resolver, from the cached answer")
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	t.Logf("kernel %s: openat2 %v", unix.ByteSliceToString(uts.Release[:]), has)
}

// TestHashMountPoint needs the right to mount: a mount point inside the root
// is refused like RESOLVE_NO_XDEV says.
func TestHashMountPoint(t *testing.T) {
	fx := newFixture(t)
	mnt := filepath.Join(fx.root, "host/mnt")
	require.NoError(t, os.MkdirAll(mnt, 0o755))
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	writeFile(t, mnt, "x", []byte("x"))
	modes(t, func(t *testing.T) {
		for _, p := range []string{"host/mnt", "host/mnt/x", "host"} {
			_, err := Hash(context.Background(), fx.root, []string{p}, Limits{})
			require.ErrorIs(t, err, ErrEscapes, p)
		}
	})
}

// TestHashSwapRace swaps a directory for a symbolic link that leads outside
// while the tree is measured: Hash may fail, but never measures the secret.
func TestHashSwapRace(t *testing.T) {
	modes(t, func(t *testing.T) {
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		writeFile(t, root, "swap/sub/secret.txt", []byte("inside\n"))
		writeFile(t, root, "other.txt", []byte("other\n"))
		writeFile(t, parent, "outdir/sub/secret.txt", []byte(secret))
		d := filepath.Join(root, "swap")
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				target := "../outdir"
				if i%2 == 1 {
					target = filepath.Join(parent, "outdir")
				}
				_ = os.Rename(d, d+".real")
				_ = os.Symlink(target, d)
				_ = os.Remove(d)
				_ = os.Rename(d+".real", d)
			}
		}()
		bad := sum([]byte(secret))
		outcomes := map[string]int{}
		for range 300 {
			for _, p := range []string{"swap", "swap/sub/secret.txt", "."} {
				got, err := Hash(context.Background(), root, []string{p}, Limits{})
				for _, g := range got {
					require.NotEqual(t, bad, g.SHA256, g.Name)
				}
				switch {
				case err == nil:
					outcomes["measured"]++
				case errors.Is(err, ErrEscapes):
					outcomes["escapes"]++
				default:
					outcomes["other error"]++
				}
			}
		}
		cancel()
		wg.Wait()
		t.Logf("outcomes: %v", outcomes)
	})
}

// FuzzHashPath measures arbitrary paths in a tree with symbolic links that
// escape, beside a secret outside the root: Hash never panics, never
// measures the secret, and names only clean paths inside the root.
func FuzzHashPath(f *testing.F) {
	parent := f.TempDir()
	root := filepath.Join(parent, "root")
	writeFile(f, parent, "secret", []byte(secret))
	writeFile(f, parent, "outdir/secret", []byte(secret))
	writeFile(f, root, "file", []byte("hello\n"))
	writeFile(f, root, "dir/f2", []byte("f2\n"))
	symlink(f, "../secret", root, "esc")
	symlink(f, "../outdir", root, "escdir")
	symlink(f, filepath.Join(parent, "secret"), root, "abs")
	symlink(f, "/proc/self/root"+filepath.Join(parent, "secret"), root, "magic")
	symlink(f, ".", root, "self")
	symlink(f, "../../secret", root, "dir/up")
	symlink(f, "../file", root, "dir/ok")
	symlink(f, "..", root, "dir/parent")
	bad := sum([]byte(secret))

	for _, s := range []string{
		"", ".", "file", "esc", "escdir/secret", "abs", "magic", "self/self/esc", "dir/up",
		"dir/ok", "dir/parent/esc", "../secret", "a/../../secret", "/abs", "dir/../../root/file",
		"self/../secret", "dir/parent/../secret", "escdir/../root/file",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		for _, disable := range []bool{false, true} {
			disableOpenat2 = disable
			got, err := Hash(context.Background(), root, []string{p}, Limits{MaxFiles: 1000, Workers: 2})
			disableOpenat2 = false
			if err != nil {
				require.Nil(t, got)
				continue
			}
			for _, d := range got {
				require.NotEqual(t, bad, d.SHA256, "measured the secret as %q via %q", d.Name, p)
				require.False(t, path.IsAbs(d.Name), d.Name)
				require.Equal(t, path.Clean(d.Name), d.Name)
				require.False(t, d.Name == ".." || strings.HasPrefix(d.Name, "../"), d.Name)
			}
		}
	})
}

func BenchmarkHash(b *testing.B) {
	const files, size = 64, 1 << 20
	root := b.TempDir()
	for i := range files {
		writeFile(b, root, path.Join("d", "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26))), randomBytes(uint64(i), size))
	}
	for _, m := range []struct {
		name    string
		disable bool
	}{{"openat2", false}, {"fallback", true}} {
		b.Run(m.name, func(b *testing.B) {
			setFallback(b, m.disable)
			b.SetBytes(files * size)
			for b.Loop() {
				got, err := Hash(context.Background(), root, []string{"."}, Limits{})
				if err != nil || len(got) != files {
					b.Fatal(len(got), err)
				}
			}
		})
	}
}

// BenchmarkHashSmallFiles measures the per-file cost: opening beneath the
// root twice, fstat and hashing 4 KiB.
func BenchmarkHashSmallFiles(b *testing.B) {
	const files, size = 4096, 4 << 10
	root := b.TempDir()
	for i := range files {
		writeFile(b, root, path.Join("d"+string(rune('a'+i%16)), "f"+string(rune('a'+i/16%26))+string(rune('a'+i/416))), randomBytes(uint64(i), size))
	}
	for _, m := range []struct {
		name    string
		disable bool
	}{{"openat2", false}, {"fallback", true}} {
		b.Run(m.name, func(b *testing.B) {
			setFallback(b, m.disable)
			b.SetBytes(files * size)
			for b.Loop() {
				got, err := Hash(context.Background(), root, []string{"."}, Limits{})
				if err != nil || len(got) != files {
					b.Fatal(len(got), err)
				}
			}
		})
	}
}

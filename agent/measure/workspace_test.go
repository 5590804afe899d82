//go:build linux

package measure

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hallmark-dev/hallmark/internal/proctest"
)

// asSelf is the test process as a caller: its own root, ids, groups and
// permitted capabilities.
func asSelf(t testing.TB) Caller {
	t.Helper()
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(root) })
	groups, err := unix.Getgroups()
	require.NoError(t, err)
	c := Caller{Root: root, UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), Caps: proctest.StatusCaps(t, os.Getpid(), "CapPrm")}
	for _, g := range groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	return c
}

// measureSelf measures in dir as the test process.
func measureSelf(t testing.TB, dir string, products, materials []string, lim Limits, p *Progress) ([]Digest, []Digest, error) {
	t.Helper()
	dir, err := filepath.EvalSymlinks(dir)
	require.NoError(t, err)
	return Measure(context.Background(), asSelf(t), dir, products, materials, lim, p)
}

func TestMeasureWorkspace(t *testing.T) {
	modes(t, func(t *testing.T) {
		base, err := filepath.EvalSymlinks(t.TempDir())
		require.NoError(t, err)
		ws := filepath.Join(base, "ws")
		writeFile(t, ws, "out", []byte("product\n"))
		writeFile(t, ws, "sub/x", []byte("x"))
		require.NoError(t, os.Symlink("ws", filepath.Join(base, "link")))
		require.NoError(t, os.Symlink("/proc/self/root"+ws, filepath.Join(base, "magic")))
		self := asSelf(t)

		got, _, err := Measure(context.Background(), self, ws, []string{"out"}, nil, Limits{}, nil)
		require.NoError(t, err)
		require.Equal(t, []Digest{{Name: "out", SHA256: hexDigest("product\n"), Size: 8}}, got)

		for _, tc := range []struct {
			dir  string
			want error
			msg  string
		}{
			{"relative", nil, "not a clean absolute path"},
			{base + "/./ws", nil, "not a clean absolute path"},
			{base + "/ws/../ws", nil, "not a clean absolute path"},
			{filepath.Join(base, "link"), ErrEscapes, "symbolic link"},
			{filepath.Join(base, "link", "sub"), ErrEscapes, "symbolic link"},
			{filepath.Join(base, "magic"), ErrEscapes, "symbolic link"},
			{"/proc/self/root" + ws, ErrEscapes, "magic link"},
			{fmt.Sprintf("/proc/%d/root%s", os.Getpid(), ws), ErrEscapes, "magic link"},
			{fmt.Sprintf("/proc/%d/cwd", os.Getpid()), ErrEscapes, "magic link"},
			{fmt.Sprintf("/proc/%d", os.Getpid()), ErrEscapes, "procfs"},
			{"/proc", ErrEscapes, "procfs"},
			{"/sys/kernel", ErrEscapes, "sysfs"},
			{filepath.Join(base, "missing"), ErrNotFound, "missing"},
			{filepath.Join(ws, "out"), nil, "not a directory"},
		} {
			got, _, err := Measure(context.Background(), self, tc.dir, []string{"."}, nil, Limits{}, nil)
			require.Error(t, err, tc.dir)
			require.Nil(t, got)
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want, tc.dir)
			}
			require.ErrorContains(t, err, tc.msg, tc.dir)
		}
	})
}

// The workspace is resolved from the caller's root, not the agent's: a
// path names what it names for the caller.
func TestMeasureInCallersRoot(t *testing.T) {
	modes(t, func(t *testing.T) {
		base, err := filepath.EvalSymlinks(t.TempDir())
		require.NoError(t, err)
		writeFile(t, base, "jail/ws/out", []byte("inside the caller's root"))
		writeFile(t, base, "ws/out", []byte("the agent's /ws"))
		jail, err := unix.Open(filepath.Join(base, "jail"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(jail)
		c := asSelf(t)
		c.Root = jail

		got, _, err := Measure(context.Background(), c, "/ws", []string{"out"}, nil, Limits{}, nil)
		require.NoError(t, err)
		require.Equal(t, hexDigest("inside the caller's root"), got[0].SHA256)

		// Nothing climbs out of the caller's root.
		_, _, err = Measure(context.Background(), c, base+"/ws", []string{"out"}, nil, Limits{}, nil)
		require.ErrorIs(t, err, ErrNotFound)
	})
}

// Products and materials share one set of limits.
func TestMeasureOneBudget(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"p/a", "p/b", "m/c", "m/d"} {
		writeFile(t, root, n, []byte(n))
	}
	prods, mats, err := measureSelf(t, root, []string{"p"}, []string{"m"}, Limits{MaxFiles: 4}, nil)
	require.NoError(t, err)
	require.Len(t, prods, 2)
	require.Len(t, mats, 2)
	_, _, err = measureSelf(t, root, []string{"p"}, []string{"m"}, Limits{MaxFiles: 3}, nil)
	require.ErrorIs(t, err, ErrTooManyFiles)
	require.ErrorContains(t, err, "more than 3 files")
	_, _, err = measureSelf(t, root, []string{"p"}, []string{"m"}, Limits{MaxTotalBytes: 7}, nil)
	require.ErrorIs(t, err, ErrTooLarge)
	// A file may be both a product and a material.
	prods, mats, err = measureSelf(t, root, []string{"p/a"}, []string{"p/a"}, Limits{}, nil)
	require.NoError(t, err)
	require.Equal(t, prods, mats)
}

// A walk stops at the limit without reading the rest of a huge directory:
// it reads one batch of names, not all of them.
func TestWalkStopsAtTheLimit(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "huge")
	require.NoError(t, os.Mkdir(dir, 0o755))
	const names = 20000
	for i := range names {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%06d-%s", i, strings.Repeat("x", 40))))
		require.NoError(t, err)
		f.Close()
	}
	before := direntReads.Load()
	_, _, err := measureSelf(t, root, []string{"huge"}, nil, Limits{MaxFiles: 10}, nil)
	require.ErrorIs(t, err, ErrTooManyFiles)
	reads := direntReads.Load() - before
	t.Logf("%d getdents calls for a limit of 10 in a directory of %d names", reads, names)
	require.LessOrEqual(t, reads, int64(1), "the walk read past the limit")

	before = direntReads.Load()
	got, _, err := measureSelf(t, root, []string{"huge"}, nil, Limits{}, nil)
	require.NoError(t, err)
	require.Len(t, got, names)
	require.Greater(t, direntReads.Load()-before, int64(10), "a whole walk reads it all, batch by batch")
}

// BenchmarkHashOneSmallFile is the common attestation: one small product,
// measured with the agent's rights (Hash) and as a caller of another uid
// (the local API's way: a measuring thread holding the caller's
// credentials opens the workspace in the caller's root, walks and hashes).
func BenchmarkHashOneSmallFile(b *testing.B) {
	root, err := os.MkdirTemp("", "hm-bench-") // searchable by uid 4001
	require.NoError(b, err)
	b.Cleanup(func() { os.RemoveAll(root) })
	writeFile(b, root, "out", []byte("product\n"))
	b.Run("Hash", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Hash(context.Background(), root, []string{"out"}, Limits{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Measure", func(b *testing.B) {
		c := asSelf(b)
		c.UID, c.GID, c.Groups, c.Caps = 4001, 4001, nil, 0
		require.NoError(b, os.Chmod(root, 0o755))
		root, err := filepath.EvalSymlinks(root)
		require.NoError(b, err)
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := Measure(context.Background(), c, root, []string{"out"}, nil, Limits{}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func hexDigest(s string) string {
	return sum([]byte(s))
}

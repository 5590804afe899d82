package exedigest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// keepableDir is a directory on a file system whose digests may be kept:
// the test's temporary directory or, when that is tmpfs, one beside the
// package.
func keepableDir(t *testing.T) string {
	t.Helper()
	for _, parent := range []string{"", "."} {
		var dir string
		if parent == "" {
			dir = t.TempDir()
		} else {
			d, err := os.MkdirTemp(parent, ".exedigest-test-")
			require.NoError(t, err)
			t.Cleanup(func() { os.RemoveAll(d) })
			dir = d
		}
		var fs unix.Statfs_t
		require.NoError(t, unix.Statfs(dir, &fs))
		if keepableFS[int64(fs.Type)] {
			return dir
		}
	}
	t.Skip("no ext4, XFS or Btrfs directory to test in")
	return ""
}

// settledCache is a cache whose clock is past RacyWindow, so that files
// written by the test count as settled.
func settledCache(maxEntries int) *Cache {
	c := New(maxEntries)
	c.now = func() time.Time { return time.Now().Add(RacyWindow + time.Second) }
	return c
}

func writeExe(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), mode))
	require.NoError(t, os.Chmod(path, mode)) // past the umask
}

func sum(t *testing.T, c *Cache, path string, limit int64) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	s, err := c.Sum(context.Background(), f, limit)
	require.NoError(t, err)
	return s
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func (c *Cache) hashes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hashed
}

func TestSumKeepsOnlyWhatCannotChangeUnseen(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("files owned by root and by others need root")
	}
	dir := keepableDir(t)
	tests := []struct {
		name    string
		mode    os.FileMode
		owner   int
		racy    bool // the real clock: the file was just written
		nosuid  bool // read through a nosuid bind mount
		wantKep bool
	}{
		{name: "root's, 0755, settled", mode: 0o755, owner: 0, wantKep: true},
		{name: "root's, 0700, settled", mode: 0o700, owner: 0, wantKep: true},
		{name: "root's but just written", mode: 0o755, owner: 0, racy: true},
		{name: "a build user's", mode: 0o755, owner: 65534},
		{name: "root's, group may write", mode: 0o775, owner: 0},
		{name: "root's, others may write", mode: 0o757, owner: 0},
		{name: "root's, on a nosuid mount", mode: 0o755, owner: 0, nosuid: true},
	}
	var nosuidDir string
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "exe"+string(rune('a'+i)))
			writeExe(t, path, "program "+tt.name, tt.mode)
			require.NoError(t, os.Chown(path, tt.owner, tt.owner))
			c := settledCache(0)
			if tt.racy {
				c = New(0)
			}
			if tt.nosuid {
				if nosuidDir == "" {
					nosuidDir = nosuidView(t, dir)
				}
				path = filepath.Join(nosuidDir, filepath.Base(path))
			}
			for range 3 {
				require.Equal(t, sha("program "+tt.name), sum(t, c, path, 1<<20))
			}
			want := 3
			if tt.wantKep {
				want = 1
			}
			require.Equal(t, want, c.hashes(), "files read whole")
		})
	}
}

// nosuidView mounts dir again, nosuid, and returns where; the mount goes
// with the test.
func nosuidView(t *testing.T, dir string) string {
	t.Helper()
	view := t.TempDir()
	if err := unix.Mount(dir, view, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(view, unix.MNT_DETACH) }) //nolint:errcheck // best effort
	require.NoError(t, unix.Mount("", view, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_NOSUID, ""))
	return view
}

// The same file, seen through a nosuid mount (where a user's own file
// system could stand at the same device and inode), is hashed, its kept
// digest not used; seen where it was kept, it is not hashed again.
func TestSumCheckedOnEveryLookup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a root-owned file and a bind mount need root")
	}
	dir := keepableDir(t)
	writeExe(t, filepath.Join(dir, "exe"), "kept", 0o755)
	view := nosuidView(t, dir)
	c := settledCache(0)
	steps := []struct {
		dir        string
		wantHashes int
	}{
		{dir, 1},  // hashed and kept
		{dir, 1},  // kept
		{view, 2}, // same device and inode, not trusted: hashed
		{view, 3},
		{dir, 3}, // still kept
	}
	for i, st := range steps {
		require.Equal(t, sha("kept"), sum(t, c, filepath.Join(st.dir, "exe"), 1<<20))
		require.Equal(t, st.wantHashes, c.hashes(), "step %d", i)
	}
}

// A kept digest is dropped as soon as the file changes: by write, by
// truncation and rewrite to the same size, by chmod, by rename over it.
func TestSumSeesEveryChange(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a root-owned file needs root")
	}
	dir := keepableDir(t)
	path := filepath.Join(dir, "exe")
	writeExe(t, path, "version 1", 0o755)
	c := settledCache(0)
	require.Equal(t, sha("version 1"), sum(t, c, path, 1<<20))
	require.Equal(t, sha("version 1"), sum(t, c, path, 1<<20))
	require.Equal(t, 1, c.hashes())

	// Each change lands in a later clock tick than the last: the cache's
	// clock is settled, the file's is not, and a tick is at most 10 ms.
	changes := []struct {
		name    string
		change  func()
		content string
	}{
		{"write in place, same size", func() {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("2"), 8)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}, "version 2"},
		{"write through a shared mapping", func() {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			m, err := unix.Mmap(int(f.Fd()), 0, 9, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			require.NoError(t, err)
			m[8] = '3'
			require.NoError(t, unix.Munmap(m))
		}, "version 3"},
		{"chmod back and forth", func() {
			require.NoError(t, os.Chmod(path, 0o777))
			require.NoError(t, os.Chmod(path, 0o755))
		}, "version 3"},
		{"renamed over", func() {
			writeExe(t, path+".new", "version 4", 0o755)
			require.NoError(t, os.Rename(path+".new", path))
		}, "version 4"},
	}
	for _, ch := range changes {
		time.Sleep(20 * time.Millisecond)
		before := c.hashes()
		ch.change()
		require.Equal(t, sha(ch.content), sum(t, c, path, 1<<20), ch.name)
		require.Equal(t, before+1, c.hashes(), "%s: hashed again", ch.name)
	}
}

func TestSumNotKeptOnTmpfs(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a root-owned file needs root")
	}
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "exedigest-")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "exe")
	writeExe(t, path, "on tmpfs", 0o755)
	c := settledCache(0)
	for range 2 {
		require.Equal(t, sha("on tmpfs"), sum(t, c, path, 1<<20))
	}
	require.Equal(t, 2, c.hashes(), "writes through a tmpfs mapping move no time: never kept")
}

func TestSumLimitAndNilCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exe")
	writeExe(t, path, "0123456789", 0o755)
	var none *Cache
	require.Equal(t, sha("0123456789"), sum(t, none, path, 10), "a nil cache hashes")
	require.Equal(t, "", sum(t, none, path, 9), "larger than the limit: no digest")
	require.Equal(t, "", sum(t, New(0), path, 9))
	require.Equal(t, sha("0123456789"), sum(t, New(0), path, math.MaxInt64), "no limit")
}

func TestSumEvicts(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("root-owned files need root")
	}
	dir := keepableDir(t)
	c := settledCache(2)
	for i := range 5 {
		path := filepath.Join(dir, "exe"+string(rune('a'+i)))
		writeExe(t, path, path, 0o755)
		require.Equal(t, sha(path), sum(t, c, path, 1<<20))
		require.Equal(t, sha(path), sum(t, c, path, 1<<20))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	require.LessOrEqual(t, len(c.entries), 2)
	require.Equal(t, 5, c.hashed, "each file hashed once, then remembered")
}

// Must show: hashing stops when the call gives up (an outside review kept
// the agent hashing a caller's 250 MB executable after its attestor's
// timeout, on every call).
func TestSumStopsWhenTheCallEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fat")
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(64<<20)) // sparse: reading it costs only the hashing
	require.NoError(t, f.Close())
	f, err = os.Open(path)
	require.NoError(t, err)
	defer f.Close()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = New(0).Sum(ctx, f, 1<<30)
	require.ErrorIs(t, err, context.Canceled)

	s, err := New(0).Sum(context.Background(), f, 1<<30)
	require.NoError(t, err)
	require.Len(t, s, 64, "the same file hashes when the call goes on")
}

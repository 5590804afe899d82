package wholefile

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hallmark-dev/hallmark/internal/proctest"
)

// Helper process: writeEnv's path is written (70 kB) by the test binary
// as a command of its own, its file size limit (RLIMIT_FSIZE) fsizeEnv
// bytes, as a full disk would stop it.
const (
	writeEnv = "HALLMARK_WHOLEFILE_TEST_WRITE"
	fsizeEnv = "HALLMARK_WHOLEFILE_TEST_FSIZE"
)

var data = bytes.Repeat([]byte("bundle "), 10_000)

func TestMain(m *testing.M) {
	if path := os.Getenv(writeEnv); path != "" {
		if n, err := strconv.ParseUint(os.Getenv(fsizeEnv), 10, 64); err == nil {
			if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
				os.Stderr.WriteString(err.Error())
				os.Exit(3)
			}
		}
		if err := Write(path, data); err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	return got
}

func stat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	require.NoError(t, syscall.Lstat(path, &st))
	return &st
}

// withUmask runs the test under umask, the process's, restored after.
func withUmask(t *testing.T, umask int) {
	old := unix.Umask(umask)
	t.Cleanup(func() { unix.Umask(old) })
}

// Must show: a new file, and a regular file of the caller's own, are
// replaced whole (a new inode renamed over the path, the mode it had, or
// 0644 less the umask), the new file 0600 while it is written when it
// replaces one; nothing is left beside them.
func TestWrite(t *testing.T) {
	withUmask(t, 0o022)
	for _, tc := range []struct {
		name        string
		before      os.FileMode // the mode of the file there before; 0: none
		wantMode    os.FileMode
		wantWriting os.FileMode // the new file's mode as it is written
	}{
		{"created", 0, 0o644, 0o644},
		{"replaced", 0o640, 0o640, 0o600},
		{"replaced, private", 0o600, 0o600, 0o600},
		{"replaced, open to all", 0o666, 0o666, 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "b.hallmark.json")
			var oldIno uint64
			if tc.before != 0 {
				require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte("x"), 2*len(data)), 0o600))
				require.NoError(t, os.Chmod(path, tc.before))
				oldIno = stat(t, path).Ino
			}
			var writing os.FileMode
			orig := created
			created = func(f *os.File) {
				fi, err := f.Stat()
				require.NoError(t, err)
				writing = fi.Mode().Perm()
			}
			t.Cleanup(func() { created = orig })

			require.NoError(t, Write(path, data))
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, data, got)
			st := stat(t, path)
			require.Equal(t, tc.wantMode, os.FileMode(st.Mode).Perm())
			require.NotEqual(t, oldIno, st.Ino, "a new file, renamed over the path")
			require.Equal(t, tc.wantWriting, writing, "its mode while written")
			require.Equal(t, []string{"b.hallmark.json"}, names(t, dir), "nothing left beside it")
		})
	}
}

// Must show: a replaced file keeps its group, so that its group bits give
// no other group access, and its mode whatever the umask.
func TestWriteKeepsGroupAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("a file of another group takes root (CI runs as root)")
	}
	for _, tc := range []struct {
		name  string
		umask int
		gid   int
		mode  os.FileMode
	}{
		{"another group", 0o022, 4012, 0o640},
		{"a umask that takes the owner's write bit", 0o277, 0, 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withUmask(t, tc.umask)
			path := filepath.Join(t.TempDir(), "b.hallmark.json")
			require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
			require.NoError(t, os.Chown(path, 0, tc.gid))
			require.NoError(t, os.Chmod(path, tc.mode))
			ino := stat(t, path).Ino
			require.NoError(t, Write(path, data))
			st := stat(t, path)
			require.NotEqual(t, ino, st.Ino, "replaced")
			require.Equal(t, uint32(tc.gid), st.Gid)
			require.Equal(t, tc.mode, os.FileMode(st.Mode).Perm())
		})
	}
}

// Must show: what is not plainly the caller's own regular file is written
// in place, as os.WriteFile writes it (the same inode, owner and mode),
// not replaced: a FIFO, a symlink, a file with another link, one without
// its owner's write bit (root writes it, as before), another user's file
// (so that, in a sticky directory, the kernel's fs.protected_regular
// still decides), a file in a directory its user cannot write. A
// directory is an error, with nothing created.
func TestWriteInPlace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("another user's file, and writing a file without its write bit, take root (CI runs as root)")
	}
	inPlace := func(t *testing.T, path, read string) {
		t.Helper()
		ino := stat(t, path).Ino
		require.NoError(t, Write(path, data))
		require.Equal(t, ino, stat(t, path).Ino, "written in place")
		got, err := os.ReadFile(read)
		require.NoError(t, err)
		require.Equal(t, data, got)
		require.Len(t, names(t, filepath.Dir(path)), 1, "nothing left beside it")
	}
	t.Run("another user's file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "b.hallmark.json")
		require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
		require.NoError(t, os.Chmod(path, 0o666))
		require.NoError(t, os.Chown(path, 4012, 4012))
		inPlace(t, path, path)
		st := stat(t, path)
		require.Equal(t, uint32(4012), st.Uid, "its owner's still")
		require.Equal(t, os.FileMode(0o666), os.FileMode(st.Mode).Perm())
	})
	t.Run("no write bit", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "b.hallmark.json")
		require.NoError(t, os.WriteFile(path, []byte("old"), 0o444))
		inPlace(t, path, path)
		require.Equal(t, os.FileMode(0o444), os.FileMode(stat(t, path).Mode).Perm())
	})
	t.Run("another link", func(t *testing.T) {
		dir := t.TempDir()
		path, other := filepath.Join(dir, "b.hallmark.json"), filepath.Join(t.TempDir(), "other")
		require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
		require.NoError(t, os.Link(path, other))
		inPlace(t, path, other)
	})
	t.Run("a symlink", func(t *testing.T) {
		target, link := filepath.Join(t.TempDir(), "target"), filepath.Join(t.TempDir(), "b.hallmark.json")
		require.NoError(t, os.WriteFile(target, []byte("old"), 0o644))
		require.NoError(t, os.Symlink(target, link))
		inPlace(t, link, target)
		fi, err := os.Lstat(link)
		require.NoError(t, err)
		require.Equal(t, os.ModeSymlink, fi.Mode().Type(), "still a symlink")
	})
	t.Run("a directory that takes no new file", func(t *testing.T) {
		// As uid 4012: its own file, in its own directory that it cannot
		// write (0555). Before, os.WriteFile wrote such a file in place.
		const uid = 4012
		exe := proctest.WorldExecutableCopy(t)
		base, err := os.MkdirTemp("", "hm-wholefile-")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(base) })
		require.NoError(t, os.Chmod(base, 0o755))
		dir, path := filepath.Join(base, "ro"), filepath.Join(base, "ro", "b.hallmark.json")
		require.NoError(t, os.Mkdir(dir, 0o755))
		require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
		require.NoError(t, os.Chown(path, uid, uid))
		require.NoError(t, os.Chown(dir, uid, uid))
		require.NoError(t, os.Chmod(dir, 0o555))
		ino := stat(t, path).Ino
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), writeEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Equal(t, ino, stat(t, path).Ino, "written in place")
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, data, got)
	})
	t.Run("a FIFO", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "fifo")
		require.NoError(t, unix.Mkfifo(fifo, 0o600))
		read := make(chan []byte, 1)
		go func() {
			b, _ := os.ReadFile(fifo) //nolint:errcheck // compared below
			read <- b
		}()
		require.NoError(t, Write(fifo, data))
		select {
		case got := <-read:
			require.Equal(t, data, got)
		case <-time.After(10 * time.Second):
			t.Fatal("nothing came through the FIFO") // its reader waits for a writer that never came
		}
		fi, err := os.Lstat(fifo)
		require.NoError(t, err)
		require.Equal(t, os.ModeNamedPipe, fi.Mode().Type(), "still a FIFO")
	})
	t.Run("a directory", func(t *testing.T) {
		parent := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(parent, "d"), 0o755))
		require.Error(t, Write(filepath.Join(parent, "d"), data))
		require.Equal(t, []string{"d"}, names(t, parent))
		require.Empty(t, names(t, filepath.Join(parent, "d")))
	})
}

// Must show, as another user with the directory's write access would try
// it: a name planted where the new file is to be created (a symlink to a
// file of the caller's) is neither followed nor removed; another name is
// tried.
func TestWriteNeverOpensWhatIsPlanted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.hallmark.json")
	victim := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.WriteFile(victim, []byte("mine"), 0o644))
	require.NoError(t, os.Symlink(victim, filepath.Join(dir, ".planted")))
	tries := []string{".planted", ".fresh"}
	orig := tempName
	tempName = func(string) string { n := tries[0]; tries = tries[1:]; return n }
	t.Cleanup(func() { tempName = orig })
	require.NoError(t, Write(path, data))
	got, err := os.ReadFile(victim)
	require.NoError(t, err)
	require.Equal(t, "mine", string(got), "the planted symlink was not followed")
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, data, got)
	fi, err := os.Lstat(filepath.Join(dir, ".planted"))
	require.NoError(t, err)
	require.Equal(t, os.ModeSymlink, fi.Mode().Type(), "left as it was")
}

// Must show: an error creating the new file (here every name taken) fails
// the write and leaves the previous file as it was: it is no reason to
// write in place, as a full disk is not.
func TestWriteCreateFailsNotInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.hallmark.json")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".taken"), nil, 0o644))
	orig := tempName
	tempName = func(string) string { return ".taken" }
	t.Cleanup(func() { tempName = orig })
	err := Write(path, data)
	require.ErrorIs(t, err, os.ErrExist)
	require.Equal(t, "write "+path+": file exists", err.Error())
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "old", string(got))
}

// Must show: a path that cannot be looked at fails naming it, as every
// error of Write's does.
func TestWriteLstatFails(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	err := Write(filepath.Join(file, "b.hallmark.json"), data)
	require.ErrorIs(t, err, syscall.ENOTDIR)
	require.Equal(t, "write "+filepath.Join(file, "b.hallmark.json")+": not a directory", err.Error())
}

// Must show: a name as long as a file system takes (255 bytes) is
// replaced whole too: the new file's name beside it is cut to fit.
func TestWriteLongName(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, strings.Repeat("b", 250)+".json")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
	ino := stat(t, path).Ino
	require.NoError(t, Write(path, data))
	require.NotEqual(t, ino, stat(t, path).Ino, "replaced")
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// Must show: a write cut short, here by a file size limit as a full disk
// would, fails naming the path (not the new file beside it), and leaves
// the previous file as it was, or none, and nothing beside it.
func TestWriteCutShort(t *testing.T) {
	for _, before := range []string{"", "old"} {
		t.Run("before "+before, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "b.hallmark.json")
			if before != "" {
				require.NoError(t, os.WriteFile(path, []byte(before), 0o644))
			}
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), writeEnv+"="+path, fsizeEnv+"=4096")
			out, err := cmd.CombinedOutput()
			require.Error(t, err)
			require.Equal(t, "write "+path+": file too large", string(out))
			if before == "" {
				require.Empty(t, names(t, dir), "no file cut short")
				return
			}
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, before, string(got), "the previous file, as it was")
			require.Equal(t, []string{"b.hallmark.json"}, names(t, dir), "nothing left beside it")
		})
	}
}

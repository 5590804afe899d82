package wholefile

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// writeEnv makes the test binary Write writeEnv's path (70 kB), as a
// command of its own, under a file size limit the test sets.
const writeEnv = "HALLMARK_WHOLEFILE_TEST_WRITE"

var data = bytes.Repeat([]byte("bundle "), 10_000)

func TestMain(m *testing.M) {
	if path := os.Getenv(writeEnv); path != "" {
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

// Must show: a path holds what it held before or the whole of what was
// written; a regular file keeps its mode, a new one gets 0644 less the
// umask; a FIFO and a symlink are written through, not replaced.
func TestWrite(t *testing.T) {
	umask := unix.Umask(0)
	unix.Umask(umask)
	for _, tc := range []struct {
		name     string
		before   func(t *testing.T, path string) // what is at path before, if anything
		wantMode os.FileMode
	}{
		{"created", nil, 0o644 &^ os.FileMode(umask)},
		{"replaced", func(t *testing.T, path string) { require.NoError(t, os.WriteFile(path, []byte("old"), 0o600)) }, 0o600},
		{"replaced, longer before", func(t *testing.T, path string) {
			require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte("x"), 2*len(data)), 0o640))
		}, 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "b.hallmark.json")
			if tc.before != nil {
				tc.before(t, path)
			}
			require.NoError(t, Write(path, data))
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, data, got)
			fi, err := os.Lstat(path)
			require.NoError(t, err)
			require.Equal(t, tc.wantMode, fi.Mode())
			require.Equal(t, []string{"b.hallmark.json"}, names(t, dir), "nothing left beside it")
		})
	}

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
	t.Run("a symlink", func(t *testing.T) {
		dir := t.TempDir()
		target, link := filepath.Join(t.TempDir(), "target"), filepath.Join(dir, "link")
		require.NoError(t, os.WriteFile(target, []byte("old"), 0o644))
		require.NoError(t, os.Symlink(target, link))
		require.NoError(t, Write(link, data))
		got, err := os.ReadFile(target)
		require.NoError(t, err)
		require.Equal(t, data, got, "written through the link")
		fi, err := os.Lstat(link)
		require.NoError(t, err)
		require.Equal(t, os.ModeSymlink, fi.Mode().Type(), "still a symlink")
	})
	t.Run("a directory", func(t *testing.T) {
		dir := t.TempDir()
		require.Error(t, Write(dir, data))
		require.Empty(t, names(t, dir))
	})
}

// Must show: a write cut short, here by a file size limit (RLIMIT_FSIZE,
// as util-linux prlimit sets it) as a full disk would, fails and leaves
// the previous file as it was, or none, and nothing beside it.
func TestWriteCutShort(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	require.NoError(t, err, "prlimit (util-linux)")
	for _, before := range []string{"", "old"} {
		t.Run("before "+before, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "b.hallmark.json")
			if before != "" {
				require.NoError(t, os.WriteFile(path, []byte(before), 0o644))
			}
			cmd := exec.Command(prlimit, "--fsize=4096", os.Args[0])
			cmd.Env = append(os.Environ(), writeEnv+"="+path)
			out, err := cmd.CombinedOutput()
			require.Error(t, err)
			require.Contains(t, string(out), "file too large")
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

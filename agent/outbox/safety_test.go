package outbox

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// privateDir is a fresh outbox directory as the agent makes it (0700):
// t.TempDir itself is 0755, which Open refuses.
func privateDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "outbox")
	require.NoError(t, os.Mkdir(dir, 0o700))
	return dir
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// damageRecord changes a byte in the body of the record at off of the
// outbox file in dir, as a failing disk would.
func damageRecord(t *testing.T, dir string, off int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "outbox.log"), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("X"), off+frameHead+20)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// checkAll reads every id back whole, as GetBundle does.
func checkAll(t *testing.T, o *Outbox, ids []string, what string) {
	t.Helper()
	for _, id := range ids {
		it, ok, err := o.Get(id)
		require.NoError(t, err, "%s: %s", what, id)
		require.True(t, ok, "%s: %s", what, id)
		require.Equal(t, item(id).Bundle, it.Bundle, "%s: %s", what, id)
		require.Equal(t, item(id).Envelope, it.Envelope, "%s: %s", what, id)
	}
}

// A compaction that fails leaves every record where the outbox thinks it
// is: items settled after it read back whole, the next compaction copies
// the right bytes, and the failure is counted and logged.
func TestFailedCompactionKeepsRecordPositions(t *testing.T) {
	dir := privateDir(t)
	log, logs := observed()
	o, err := Open(dir, Options{CompactAt: 4 << 10, Log: log})
	require.NoError(t, err)
	defer o.Close()
	// Make the next rewrite fail before its rename: its temporary file
	// cannot be created while a non-empty directory holds the name.
	tmp := filepath.Join(dir, "outbox.log.tmp")
	require.NoError(t, os.MkdirAll(filepath.Join(tmp, "x"), 0o700))
	var ids []string
	put := func(from, to int) {
		for i := from; i < to; i++ {
			id := fmt.Sprint(i)
			require.NoError(t, o.Put(item(id)))
			require.NoError(t, o.MarkLogged(id, []byte(`{"i":`+id+`}`)))
			ids = append(ids, id)
		}
	}
	for i := 0; o.CompactionFailures() == 0; i += 10 {
		require.Less(t, i, 1000, "no compaction was attempted")
		put(i, i+10)
	}
	n := len(ids)
	o.mu.Lock()
	size, next := o.size, o.compactAt
	o.mu.Unlock()
	fi, err := os.Stat(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)
	require.Equal(t, fi.Size(), size, "the size the outbox counts is the file's")
	require.Greater(t, next, size, "the next attempt waits for the file to grow")
	failed := logs.FilterMessageSnippet("Compacting the outbox failed").All()
	require.Len(t, failed, 1)
	// docs/outbox.md: logged with error, bytes and next_attempt_at_bytes;
	// the next attempt once the file has doubled.
	fields := failed[0].ContextMap()
	require.Contains(t, fields, "error")
	require.Equal(t, false, fields["writes_refused"], "a failure before the rename refuses nothing")
	at, ok := fields["bytes"].(int64)
	require.True(t, ok, "%v", fields)
	require.Equal(t, 2*at, fields["next_attempt_at_bytes"], "%v", fields)
	require.Equal(t, 2*at, next, "the next attempt is at the logged size")

	put(n, n+20) // appended after the failure, settled
	checkAll(t, o, ids, "after a failed compaction")

	// No compaction in the background from here (the flush goroutine may
	// still be writing what the puts above asked for, and would race the
	// removal below): the next one is the test's own.
	o.mu.Lock()
	o.compactAt = math.MaxInt64
	o.mu.Unlock()
	require.NoError(t, os.RemoveAll(tmp))
	put(n+20, n+25)
	o.mu.Lock()
	err = o.rewrite() // the next compaction, as flush runs it
	size = o.size
	o.mu.Unlock()
	require.NoError(t, err)
	fi, err = os.Stat(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)
	require.Equal(t, fi.Size(), size)
	require.Empty(t, o.Damaged(), "the compaction copied intact records")
	checkAll(t, o, ids, "after the next compaction")
	require.NoError(t, o.Close())

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Empty(t, o.Damaged())
	checkAll(t, o, ids, "reopened")
}

// A compaction copies a settled item's records from the file only when
// they are intact and the item's: a record damaged since it was written
// is moved aside and counted, never copied into the new file.
func TestCompactionChecksWhatItCopies(t *testing.T) {
	dir := privateDir(t)
	log, logs := observed()
	o, err := Open(dir, Options{Log: log})
	require.NoError(t, err)
	defer o.Close()
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, o.Put(item(id)))
		require.NoError(t, o.MarkLogged(id, []byte("{}")))
	}
	o.mu.Lock()
	b := o.items["b"].put
	o.mu.Unlock()
	damageRecord(t, dir, b.off)

	o.mu.Lock()
	err = o.rewrite()
	o.mu.Unlock()
	require.NoError(t, err)
	d := o.Damaged()
	require.Len(t, d, 2, "b's put and logged records")
	require.Equal(t, b.off, d[0].Offset)
	kept, err := os.ReadFile(d[0].File)
	require.NoError(t, err)
	require.Len(t, kept, b.n)
	require.Equal(t, 2, logs.FilterMessageSnippet("found damaged by a compaction").Len())
	_, ok, err := o.Get("b")
	require.NoError(t, err)
	require.False(t, ok)
	checkAll(t, o, []string{"a", "c"}, "after the compaction")
	require.NoError(t, o.Close())

	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Empty(t, o.Damaged(), "nothing damaged was copied")
	checkAll(t, o, []string{"a", "c"}, "reopened")
}

// When a compaction has renamed its file over the outbox but cannot make
// that durable or open the new file, the outbox refuses writes: appending
// to the old, unlinked file would acknowledge attestations into a file
// that is gone. Everything acknowledged before is in the outbox.
func TestFailureAfterCompactionRenameFailsClosed(t *testing.T) {
	for _, step := range []string{"sync dir", "reopen"} {
		t.Run(step, func(t *testing.T) {
			dir := privateDir(t)
			log, logs := observed()
			o, err := Open(dir, Options{CompactAt: 4 << 10, Log: log})
			require.NoError(t, err)
			defer o.Close()
			calls := 0
			o.mu.Lock()
			if step == "sync dir" {
				o.syncDir = func(string) error { calls++; return errors.New("injected: fsync of the directory failed") }
			} else {
				o.openAppend = func(string) (*os.File, error) { calls++; return nil, errors.New("injected: too many open files") }
			}
			o.mu.Unlock()
			var acked []string
			var refused error
			for i := range 1000 {
				id := fmt.Sprint(i)
				if err := o.Put(item(id)); err != nil {
					refused = err
					break
				}
				acked = append(acked, id)
			}
			require.Equal(t, 1, calls, "one compaction reached the step")
			require.ErrorContains(t, refused, "injected", "a Put after it is refused, saying why")
			require.ErrorContains(t, o.Put(item("later")), "refusing writes")
			require.Equal(t, 1, o.CompactionFailures())
			failed := logs.FilterMessageSnippet("Compacting the outbox failed").All()
			require.Len(t, failed, 1)
			require.Equal(t, true, failed[0].ContextMap()["writes_refused"], "docs/outbox.md: the error says writes_refused")
			require.NoError(t, o.Close())

			o, err = Open(dir, Options{})
			require.NoError(t, err)
			defer o.Close()
			require.Equal(t, len(acked), o.Len(), "every acknowledged Put is in the outbox")
			checkAll(t, o, acked, "reopened")
		})
	}
}

// Open refuses an outbox directory or file someone other than the agent
// could write, or a link: such a user could make the agent (often root)
// drop attestations or truncate any file. The error names the path, the
// owner, the mode and the fix.
func TestOpenRefusesWhatIsNotPrivate(t *testing.T) {
	nobody := 65534
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, dir string) // dir is 0700, empty
		want    []string                       // in the error; none: opens
		root    bool                           // needs root (chown)
	}{
		{name: "a new private directory opens", prepare: func(*testing.T, string) {}},
		{name: "an existing private outbox opens", prepare: func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "outbox.log"), fileHeader(), 0o600))
		}},
		{name: "directory 0755", want: []string{"is open to group or others", "mode 0755", "owner uid", "chmod 0700"}, prepare: func(t *testing.T, dir string) {
			require.NoError(t, os.Chmod(dir, 0o755))
		}},
		{name: "directory 0770", want: []string{"mode 0770"}, prepare: func(t *testing.T, dir string) {
			require.NoError(t, os.Chmod(dir, 0o770))
		}},
		{name: "file 0644", want: []string{"outbox.log is open to group or others", "mode 0644", "chmod 0600"}, prepare: func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "outbox.log"), fileHeader(), 0o600))
			require.NoError(t, os.Chmod(filepath.Join(dir, "outbox.log"), 0o644))
		}},
		{name: "file a symlink", want: []string{"outbox.log is a symbolic link", "remove the link"}, prepare: func(t *testing.T, dir string) {
			victim := filepath.Join(t.TempDir(), "victim")
			require.NoError(t, os.WriteFile(victim, nil, 0o600))
			require.NoError(t, os.Symlink(victim, filepath.Join(dir, "outbox.log")))
		}},
		{name: "directory owned by another user", root: true, want: []string{fmt.Sprintf("owned by uid %d, not by the agent", nobody), "chown"}, prepare: func(t *testing.T, dir string) {
			require.NoError(t, os.Chown(dir, nobody, nobody))
		}},
		{name: "file owned by another user", root: true, want: []string{fmt.Sprintf("outbox.log is owned by uid %d", nobody)}, prepare: func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "outbox.log"), fileHeader(), 0o600))
			require.NoError(t, os.Chown(filepath.Join(dir, "outbox.log"), nobody, nobody))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("chown to another user needs root")
			}
			dir := privateDir(t)
			tc.prepare(t, dir)
			o, err := Open(dir, Options{})
			if len(tc.want) == 0 {
				require.NoError(t, err)
				require.NoError(t, o.Put(item("a")))
				require.NoError(t, o.Close())
				return
			}
			require.ErrorIs(t, err, ErrNotPrivate)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
	t.Run("directory a symlink", func(t *testing.T) {
		real := privateDir(t)
		link := filepath.Join(t.TempDir(), "outbox")
		require.NoError(t, os.Symlink(real, link))
		_, err := Open(link, Options{})
		require.ErrorIs(t, err, ErrNotPrivate)
		require.ErrorContains(t, err, link+" is a symbolic link")
	})
}

// A stale outbox.log.tmp, even a link to another file, is removed, never
// opened: the rewrite creates its own.
func TestRewriteNeverFollowsAStaleTmp(t *testing.T) {
	dir := privateDir(t)
	victim := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.WriteFile(victim, []byte("precious"), 0o600))
	require.NoError(t, os.Symlink(victim, filepath.Join(dir, "outbox.log.tmp")))
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	require.NoError(t, o.Put(item("a")))
	require.NoError(t, o.Close())
	got, err := os.ReadFile(victim)
	require.NoError(t, err)
	require.Equal(t, "precious", string(got))
	fi, err := os.Lstat(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)
	require.True(t, fi.Mode().IsRegular())
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	_, err = os.Lstat(filepath.Join(dir, "outbox.log.tmp"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// A torn tail is dropped, not counted as damaged, but kept aside, logged
// and reported by Torn.
func TestTornTailIsKeptAndReported(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(data []byte) []byte
	}{
		{"record cut short", func(d []byte) []byte { return d[:len(d)-5] }},
		{"head cut short", func(d []byte) []byte { return append(d, marker[:3]...) }},
		{"zeros past the last write", func(d []byte) []byte { return append(d, make([]byte, 40)...) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := privateDir(t)
			o, err := Open(dir, Options{})
			require.NoError(t, err)
			require.NoError(t, o.Put(item("a")))
			require.NoError(t, o.Put(item("b")))
			_, ok := o.Torn()
			require.False(t, ok, "a clean file has no torn tail")
			require.NoError(t, o.Close())
			path := filepath.Join(dir, "outbox.log")
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			cut := tc.cut(data)
			require.NoError(t, os.WriteFile(path, cut, 0o600))

			log, logs := observed()
			o, err = Open(dir, Options{Log: log})
			require.NoError(t, err)
			defer o.Close()
			torn, ok := o.Torn()
			require.True(t, ok)
			require.Empty(t, o.Damaged(), "a torn tail is not a damaged record")
			_, n := o.DamagedFiles()
			require.Zero(t, n, "nor counted as one in status")
			kept, err := os.ReadFile(torn.File)
			require.NoError(t, err)
			require.Equal(t, cut[torn.Offset:], kept, "the dropped bytes, kept as they were")
			require.Equal(t, int64(len(kept)), torn.Length)
			require.Equal(t, filepath.Join(dir, DamagedDir), filepath.Dir(torn.File))
			w := logs.FilterMessageSnippet("cut short").AllUntimed()
			require.Len(t, w, 1)
			require.Equal(t, zapcore.WarnLevel, w[0].Level)
			require.Equal(t, torn.Offset, w[0].ContextMap()["offset"])
			require.Equal(t, torn.Length, w[0].ContextMap()["bytes"])
		})
	}
}

// Must show (from an outside review): with data_dir 0777, a local user
// moved the outbox aside (mv data/outbox data/gone), and the restarted
// agent started an empty one, dropping five queued attestations without
// a word. The outbox is refused where another user could rename entries
// of its parent or of any directory above it; a sticky directory (/tmp)
// lets nobody rename another's entries.
func TestOpenRefusesADataDirOthersCanRenameIn(t *testing.T) {
	for _, tc := range []struct {
		name             string
		parent, grandpar os.FileMode
		owner, group     int // of the parent; -1: unchanged
		want             string
	}{
		{"private", 0o700, 0o755, -1, -1, ""},
		{"readable by all", 0o755, 0o755, -1, -1, ""},
		{"writable by all", 0o777, 0o755, -1, -1, "is writable by others"},
		{"writable by another group", 0o770, 0o755, -1, 4013, "is writable by group 4013, not this daemon's own"},
		{"writable by the agent's own group (a volume under Kubernetes' fsGroup)", 0o770 | os.ModeSetgid, 0o755, -1, -1, ""},
		{"sticky and writable by all", 0o777 | os.ModeSticky, 0o755, -1, -1, ""},
		{"a directory above writable by all", 0o700, 0o777, -1, -1, "is writable by others"},
		{"owned by another user", 0o700, 0o755, 4012, -1, "is owned by uid 4012"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.owner >= 0 || tc.group >= 0) && os.Geteuid() != 0 {
				t.Skip("chown to another user or group needs root")
			}
			grand := filepath.Join(t.TempDir(), "grand")
			parent := filepath.Join(grand, "data")
			require.NoError(t, os.MkdirAll(parent, 0o700))
			require.NoError(t, os.Chmod(grand, tc.grandpar))
			require.NoError(t, os.Chmod(parent, tc.parent))
			if tc.owner >= 0 || tc.group >= 0 {
				require.NoError(t, os.Chown(parent, tc.owner, tc.group))
			}
			t.Cleanup(func() { os.Chmod(grand, 0o700) }) //nolint:errcheck // best effort
			o, err := Open(filepath.Join(parent, "outbox"), Options{})
			if tc.want == "" {
				require.NoError(t, err)
				require.NoError(t, o.Close())
				return
			}
			require.ErrorContains(t, err, tc.want)
			_, statErr := os.Stat(filepath.Join(parent, "outbox"))
			require.ErrorIs(t, statErr, os.ErrNotExist, "nothing made where it was refused")
		})
	}
}

// The attacker review's bypass: data_dir is a symbolic link, in a private
// directory, to a directory inside one that everyone may write. The
// directories that really hold the outbox are checked too.
func TestOpenRefusesADataDirLinkedIntoADirectoryOthersCanRenameIn(t *testing.T) {
	base := t.TempDir()
	shared := filepath.Join(base, "shared")
	real := filepath.Join(shared, "data")
	require.NoError(t, os.MkdirAll(real, 0o700))
	require.NoError(t, os.Chmod(shared, 0o777))
	safe := filepath.Join(base, "safe")
	require.NoError(t, os.Mkdir(safe, 0o755))
	dataDir := filepath.Join(safe, "data")
	require.NoError(t, os.Symlink(real, dataDir))

	for _, dir := range []string{filepath.Join(real, "outbox"), filepath.Join(dataDir, "outbox")} {
		_, err := Open(dir, Options{})
		require.ErrorIs(t, err, ErrNotPrivate, dir)
		require.ErrorContains(t, err, shared+" is writable by others")
	}
	// With the shared directory closed, the link is fine.
	require.NoError(t, os.Chmod(shared, 0o755))
	o, err := Open(filepath.Join(dataDir, "outbox"), Options{})
	require.NoError(t, err)
	require.NoError(t, o.Close())
}

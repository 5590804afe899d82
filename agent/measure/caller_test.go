//go:build linux

package measure

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Test users and groups: numbers only, no /etc/passwd entries needed.
const (
	stepUID    = 4001
	stepGID    = 4001
	otherUID   = 4002
	sharedGID  = 4242
	capDACOver = 1 << unix.CAP_DAC_OVERRIDE
	capDACRead = 1 << unix.CAP_DAC_READ_SEARCH
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("measuring as another user takes CAP_SETUID and CAP_SETGID: run as root (CI does)")
	}
}

// openDirFor is a temporary directory every user may search: t.TempDir's
// parent is 0700.
func openDirFor(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm-measure-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	dir, err = filepath.EvalSymlinks(dir)
	require.NoError(t, err)
	return dir
}

// posixACL is the system.posix_acl_access value of mode 0600 plus
// "user:uid:r--" (linux/posix_acl_xattr.h).
func posixACL(uid uint32) []byte {
	type entry struct {
		tag, perm uint16
		id        uint32
	}
	const undefined = ^uint32(0)
	entries := []entry{
		{0x01, 6, undefined}, // ACL_USER_OBJ rw-
		{0x02, 4, uid},       // ACL_USER r--
		{0x04, 0, undefined}, // ACL_GROUP_OBJ ---
		{0x10, 4, undefined}, // ACL_MASK r--
		{0x20, 0, undefined}, // ACL_OTHER ---
	}
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// Must show: the agent measures a file only if the caller itself could
// read it; both directions, for owner, group, supplementary group, ACL,
// directory search and read permission and a root caller's capabilities.
func TestMeasureWithCallersRights(t *testing.T) {
	needRoot(t)
	modes(t, func(t *testing.T) {
		ws := filepath.Join(openDirFor(t), "ws")
		file := func(name string, mode os.FileMode, uid, gid int) {
			p := filepath.Join(ws, name)
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
			require.NoError(t, os.WriteFile(p, []byte(name), 0o600))
			require.NoError(t, os.Chown(p, uid, gid))
			require.NoError(t, os.Chmod(p, mode))
		}
		dir := func(name string, mode os.FileMode) {
			p := filepath.Join(ws, name)
			require.NoError(t, os.MkdirAll(p, 0o755))
			require.NoError(t, os.Chmod(p, mode))
		}
		file("public", 0o644, 0, 0)
		file("root-only", 0o600, 0, 0)
		file("own", 0o600, stepUID, stepGID)
		file("own-group", 0o640, 0, stepGID)
		file("shared-group", 0o640, 0, sharedGID)
		file("acl", 0o600, 0, 0)
		require.NoError(t, unix.Setxattr(filepath.Join(ws, "acl"), "system.posix_acl_access", posixACL(stepUID), 0))
		file("other-user", 0o600, otherUID, otherUID)
		file("closed/inside", 0o644, 0, 0)
		file("closed/sub/inside", 0o644, 0, 0)
		dir("closed", 0o700)
		file("searchable/inside", 0o644, 0, 0)
		dir("searchable", 0o711)
		file("mixed/a-public", 0o644, 0, 0)
		file("mixed/b-secret", 0o600, 0, 0)

		step := asSelf(t)
		step.UID, step.GID, step.Groups, step.Caps = stepUID, stepGID, nil, 0
		inShared := step
		inShared.Groups = []uint32{sharedGID}
		rootAll := asSelf(t)
		rootNoDAC := rootAll
		rootNoDAC.Caps &^= capDACOver | capDACRead

		for _, tc := range []struct {
			name   string
			caller Caller
			path   string
			ok     bool
		}{
			{"world-readable file", step, "public", true},
			{"root's 0600 file", step, "root-only", false},
			{"own 0600 file", step, "own", true},
			{"primary group's 0640 file", step, "own-group", true},
			{"another group's 0640 file", step, "shared-group", false},
			{"supplementary group's 0640 file", inShared, "shared-group", true},
			{"file an ACL grants", step, "acl", true},
			{"file an ACL does not grant", Caller{Root: step.Root, UID: otherUID + 1, GID: otherUID + 1}, "acl", false},
			{"another user's 0600 file", step, "other-user", false},
			{"file in a 0700 directory", step, "closed/inside", false},
			{"0700 directory walked", step, "closed", false},
			{"file in a 0711 directory", step, "searchable/inside", true},
			{"0711 directory walked (no read)", step, "searchable", false},
			{"directory with one secret", step, "mixed", false},
			{"root with its capabilities", rootAll, "other-user", true},
			{"root without DAC capabilities", rootNoDAC, "other-user", false},
			{"root without DAC capabilities, own file", rootNoDAC, "root-only", true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var p Progress
				got, _, err := Measure(context.Background(), tc.caller, ws, []string{tc.path}, nil, Limits{}, &p)
				if tc.ok {
					require.NoError(t, err)
					require.NotEmpty(t, got)
					return
				}
				require.ErrorIs(t, err, ErrNoAccess)
				require.Nil(t, got)
				require.Zero(t, p.BytesDone.Load(), "nothing read")
				require.Zero(t, p.FilesTotal.Load(), "refused before anything was listed for hashing")
			})
		}

		// The workspace itself is opened with the caller's rights.
		_, _, err := Measure(context.Background(), step, filepath.Join(ws, "closed", "sub"), []string{"inside"}, nil, Limits{}, nil)
		require.ErrorIs(t, err, ErrNoAccess)
		_, _, err = Measure(context.Background(), rootAll, filepath.Join(ws, "closed", "sub"), []string{"inside"}, nil, Limits{}, nil)
		require.NoError(t, err)
	})
}

// Must show: every file is read with the caller's rights, however the
// measurement is split among threads: a small measurement of several
// files, hashed on the thread that walked, with more than one worker
// allowed (the default on more than one core) included. The caller makes
// its own files unreadable (chmod 0) after the walk checked them, through
// the workspace reader, which runs in between on the measuring thread:
// read with the caller's rights they cannot be opened. Before the fix
// such a measurement was hashed by goroutines holding the agent's own
// credentials (root), and answered with the digests.
func TestSmallMeasurementReadWithCallersRights(t *testing.T) {
	needRoot(t)
	modes(t, func(t *testing.T) {
		ws := filepath.Join(openDirFor(t), "ws")
		require.NoError(t, os.MkdirAll(ws, 0o755))
		names := []string{"a", "b", "c"}
		for _, n := range names {
			p := filepath.Join(ws, n)
			require.NoError(t, os.WriteFile(p, []byte(n), 0o600))
			require.NoError(t, os.Chown(p, stepUID, stepGID))
		}
		step := asSelf(t)
		step.UID, step.GID, step.Groups, step.Caps = stepUID, stepGID, nil, 0
		closeAll := func(root *os.Root) error {
			for _, n := range names {
				if err := root.Chmod(n, 0); err != nil {
					return err
				}
			}
			return nil
		}
		for _, workers := range []int{1, 2, 4} {
			for _, n := range names {
				require.NoError(t, os.Chmod(filepath.Join(ws, n), 0o600))
			}
			got, _, err := MeasureAndRead(context.Background(), step, ws, names, nil, Limits{Workers: workers}, nil, closeAll)
			require.ErrorIs(t, err, ErrNoAccess, "workers %d: read after the caller closed them: %v", workers, got)
		}
	})
}

// The threads that measured as a caller get the agent's credentials back:
// afterwards every thread reads root's 0600 file again.
func TestMeasuringThreadsRestored(t *testing.T) {
	needRoot(t)
	ws := openDirFor(t)
	writeFile(t, ws, "public", []byte("public"))
	secretFile := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secretFile, []byte("secret"), 0o600))

	step := asSelf(t)
	step.UID, step.GID, step.Groups, step.Caps = stepUID, stepGID, nil, 0
	var wg sync.WaitGroup
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for range 50 {
				if _, _, err := Measure(context.Background(), step, ws, []string{"public"}, nil, Limits{Workers: 3}, nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for range 1000 {
		runtime.Gosched()
		_, err := os.ReadFile(secretFile)
		require.NoError(t, err, "a thread kept a caller's credentials")
		require.Equal(t, os.Geteuid(), unix.Geteuid())
		fsuid, _ := unix.SetfsuidRetUid(-1)
		require.Equal(t, os.Geteuid(), fsuid)
	}
}

// The probe for openat2 may meet a root the caller cannot search; that
// says nothing about the kernel: the measurement fails as the caller's.
func TestFirstMeasurementInAClosedDirectory(t *testing.T) {
	needRoot(t)
	ws := openDirFor(t)
	writeFile(t, ws, "closed/secret", []byte("secret"))
	require.NoError(t, os.Chmod(filepath.Join(ws, "closed"), 0o700))
	step := asSelf(t)
	step.UID, step.GID, step.Groups, step.Caps = stepUID, stepGID, nil, 0
	old := openat2Support.Load()
	t.Cleanup(func() { openat2Support.Store(old) })
	openat2Support.Store(0)
	_, _, err := Measure(context.Background(), step, filepath.Join(ws, "closed"), []string{"secret"}, nil, Limits{}, nil)
	require.ErrorIs(t, err, ErrNoAccess)
	require.NotEqual(t, int32(2), openat2Support.Load(), "openat2 still in use")
}

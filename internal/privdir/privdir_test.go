package privdir

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestCheckAncestors(t *testing.T) {
	const other = 4015
	for _, tc := range []struct {
		name         string
		mode         os.FileMode // of the parent of the checked directory
		owner, group int         // of that parent; -1 unchanged
		want         string      // empty: allowed
	}{
		{"private", 0o700, -1, -1, ""},
		{"readable by all", 0o755, -1, -1, ""},
		{"sticky and writable by all, like /tmp", 0o777 | os.ModeSticky, -1, -1, ""},
		{"writable by others", 0o757, -1, -1, "is writable by others"},
		{"writable by the daemon's own group", 0o770 | os.ModeSetgid, -1, -1, ""},
		{"writable by another group", 0o770, -1, other, "is writable by group 4015, not this daemon's own"},
		{"owned by another user", 0o755, other, -1, "is owned by uid 4015, neither root nor this daemon's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.owner >= 0 || tc.group >= 0) && os.Geteuid() != 0 {
				t.Skip("chown needs root")
			}
			parent := filepath.Join(t.TempDir(), "parent")
			require.NoError(t, os.Mkdir(parent, 0o700))
			require.NoError(t, os.Chmod(parent, tc.mode))
			require.NoError(t, os.Chown(parent, tc.owner, tc.group))
			dir := filepath.Join(parent, "state", "not-made-yet")

			err := CheckAncestors(dir, "do harm")
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrNotPrivate)
			require.ErrorContains(t, err, parent+" "+tc.want)
			require.ErrorContains(t, err, "do harm")
		})
	}
}

func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("k"), mode))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	own := write("own", 0o600)
	fi, err := CheckFile(own, "log key")
	require.NoError(t, err)
	require.Equal(t, "own", fi.Name())

	_, err = CheckFile(write("readable", 0o640), "log key")
	require.ErrorIs(t, err, ErrNotPrivate)
	require.ErrorContains(t, err, "is accessible by group or others (mode -rw-r-----): chmod 600 it")

	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(own, link))
	_, err = CheckFile(link, "log key")
	require.ErrorIs(t, err, ErrNotPrivate)
	require.ErrorContains(t, err, "is not a regular file")

	_, err = CheckFile(filepath.Join(dir, "absent"), "log key")
	require.ErrorIs(t, err, os.ErrNotExist)

	if os.Geteuid() == 0 {
		theirs := write("theirs", 0o600)
		require.NoError(t, os.Chown(theirs, 4016, 4016))
		_, err = CheckFile(theirs, "log key")
		require.ErrorIs(t, err, ErrNotPrivate)
		require.ErrorContains(t, err, "is owned by uid 4016, not this daemon's (euid 0): whoever wrote it chose the key")
	}
}

// Must show (a second review's bypasses): the directory of a symbolic
// link met halfway to data_dir is checked, and a POSIX ACL that lets
// another user write is not hidden by the mode's group bits.
func TestCheckAncestorsLinksAndACLs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown and ACLs of other users need root")
	}
	base := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		require.NoError(t, os.MkdirAll(p, 0o700))
		require.NoError(t, os.Chmod(p, mode))
		require.NoError(t, os.Chown(p, uid, -1))
		return p
	}
	a, b, c := mk("a", 0o755, 0), mk("b", 0o755, 4016), mk("c/real", 0o755, 0)
	require.NoError(t, os.Symlink(filepath.Join(b, "link2"), filepath.Join(a, "link1")))
	require.NoError(t, os.Symlink(c, filepath.Join(b, "link2")))
	err := CheckAncestors(filepath.Join(a, "link1", "state"), "do harm")
	require.ErrorIs(t, err, ErrNotPrivate)
	require.ErrorContains(t, err, b+" is owned by uid 4016")
	require.NoError(t, CheckAncestors(filepath.Join(c, "state"), "do harm"), "the real directory itself is fine")
	// A link met after a "..", which a lexical clean of the target drops:
	// x/up -> ../b/link2/../real resolves through b/link2 (to c, then up).
	x := mk("x", 0o755, 0)
	require.NoError(t, os.Symlink("../b/link2/../real", filepath.Join(x, "up")))
	err = CheckAncestors(filepath.Join(x, "up", "state"), "do harm")
	require.ErrorIs(t, err, ErrNotPrivate)
	require.ErrorContains(t, err, b+" is owned by uid 4016")

	shared := mk("acl", 0o775, 0) // the daemon's own group may write...
	acl := posixACL(t, [][3]uint32{{0x01, 7, 0xffffffff}, {0x02, 7, 4016}, {0x04, 5, 0xffffffff}, {0x10, 7, 0xffffffff}, {0x20, 5, 0xffffffff}})
	if err := unix.Lsetxattr(shared, "system.posix_acl_access", acl, 0); err != nil {
		t.Skipf("no POSIX ACLs on %s: %v", base, err)
	}
	err = CheckAncestors(filepath.Join(shared, "state"), "do harm")
	require.ErrorIs(t, err, ErrNotPrivate, "...but an ACL entry for user 4016 is another writer")
	require.ErrorContains(t, err, "has an ACL that lets user 4016 write in it")
}

// posixACL encodes entries (tag, perm, id) as the system.posix_acl_access
// extended attribute (version 2).
func posixACL(t *testing.T, entries [][3]uint32) []byte {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

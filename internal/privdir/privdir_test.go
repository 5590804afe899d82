package privdir

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
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

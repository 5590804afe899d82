package peercred

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown to arbitrary users and groups")
	}
}

// 6. Listen refuses unsafe directories and occupied paths, cleans up stale
// sockets, and applies mode and group.
func TestListenRefusesUnsafeDirectory(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     os.FileMode
		uid, gid int // -1: leave
		root     bool
		refused  string
	}{
		{name: "private", mode: 0o700, uid: -1, gid: -1},
		{name: "group readable", mode: 0o750, uid: -1, gid: -1},
		{name: "world writable", mode: 0o777, uid: -1, gid: -1, refused: "writable by everyone"},
		{name: "world writable sticky", mode: 0o1777, uid: -1, gid: -1, refused: "writable by everyone"},
		{name: "group writable, our group", mode: 0o770, uid: -1, gid: os.Getegid()},
		{name: "group writable, other group", mode: 0o770, uid: -1, gid: 4242, root: true, refused: "writable by group 4242"},
		{name: "owned by another user", mode: 0o755, uid: 4242, gid: -1, root: true, refused: "owned by uid 4242"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				requireRoot(t)
			}
			dir := filepath.Join(sockDir(t), "d")
			require.NoError(t, os.Mkdir(dir, 0o700))
			require.NoError(t, os.Chown(dir, tc.uid, tc.gid))
			require.NoError(t, unix.Chmod(dir, uint32(tc.mode))) // raw bits: 0o1000 is sticky
			path := filepath.Join(dir, "agent.sock")

			l, err := Listen(ListenConfig{Path: path, GID: -1})
			if tc.refused == "" {
				require.NoError(t, err)
				require.NoError(t, l.Close())
				return
			}
			require.ErrorContains(t, err, tc.refused)
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, ents, "a refused Listen must leave nothing behind")
		})
	}
}

func TestListenRefusesLiveServer(t *testing.T) {
	l, path := listen(t)
	_, err := Listen(ListenConfig{Path: path, GID: -1})
	require.EqualError(t, err, "peercred: listen: another agent is already serving "+path)

	// The first listener still owns the path and serves it.
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st))
	require.Equal(t, l.id, fileID(&st))
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	cc.Close()
}

func TestListenRemovesStaleSocket(t *testing.T) {
	path := sockDir(t) + "/agent.sock"
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	old.SetUnlinkOnClose(false)
	require.NoError(t, old.Close())
	_, err = net.Dial("unix", path)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)

	l, err := Listen(ListenConfig{Path: path, GID: -1})
	require.NoError(t, err)
	defer l.Close()
	cc, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer cc.Close()
	c := accept(t, l)
	require.Equal(t, int32(os.Getpid()), c.Peer().PID)
}

func TestListenNeverRemovesNonSocket(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(path string) error
	}{
		{"regular file", func(p string) error { return os.WriteFile(p, []byte("keep me"), 0o600) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"symlink", func(p string) error { return os.Symlink("/etc/hostname", p) }},
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := sockDir(t) + "/agent.sock"
			require.NoError(t, tc.make(path))
			before, err := os.Lstat(path)
			require.NoError(t, err)

			_, err = Listen(ListenConfig{Path: path, GID: -1})
			require.ErrorContains(t, err, "is not a socket")
			require.ErrorContains(t, err, "not removing it")

			after, err := os.Lstat(path)
			require.NoError(t, err)
			require.True(t, os.SameFile(before, after))
			if tc.name == "regular file" {
				b, err := os.ReadFile(path)
				require.NoError(t, err)
				require.Equal(t, "keep me", string(b))
			}
			ents, err := os.ReadDir(filepath.Dir(path))
			require.NoError(t, err)
			require.Len(t, ents, 1, "no temporary socket left behind")
		})
	}
}

func TestListenModeAndGroup(t *testing.T) {
	// A restrictive umask must not leak into the socket's mode.
	old := unix.Umask(0o077)
	defer unix.Umask(old)

	otherGID := 4242
	if os.Geteuid() != 0 {
		otherGID = os.Getegid()
		if groups, _ := os.Getgroups(); len(groups) > 0 {
			otherGID = groups[len(groups)-1]
		}
	}
	for _, tc := range []struct {
		name     string
		mode     os.FileMode
		gid      int
		wantMode os.FileMode
		wantGID  int
	}{
		{"defaults", 0, -1, 0o660, os.Getegid()},
		{"mode and group", 0o640, otherGID, 0o640, otherGID},
		{"wide mode", 0o666, -1, 0o666, os.Getegid()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := sockDir(t) + "/agent.sock"
			l, err := Listen(ListenConfig{Path: path, Mode: tc.mode, GID: tc.gid})
			require.NoError(t, err)
			defer l.Close()

			fi, err := os.Lstat(path)
			require.NoError(t, err)
			require.Equal(t, os.ModeSocket, fi.Mode().Type())
			require.Equal(t, tc.wantMode, fi.Mode().Perm())
			require.Equal(t, uint32(tc.wantGID), fi.Sys().(*syscall.Stat_t).Gid)

			// Only the published name is left in the directory.
			ents, err := os.ReadDir(filepath.Dir(path))
			require.NoError(t, err)
			require.Len(t, ents, 1)
		})
	}
}

func TestListenConfigErrors(t *testing.T) {
	dir := sockDir(t)
	for _, tc := range []struct {
		name string
		cfg  ListenConfig
		err  string
	}{
		{"empty path", ListenConfig{GID: -1}, "empty path"},
		{"non-permission mode bits", ListenConfig{Path: dir + "/a.sock", Mode: os.ModeSetuid | 0o600, GID: -1}, "bits other than permissions"},
		{"bad gid", ListenConfig{Path: dir + "/a.sock", GID: -2}, "invalid gid"},
		{"missing directory", ListenConfig{Path: dir + "/nope/a.sock", GID: -1}, "no such file or directory"},
		{"too long", ListenConfig{Path: dir + "/" + strings.Repeat("x", 120), GID: -1}, "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Listen(tc.cfg)
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestListenerCloseRemovesOnlyOwnSocket(t *testing.T) {
	path := sockDir(t) + "/agent.sock"
	l, err := Listen(ListenConfig{Path: path, GID: -1})
	require.NoError(t, err)
	require.NoError(t, l.Close())
	require.NoError(t, l.Close()) // idempotent
	_, err = l.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = os.Lstat(path)
	require.ErrorIs(t, err, os.ErrNotExist)

	l, err = Listen(ListenConfig{Path: path, GID: -1})
	require.NoError(t, err)
	require.NoError(t, os.Remove(path))
	require.NoError(t, os.WriteFile(path, []byte("successor"), 0o600))
	require.NoError(t, l.Close())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "successor", string(b))
}

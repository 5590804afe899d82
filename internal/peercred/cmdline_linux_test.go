package peercred

import (
	"errors"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Conn.Cmdline reads what Info.Cmdline reads, through a descriptor kept
// for the connection; Verify keeps one too. Both stay with the peer: they
// follow an exec, report a peer that exited, and are closed by Close.
func TestConnCmdline(t *testing.T) {
	t.Run("own connection", func(t *testing.T) {
		l, path := listen(t)
		c, _ := dialAccepted(t, l, path)
		for range 3 { // the first call opens, the others reuse
			args, err := c.Cmdline()
			require.NoError(t, err)
			require.Equal(t, os.Args, args)
			require.NoError(t, c.Verify())
		}
		require.NoError(t, c.Close())
		_, err := c.Cmdline()
		require.ErrorIs(t, err, net.ErrClosed)
	})

	t.Run("peer gone", func(t *testing.T) {
		l, path := listen(t)
		h := startHelper(t, "hold", path)
		h.expect(t, "ready")
		c := accept(t, l)
		args, err := c.Cmdline()
		require.NoError(t, err)
		require.Contains(t, args, "-test.run=^TestHelperProcess$")
		require.NoError(t, c.Verify())

		require.NoError(t, h.cmd.Process.Signal(unix.SIGKILL))
		waitFor(t, "ErrPeerGone from a zombie", func() bool {
			_, err := c.Cmdline()
			return errors.Is(err, ErrPeerGone)
		})
		require.ErrorIs(t, c.Verify(), ErrPeerGone)
		h.cmd.Wait()
		_, err = c.Cmdline()
		require.ErrorIs(t, err, ErrPeerGone)
		require.ErrorIs(t, c.Verify(), ErrPeerGone)
	})

	t.Run("peer execs", func(t *testing.T) {
		l, path := listen(t)
		h := startHelper(t, "exec", path)
		c := accept(t, l)
		h.expect(t, "connected")
		args, err := c.Cmdline()
		require.NoError(t, err)
		require.Contains(t, args, "-test.run=^TestHelperProcess$")
		require.NoError(t, c.Verify())

		_, err = h.stdin.Write([]byte("x")) // exec now
		require.NoError(t, err)
		waitFor(t, "ErrPeerExeced", func() bool { return errors.Is(c.Verify(), ErrPeerExeced) })
		waitFor(t, "the new command line", func() bool {
			args, err := c.Cmdline()
			require.NoError(t, err)
			return len(args) == 2 && args[0] == "sleep" && args[1] == "30"
		})
	})

	t.Run("descriptors closed", func(t *testing.T) {
		l, path := listen(t)
		roundTrip := func() {
			cc, err := net.Dial("unix", path)
			require.NoError(t, err)
			c := accept(t, l)
			require.NoError(t, c.Verify())
			_, err = c.Cmdline()
			require.NoError(t, err)
			require.NoError(t, c.Close())
			require.NoError(t, cc.Close())
		}
		roundTrip()
		before := countFDs(t)
		for range 50 {
			roundTrip()
		}
		require.Equal(t, before, countFDs(t))
	})
}

// preadAll grows its buffer for files longer than the first one and stops
// at its limit, with or without taking a short read for the end.
func TestPreadAll(t *testing.T) {
	content := make([]byte, 5000)
	for i := range content {
		content[i] = byte('a' + i%26)
	}
	f, err := os.CreateTemp(t.TempDir(), "proc")
	require.NoError(t, err)
	defer f.Close()
	_, err = f.Write(content)
	require.NoError(t, err)
	fd := int(f.Fd())
	for _, shortIsEnd := range []bool{false, true} {
		var buf [1 << 10]byte
		b, err := preadAll(buf[:0], fd, 1, "cmdline", 1<<20, shortIsEnd)
		require.NoError(t, err)
		require.Equal(t, content, b)
		b, err = preadAll(nil, fd, 1, "cmdline", 5000, shortIsEnd)
		require.NoError(t, err)
		require.Equal(t, content, b)
		_, err = preadAll(nil, fd, 1, "cmdline", 4999, shortIsEnd)
		require.ErrorContains(t, err, "/proc/1/cmdline is longer than 4999 bytes")
	}
}

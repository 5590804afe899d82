package peercred

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchConn returns both ends of a connection from this process.
func benchConn(b *testing.B) (*Conn, net.Conn) {
	b.Helper()
	dir := b.TempDir()
	l, err := Listen(ListenConfig{Path: dir + "/b.sock", GID: -1})
	require.NoError(b, err)
	b.Cleanup(func() { l.Close() })
	cc, err := net.Dial("unix", dir+"/b.sock")
	require.NoError(b, err)
	b.Cleanup(func() { cc.Close() })
	nc, err := l.Accept()
	require.NoError(b, err)
	c := nc.(*Conn)
	b.Cleanup(func() { c.Close() })
	return c, cc
}

// The per-request checks of an agent: Verify, and the caller's command line.
func BenchmarkVerify(b *testing.B) {
	c, _ := benchConn(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Verify(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInfoCmdline(b *testing.B) {
	c, _ := benchConn(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Peer().Cmdline(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkConnCmdline(b *testing.B) {
	c, _ := benchConn(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Cmdline(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead is one small write and the credential-checked read of it.
func BenchmarkRead(b *testing.B) {
	c, cc := benchConn(b)
	msg := make([]byte, 256)
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cc.Write(msg); err != nil {
			b.Fatal(err)
		}
		for n := 0; n < len(msg); {
			k, err := c.Read(buf)
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
}

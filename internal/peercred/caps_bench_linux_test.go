package peercred

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkCapabilities reads a connected peer's capabilities (this
// process), as the agent does once for each new connection.
func BenchmarkCapabilities(b *testing.B) {
	l, path := listen(b)
	cc, err := net.Dial("unix", path)
	require.NoError(b, err)
	defer cc.Close()
	c := accept(b, l)
	defer c.Close()
	for b.Loop() {
		if _, err := c.readCapabilities(); err != nil {
			b.Fatal(err)
		}
	}
}

// parseCapPrm finds "CapPrm:\t<hex>" in /proc/PID/status: the tests'
// oracle for Capabilities, which asks capget(2).
func parseCapPrm(status []byte) (uint64, error) {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("CapPrm:")); ok {
			return strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
		}
	}
	return 0, errors.New("no CapPrm line")
}

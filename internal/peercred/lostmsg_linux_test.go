package peercred

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Must show: the refusal of a connection whose exec watch lost events
// says so in the words hallmark-attest's watchLost looks for
// (internal/attestcmd), which then asks again on a new connection.
func TestLostEventsRefusalText(t *testing.T) {
	c := &Conn{watch: &ExecWatch{}, info: Info{PID: 7}}
	c.execed.Store(execLost)
	require.ErrorIs(t, c.Execed(), ErrExecWatch)
	require.ErrorContains(t, c.Execed(), "dropped process events")
}

package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/agent"
)

// The command the agent execs to prove its exec watch works
// (agent.ExecCanaryCommand) exists, is hidden, and does nothing but
// succeed.
func TestExecCanaryCommand(t *testing.T) {
	cmd := execCanaryCmd()
	require.Equal(t, agent.ExecCanaryCommand, cmd.Use)
	require.True(t, cmd.Hidden)
	cmd.SetArgs([]string{})
	require.NoError(t, cmd.Execute())
	cmd.SetArgs([]string{"extra"})
	require.Error(t, cmd.Execute(), "it takes no arguments")
}

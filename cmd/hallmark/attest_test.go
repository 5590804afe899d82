package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// Must show: `hallmark help attest` lists attest's flags, as it did when
// cobra parsed them (attestcmd parses them now).
func TestHelpAttestListsFlags(t *testing.T) {
	for _, args := range [][]string{{"help", "attest"}} {
		var out bytes.Buffer
		root := rootCmd(nil)
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		require.NoError(t, root.Execute())
		for _, want := range []string{"Usage: hallmark attest --step NAME", "-product", "-material", "-claim", "-wait-log-timeout", "-progress", "-socket"} {
			require.Contains(t, out.String(), want, "%v", args)
		}
	}
}

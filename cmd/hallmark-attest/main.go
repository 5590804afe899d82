// Command hallmark-attest is `hallmark attest` alone, flag for flag, in a
// binary that is cheap to start once per build step: it links no gRPC
// runtime, no CLI framework and no verification code
// (internal/attestcmd, internal/agentclient).
//
//	hallmark-attest --step build --product out/app -- make app
package main

import (
	"os"

	"github.com/hallmark-dev/hallmark/internal/attestcmd"
)

func main() {
	os.Exit(attestcmd.Main("hallmark-attest"))
}

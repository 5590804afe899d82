// Command hallmark-agent runs on every CI runner: it holds a short-lived
// signing certificate, obtained from hallmark-server with the runner's SPIFFE
// identity, for a key that never leaves its memory. See docs/configuration.md.
package main

import (
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/agent"
	"github.com/hallmark-dev/hallmark/internal/daemon"
)

func main() {
	root, _ := daemon.Command(daemon.Spec[agent.Config]{
		Name: "hallmark-agent", Short: "Hallmark's node agent", Noun: "agent",
		DefaultConfig: "/etc/hallmark/agent.hcl",
		Load:          agent.LoadConfig,
		Logger:        func(c agent.Config) *zap.Logger { return c.Log },
		New:           func(c agent.Config) (daemon.Runner, error) { return agent.New(c) },
	})
	daemon.Main("hallmark-agent", root)
}

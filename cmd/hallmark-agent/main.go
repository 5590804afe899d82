// Command hallmark-agent runs on every CI runner: it holds a short-lived
// signing certificate, obtained from hallmark-server with the runner's SPIFFE
// identity, for a key that never leaves its memory. See docs/configuration.md.
package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
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
	root.AddCommand(identityCmd(), execCanaryCmd())
	daemon.Main("hallmark-agent", root)
}

// execCanaryCmd is what the running agent execs now and then to prove that
// the kernel still reports execs (peercred.ExecWatch.RunCanary): it does
// nothing.
func execCanaryCmd() *cobra.Command {
	return &cobra.Command{Use: agent.ExecCanaryCommand, Hidden: true, Args: cobra.NoArgs, Run: func(*cobra.Command, []string) {}}
}

// identityCmd checks the SPIRE registration: run as the daemon's user it
// prints the agent's SPIFFE ID; run as anyone else, it must get none.
func identityCmd() *cobra.Command {
	var addr string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Print the SPIFFE ID SPIRE gives this binary run as this user, or fail",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			id, err := agent.FetchIdentity(ctx, addr)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "workload-api-socket", agent.DefaultWorkloadAPISocket, "the SPIRE agent's Workload API")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for SPIRE's answer")
	return cmd
}

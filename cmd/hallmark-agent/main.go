// Command hallmark-agent runs on every CI runner: it holds a short-lived
// signing certificate, obtained from hallmark-server with the runner's SPIFFE
// identity, for a key that never leaves its memory. See docs/configuration.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "hallmark-agent:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var configPath string
	root := &cobra.Command{Use: "hallmark-agent", Short: "Hallmark's node agent", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringVar(&configPath, "config", "/etc/hallmark/agent.hcl", "configuration file")
	root.AddCommand(
		&cobra.Command{
			Use:   "run",
			Short: "Run the agent until SIGINT or SIGTERM",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := agent.LoadConfig(configPath)
				if err != nil {
					return err
				}
				defer cfg.Log.Sync() //nolint:errcheck
				a, err := agent.New(cfg)
				if err != nil {
					return err
				}
				return a.Run(cmd.Context())
			},
		},
		&cobra.Command{
			Use:   "validate",
			Short: "Check the configuration file and exit",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if _, err := agent.LoadConfig(configPath); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), configPath+": valid")
				return nil
			},
		},
	)
	return root
}

// Command hallmark-server is the coordinating server: it authenticates
// hallmark-agents by their SPIFFE identities and certifies their short-lived
// signing keys. See docs/configuration.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "hallmark-server:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var configPath string
	root := &cobra.Command{Use: "hallmark-server", Short: "Hallmark's coordinating server", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringVar(&configPath, "config", "/etc/hallmark/server.hcl", "configuration file")
	root.AddCommand(
		&cobra.Command{
			Use:   "run",
			Short: "Run the server until SIGINT or SIGTERM",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := server.LoadConfig(configPath)
				if err != nil {
					return err
				}
				defer cfg.Log.Sync() //nolint:errcheck
				srv, err := server.New(cfg)
				if err != nil {
					return err
				}
				return srv.Run(cmd.Context())
			},
		},
		&cobra.Command{
			Use:   "validate",
			Short: "Check the configuration file and exit",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if _, err := server.LoadConfig(configPath); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), configPath+": valid")
				return nil
			},
		},
		trustCmd(&configPath),
	)
	return root
}

// trustCmd exports trust material from the store and the log key, offline
// (the server may be running or not).
func trustCmd(configPath *string) *cobra.Command {
	var out string
	export := &cobra.Command{
		Use:   "export",
		Short: "Write the Sigstore trusted root (signing CAs and the log's key) for offline verification",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := server.LoadConfig(*configPath)
			if err != nil {
				return err
			}
			data, err := server.ExportTrustedRoot(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			return os.WriteFile(out, data, 0o644)
		},
	}
	export.Flags().StringVar(&out, "out", "", "file to write (default: standard output)")
	trust := &cobra.Command{Use: "trust", Short: "Trust material for verifiers"}
	trust.AddCommand(export)
	return trust
}

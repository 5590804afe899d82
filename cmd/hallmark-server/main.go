// Command hallmark-server is the coordinating server: it authenticates
// hallmark-agents by their SPIFFE identities and certifies their short-lived
// signing keys. See docs/configuration.md.
package main

import (
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/internal/daemon"
	"github.com/hallmark-dev/hallmark/internal/wholefile"
	"github.com/hallmark-dev/hallmark/server"
)

func main() {
	root, configPath := daemon.Command(daemon.Spec[server.Config]{
		Name: "hallmark-server", Short: "Hallmark's coordinating server", Noun: "server",
		DefaultConfig: "/etc/hallmark/server.hcl",
		Load:          server.LoadConfig,
		Logger:        func(c server.Config) *zap.Logger { return c.Log },
		New:           func(c server.Config) (daemon.Runner, error) { return server.New(c) },
	})
	root.AddCommand(trustCmd(configPath))
	daemon.Main("hallmark-server", root)
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
			return wholefile.Write(out, data)
		},
	}
	export.Flags().StringVar(&out, "out", "", "file to write (default: standard output)")
	trust := &cobra.Command{Use: "trust", Short: "Trust material for verifiers"}
	trust.AddCommand(export)
	return trust
}

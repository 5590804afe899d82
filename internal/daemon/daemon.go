// Package daemon is the command line that hallmark-agent and
// hallmark-server share: a root command with --config and the run and
// validate subcommands, around each daemon's own config loader and
// constructor.
package daemon

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// Runner is a long-lived component.
type Runner interface {
	Run(ctx context.Context) error
}

// Spec describes one daemon.
type Spec[C any] struct {
	Name          string // e.g. "hallmark-agent"
	Short         string
	Noun          string // "agent", in "Run the agent until ..."
	DefaultConfig string
	Load          func(path string) (C, error)
	Logger        func(C) *zap.Logger
	New           func(C) (Runner, error)
}

// Command returns the root command and the --config value it fills.
func Command[C any](s Spec[C]) (*cobra.Command, *string) {
	configPath := new(string)
	root := &cobra.Command{Use: s.Name, Short: s.Short, SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringVar(configPath, "config", s.DefaultConfig, "configuration file")
	root.AddCommand(
		&cobra.Command{
			Use:   "run",
			Short: "Run the " + s.Noun + " until SIGINT or SIGTERM",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := s.Load(*configPath)
				if err != nil {
					return err
				}
				log := s.Logger(cfg)
				defer log.Sync() //nolint:errcheck // nothing to do if stderr is gone
				r, err := s.New(cfg)
				if err != nil {
					return err
				}
				return runLogged(cmd.Context(), log, r)
			},
		},
		&cobra.Command{
			Use:   "validate",
			Short: "Check the configuration file and exit",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if _, err := s.Load(*configPath); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), *configPath+": valid")
				return nil
			},
		},
	)
	return root, configPath
}

// runLogged runs r until ctx ends (SIGINT or SIGTERM) and logs the stop:
// when it began and how long draining took, so that a clean stop reads
// differently from a crash in the logs.
func runLogged(ctx context.Context, log *zap.Logger, r Runner) error {
	var began time.Time
	logged := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		began = time.Now()
		log.Info("Stopping")
		close(logged)
	})
	err := r.Run(ctx)
	if stop() {
		return err // it ended on its own, before any stop
	}
	<-logged // "Stopping" first, and began set
	if err == nil {
		log.Info("Stopped", zap.Duration("drain", time.Since(began)))
	}
	return err
}

// Main executes root until SIGINT or SIGTERM and exits 1 on error.
func Main(name string, root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		stop()
		os.Exit(1)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/logstate"
)

// checkLogState is --log-state: every checkpoint a verification relied on
// (seen) must be consistent with the latest one the state file remembers
// of its log, and, with --server, with the log's own latest checkpoint;
// the file then remembers the largest. An inconsistency is exit 1 (the
// log, or what was shown of it, forked); no way to compare is exit 2.
func checkLogState(cmd *cobra.Command, statePath, server string, tr *verify.TrustedRoot, seen []verify.Checkpoint) error {
	if statePath == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	defer cancel()
	state, err := logstate.Load(statePath)
	if err != nil {
		return couldNotVerify(cmd, fmt.Errorf("--log-state: %w", err))
	}
	var proofs logstate.Proofs
	if server != "" && len(seen) > 0 {
		// The server has one log, the one Hallmark's bundles are in.
		srv := logstate.Server{BaseURL: server}
		proofs = srv
		note, err := srv.Checkpoint(ctx)
		if err != nil {
			return couldNotVerify(cmd, fmt.Errorf("--log-state: %w", err))
		}
		latest, err := tr.OpenCheckpoint(seen[0].Origin, note)
		if err != nil {
			return couldNotVerify(cmd, fmt.Errorf("--log-state: the latest checkpoint of %s: %w", server, err))
		}
		if err := state.Observe(ctx, latest, proofs); err != nil {
			return logStateError(cmd, err)
		}
	}
	for _, cp := range seen {
		if err := state.Observe(ctx, cp, proofs); err != nil {
			return logStateError(cmd, err)
		}
	}
	if err := state.Save(); err != nil {
		return couldNotVerify(cmd, fmt.Errorf("--log-state: %w", err))
	}
	return nil
}

func logStateError(cmd *cobra.Command, err error) error {
	if errors.Is(err, logstate.ErrInconsistent) {
		fmt.Fprintf(cmd.ErrOrStderr(), "hallmark verify: NOT VERIFIED: log consistency: %v\n", err)
		return &exitError{code: exitNotVerified}
	}
	return couldNotVerify(cmd, err)
}

// couldNotVerify reports a verification that could not reach a verdict
// (exit 2, as a usage error, without pointing at usage).
func couldNotVerify(cmd *cobra.Command, err error) error {
	fmt.Fprintf(cmd.ErrOrStderr(), "hallmark verify: could not verify: %v\n", err)
	return &exitError{code: exitUsage}
}

// printLogState adds the log state's line to a text report.
func printLogState(w io.Writer, statePath string, seen []verify.Checkpoint) {
	if statePath == "" {
		return
	}
	for _, cp := range seen {
		fmt.Fprintf(w, "  log state: checkpoint %s size %d consistent with %s\n", plain(cp.Origin), cp.Size, statePath)
	}
}

// Command hallmark-soak runs the real Hallmark stack under steady
// attestation load for a while (default 30 minutes), injecting faults,
// then checks the transparency log against what every build step was told
// and prints a report. `make soak` runs it (SOAK_DURATION=30m); it is not
// part of `make test`.
//
// The stack, on loopback and unix sockets in a temporary directory: SPIRE
// server and agent, an OpenBao dev server (hallmark-server's vault key
// manager), PostgreSQL, two hallmark-server replicas sharing it, and two
// hallmark-agents given both replicas' addresses. Workers in this process
// attest through both agents at a steady rate.
//
// Faults, at fixed fractions of the duration (see schedule): SVIDs rotate
// all along (2-minute SVIDs) and signing certificates renew (2-minute
// certificates); the signing CA is rotated (prepare, activate, then
// taint); a replica is restarted; an agent is killed -9 and restarted;
// PostgreSQL is stopped for a minute; the whole server side is stopped for
// longer than the certificate lifetime.
//
// The check: every attestation a step was told succeeded must be in the
// log exactly once (found by its product's digest, GET /log/entries) and
// verify against the exported trusted root; every refusal is counted by
// reason. The report lists attestations made, logged, refused (with
// reasons), lost and duplicated, the RSS, goroutines and open files of
// every daemon at the start and end of the load, and every fault with its
// time. The run is bounded: it stops by itself after the duration plus at
// most 15 minutes of draining and checking; the exit status is 0 only when
// nothing was lost or duplicated.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	var cfg config
	flag.DurationVar(&cfg.Duration, "duration", 30*time.Minute, "how long the load and the faults run (at least 10m)")
	flag.IntVar(&cfg.Workers, "workers", 4, "attesting workers per agent")
	flag.Float64Var(&cfg.PerSecond, "rate", 2, "attestations per second per worker")
	flag.StringVar(&cfg.Report, "report", "", "also write the report (JSON) to this file")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the run's directory (logs, data) even when it passes")
	flag.Parse()
	if cfg.Duration < minDuration {
		fmt.Fprintf(os.Stderr, "soak: -duration %s is shorter than %s: the faults need it\n", cfg.Duration, minDuration)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration+bound)
	defer cancel()
	ok, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

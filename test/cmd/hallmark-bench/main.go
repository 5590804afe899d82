// Command hallmark-bench measures Hallmark's performance figures, each
// against a floor measured in the same run, and prints one line per figure:
//
//	bench: NAME VALUE UNIT floor FLOOR ratio RATIO
//
// RATIO is VALUE/FLOOR for costs (lower is better) and FLOOR/VALUE for
// rates, so a ratio of 1.0 means "as good as the floor" either way and
// larger is worse. A figure with a target (issue #15) ends with it and
// whether it was met:
//
//	bench: NAME VALUE UNIT floor FLOOR ratio RATIO target <=T met|MISSED
//
// A missed target is reported, not an error: the number is the finding. `make bench` runs it; `-only NAME[,NAME]` runs some
// figures, and the -fleet-* flags shape the fleet figure (simulated
// agents against hallmark-server replicas; see benchFleet).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// Result is one measured figure.
type Result struct {
	Name  string
	Value float64
	Unit  string
	Floor float64
	// Rate is true when larger values are better (per second).
	Rate bool
	// Max, Min and MaxRatio, when not 0, are the figure's target: Value
	// at most Max, at least Min, Ratio at most MaxRatio.
	Max, Min, MaxRatio float64
}

// target is the figure's target and whether it was met ("" without one).
func (r Result) target() string {
	var t string
	var met bool
	switch {
	case r.Max != 0:
		t, met = fmt.Sprintf("<=%.4g", r.Max), r.Value <= r.Max
	case r.Min != 0:
		t, met = fmt.Sprintf(">=%.4g", r.Min), r.Value >= r.Min
	case r.MaxRatio != 0:
		t, met = fmt.Sprintf("ratio<=%.3g", r.MaxRatio), r.Ratio() <= r.MaxRatio
	default:
		return ""
	}
	if met {
		return " target " + t + " met"
	}
	return " target " + t + " MISSED"
}

// Ratio is how far Value is from Floor; 1 is the floor, larger is worse.
func (r Result) Ratio() float64 {
	if r.Rate {
		return r.Floor / r.Value
	}
	return r.Value / r.Floor
}

func (r Result) String() string {
	return fmt.Sprintf("bench: %s %.4g %s floor %.4g ratio %.2f%s", r.Name, r.Value, r.Unit, r.Floor, r.Ratio(), r.target())
}

// figure measures one group of results; dir is scratch space.
type figure struct {
	name string
	run  func(ctx context.Context, dir string) ([]Result, error)
}

// figures is every figure, in the order printed.
var figures = []figure{
	{"attest", benchAttest},
	{"fleet", benchFleet},
	{"fresh", benchFresh},
	{"hashing", benchHashing},
	{"logappend", benchLogAppend},
	{"logappend-postgres", benchLogAppendPostgres},
	{"vault", benchVault},
	{"verify", benchVerify},
}

func main() {
	only := flag.String("only", "", "comma-separated figure names to run (default all)")
	flag.IntVar(&fleetCfg.Agents, "fleet-agents", fleetCfg.Agents, "fleet: simulated agents")
	flag.IntVar(&fleetCfg.Replicas, "fleet-replicas", fleetCfg.Replicas, "fleet: hallmark-server replicas")
	flag.DurationVar(&fleetCfg.Duration, "fleet-duration", fleetCfg.Duration, "fleet: length of the measured phase")
	flag.DurationVar(&fleetCfg.Renew, "fleet-renew", fleetCfg.Renew, "fleet: how often each agent renews its signing certificate")
	flag.Float64Var(&fleetCfg.SubmitRate, "fleet-submit-rate", fleetCfg.SubmitRate, "fleet: log submissions per second, in total")
	flag.IntVar(&freshCfg.Rounds, "fresh-rounds", freshCfg.Rounds, "fresh: alternating rounds (medians are reported)")
	flag.IntVar(&freshCfg.Steps, "fresh-steps", freshCfg.Steps, "fresh: steps per concurrent caller in each run")
	flag.Func("fresh-modes", "fresh: comma-separated spire attest modes to measure (pid, selectors; default both)", func(v string) error {
		freshCfg.Modes = strings.Split(v, ",")
		return nil
	})
	flag.Func("attest-variants", "attest: comma-separated variants to measure (attest, attest_cold_pid, attest_cold_selectors; default all)", func(v string) error {
		attestVariants = strings.Split(v, ",")
		return nil
	})
	flag.Func("attest-callers", "attest: comma-separated caller counts to measure (default 1,16,64)", func(v string) error {
		attestConcurrency = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				return fmt.Errorf("caller count %q: not a positive number", f)
			}
			attestConcurrency = append(attestConcurrency, n)
		}
		return nil
	})
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (the in-process server and store of logappend, verify and vault; the clients of attest and fresh) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: cpu profile:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed := false
	var all []Result
	for _, f := range figures {
		if *only != "" && !strings.Contains(","+*only+",", ","+f.name+",") {
			continue
		}
		dir, err := os.MkdirTemp("", "hallmark-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		results, err := f.run(ctx, dir)
		os.RemoveAll(dir)
		// A figure may measure and still fail its condition (fleet:
		// every renewal must succeed); its figures are printed.
		for _, r := range results {
			fmt.Println(r)
		}
		all = append(all, results...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", f.name, err)
			failed = true
		}
	}
	printLogAppendStores(all)
	if failed {
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// printLogAppendStores puts the log's append rates on SQLite and on
// PostgreSQL side by side, for each number of submitters both measured.
func printLogAppendStores(results []Result) {
	byName := make(map[string]Result, len(results))
	for _, r := range results {
		byName[r.Name] = r
	}
	for _, n := range logAppendConcurrency {
		lite, ok1 := byName[fmt.Sprintf("logappend_rate_c%d", n)]
		pg, ok2 := byName[fmt.Sprintf("logappend_postgres_rate_c%d", n)]
		if ok1 && ok2 {
			fmt.Fprintf(os.Stderr, "bench: log appends with %d submitters: SQLite %.0f/s, PostgreSQL %.0f/s\n", n, lite.Value, pg.Value)
		}
	}
}

// selectorsAgentConf is the spire workload attestor's setting of an agent
// whose spire attestor derives the caller's unix selectors itself (as the
// harness's SPIRE agent's unix attestor, discover_workload_path = true).
const selectorsAgentConf = "attest = \"unix_selectors\"\n  discover_workload_path = true"

// benchStacks starts the stack the attest and fresh figures run on, with
// SPIRE and hallmark-agent at info level and benchAgentLimits, an agent
// with attest = "unix_selectors" beside its own (attest = "pid"), both
// granting step in ws to callerID, and registers the program binary
// names in SPIRE as callerID. stop ends both agents and the stack.
func benchStacks(ctx context.Context, dir, callerID, step, ws string, binary func(*harness.Stack) string) (st *harness.Stack, sel *harness.Service, stop func(), err error) {
	policy := fmt.Sprintf(`rule "bench" {
    spiffe_ids      = [%q]
    steps           = [%q]
    workspace_roots = [%q]
  }`, callerID, step, ws)
	if st, err = harness.StartStack(ctx, dir, harness.StackOptions{Policy: func(string) string { return policy }, Quiet: true, AgentExtra: benchAgentLimits}); err != nil {
		return nil, nil, nil, err
	}
	if sel, err = startSelectorsAgent(ctx, st, dir, policy); err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	stop = func() { sel.Stop(); st.Close() }
	if err := st.SPIRE.CreateEntry(ctx, harness.Entry{SPIFFEID: spiffeid.RequireFromString(callerID), Binary: binary(st)}); err != nil {
		stop()
		return nil, nil, nil, err
	}
	return st, sel, stop, nil
}

// startSelectorsAgent starts, beside st's agent (attest = "pid"), a second
// hallmark-agent on the same SPIRE and server with attest =
// "unix_selectors" and the same policy.
func startSelectorsAgent(ctx context.Context, st *harness.Stack, dir, policy string) (*harness.Service, error) {
	return st.SPIRE.StartAgent(ctx, st.Bins.Agent, dir, "hallmark-agent-selectors", harness.AgentOptions{
		ServerAddr: st.Server.ServerAddr(), ServerID: harness.ServerID.String(),
		Policy: policy, SPIREExtra: selectorsAgentConf, LogLevel: "info", Extra: benchAgentLimits,
	})
}

// Command hallmark-bench measures Hallmark's performance figures, each
// against a floor measured in the same run, and prints one line per figure:
//
//	bench: NAME VALUE UNIT floor FLOOR ratio RATIO
//
// RATIO is VALUE/FLOOR for costs (lower is better) and FLOOR/VALUE for
// rates, so a ratio of 1.0 means "as good as the floor" either way and
// larger is worse. `make bench` runs it; `-only NAME[,NAME]` runs some
// figures, and the -fleet-* flags shape the fleet figure (simulated
// agents against hallmark-server replicas; see benchFleet).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Result is one measured figure.
type Result struct {
	Name  string
	Value float64
	Unit  string
	Floor float64
	// Rate is true when larger values are better (per second).
	Rate bool
}

// Ratio is how far Value is from Floor; 1 is the floor, larger is worse.
func (r Result) Ratio() float64 {
	if r.Rate {
		return r.Floor / r.Value
	}
	return r.Value / r.Floor
}

func (r Result) String() string {
	return fmt.Sprintf("bench: %s %.4g %s floor %.4g ratio %.2f", r.Name, r.Value, r.Unit, r.Floor, r.Ratio())
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
	flag.Parse()
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

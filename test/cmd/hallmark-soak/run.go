package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// config is the run's flags.
type config struct {
	Duration  time.Duration
	Workers   int
	PerSecond float64
	Report    string
	Keep      bool
}

// report is what the run found.
type report struct {
	Duration        string              `json:"duration"`
	Load            string              `json:"load"`
	Made            int                 `json:"made"`
	Succeeded       int                 `json:"succeeded"`
	Logged          int                 `json:"logged"`
	Refused         int                 `json:"refused"`
	RefusedBy       map[string]int      `json:"refused_by_reason"`
	Lost            int                 `json:"lost"`
	Duplicated      int                 `json:"duplicated"`
	Unverified      int                 `json:"unverified"`
	LogSize         uint64              `json:"log_size"`
	Unaccounted     int64               `json:"log_entries_unaccounted"`
	SVIDRotations   float64             `json:"svid_rotations"`
	Renewals        float64             `json:"certificate_renewals"`
	UsageStart      map[string]usage    `json:"usage_start"`
	UsageEnd        map[string]usage    `json:"usage_end"`
	UsagePeak       map[string]usage    `json:"usage_peak"`
	Events          []event             `json:"events"`
	Problems        []string            `json:"problems,omitempty"`
	LostSamples     []attempt           `json:"lost_samples,omitempty"`
	DuplicateSample map[string][]string `json:"duplicate_samples,omitempty"`
}

// run runs the soak and reports; ok is whether nothing was lost,
// duplicated or unverifiable.
func run(ctx context.Context, cfg config) (ok bool, err error) {
	dir, err := harness.ShortTempDir("hm-soak-")
	if err != nil {
		return false, err
	}
	ev := &events{}
	st, err := startStack(ctx, dir, ev)
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: logs in %s\n", dir)
		return false, err
	}
	defer func() {
		st.close()
		if ok && !cfg.Keep {
			os.RemoveAll(dir)
			return
		}
		fmt.Printf("soak: logs and data kept in %s\n", dir)
	}()

	rep := &report{
		Duration:  cfg.Duration.String(),
		Load:      fmt.Sprintf("%d agents x %d workers x %.1f/s", len(st.agents), cfg.Workers, cfg.PerSecond),
		RefusedBy: map[string]int{}, UsagePeak: map[string]usage{},
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	start := time.Now()
	ev.add("load", "start: "+rep.Load)
	l, err := startLoad(loadCtx, st, cfg.Workers, cfg.PerSecond)
	if err != nil {
		return false, err
	}
	faultsDone := make(chan error, 1)
	go func() { faultsDone <- runFaults(loadCtx, st, ev, start, cfg.Duration) }()

	// Usage: first reading once the load runs, the peak every 30 s.
	time.Sleep(20 * time.Second)
	rep.UsageStart = sample(ctx, st)
	tick := time.NewTicker(30 * time.Second)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			tick.Stop()
			return false, ctx.Err()
		case <-tick.C:
			for name, u := range sample(ctx, st) {
				if u.RSSBytes > rep.UsagePeak[name].RSSBytes {
					rep.UsagePeak[name] = u
				}
			}
		case <-time.After(time.Until(start.Add(cfg.Duration))):
			done = true
		}
	}
	tick.Stop()
	stopLoad()
	attempts := l.wait()
	ev.add("load", fmt.Sprintf("stopped after %s: %d attestations asked for", time.Since(start).Round(time.Second), len(attempts)))
	if ferr := <-faultsDone; ferr != nil && ferr != context.Canceled {
		rep.Problems = append(rep.Problems, "fault: "+ferr.Error())
	}

	// Drain: every agent's outbox empties.
	err = harness.WaitFor(ctx, "the agents' outboxes to drain", 10*time.Minute, func() error {
		for _, ag := range st.agents {
			body, err := ag.Get(ctx, "/metrics")
			if err != nil {
				return err
			}
			if q := metricValue(body, "hallmark_agent_outbox_queued"); q != 0 {
				return fmt.Errorf("%s: %v queued", ag.Name, q)
			}
		}
		return nil
	})
	if err != nil {
		rep.Problems = append(rep.Problems, "drain: "+err.Error())
	}
	ev.add("drain", "outboxes empty")
	rep.UsageEnd = sample(ctx, st)
	for _, ag := range st.agents {
		if body, err := ag.Get(ctx, "/metrics"); err == nil {
			rep.SVIDRotations += metricValue(body, "hallmark_agent_svid_rotations_total")
			rep.Renewals += metricValue(body, `hallmark_agent_signing_certificate_renewals_total{result="success"}`)
		}
	}
	if err := check(ctx, st, attempts, rep); err != nil {
		rep.Problems = append(rep.Problems, "check: "+err.Error())
	}
	rep.Events = ev.all()
	printReport(rep)
	if err := writeReport(rep, filepath.Join(dir, "report.json"), cfg.Report); err != nil {
		return false, err
	}
	rep.Problems = append(rep.Problems, usageProblems(rep)...)
	ok = rep.Lost == 0 && rep.Duplicated == 0 && rep.Unverified == 0 && rep.Unaccounted == 0 && len(rep.Problems) == 0
	return ok, nil
}

// check looks up every attestation a step was told succeeded in the log,
// by its product's digest, and verifies what it finds.
func check(ctx context.Context, st *soakStack, attempts []attempt, rep *report) error {
	srv := st.servers[0]
	trJSON, err := srv.Get(ctx, "/trust/trusted_root.json")
	if err != nil {
		return err
	}
	tr, err := verify.ParseTrustedRoot(trJSON)
	if err != nil {
		return err
	}
	rep.Made = len(attempts)
	rep.DuplicateSample = map[string][]string{}
	for _, a := range attempts {
		if a.Err != "" {
			rep.Refused++
			rep.RefusedBy[reasonClass(a.Err)]++
			continue
		}
		rep.Succeeded++
		bundles, err := lookUp(ctx, srv, a.SHA256[:])
		if err != nil {
			return fmt.Errorf("look up %s: %w", a.ID, err)
		}
		switch len(bundles) {
		case 0:
			rep.Lost++
			if len(rep.LostSamples) < 10 {
				rep.LostSamples = append(rep.LostSamples, a)
			}
			continue
		case 1:
		default:
			rep.Duplicated++
			if len(rep.DuplicateSample) < 10 {
				rep.DuplicateSample[a.ID] = []string{fmt.Sprint(len(bundles))}
			}
		}
		if _, err := verify.Verify(bundles[0], []verify.Digest{{Name: filepath.Base(a.Product), SHA256: a.SHA256}}, verify.Options{TrustedRoot: tr}); err != nil {
			rep.Unverified++
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s (%s): %v", a.ID, a.At.Format(time.TimeOnly), err))
			continue
		}
		rep.Logged++
	}
	cp, err := srv.Get(ctx, "/log/checkpoint")
	if err != nil {
		return err
	}
	text, _, _ := strings.Cut(string(cp), "\n\n")
	c, err := tlog.ParseCheckpoint(text + "\n")
	if err != nil {
		return err
	}
	rep.LogSize = c.Size
	rep.Unaccounted = int64(c.Size) - int64(rep.Logged+rep.Duplicated)
	return nil
}

// lookUp returns the bundles the log holds for an artifact digest, rebuilt
// from GET /log/entries as docs/log.md says.
func lookUp(ctx context.Context, srv *harness.Service, digest []byte) ([][]byte, error) {
	body, err := srv.Get(ctx, "/log/entries?digest=sha256:"+hex.EncodeToString(digest))
	if err != nil {
		return nil, err
	}
	var page struct {
		Entries []struct {
			TlogEntry       json.RawMessage `json:"tlogEntry"`
			DSSEEnvelope    json.RawMessage `json:"dsseEnvelope"`
			Certificate     string          `json:"certificate"`
			SignedTimestamp string          `json:"signedTimestamp"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, err
	}
	var out [][]byte
	for _, e := range page.Entries {
		out = append(out, fmt.Appendf(nil, `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":%q},"tlogEntries":[%s],"timestampVerificationData":{"rfc3161Timestamps":[{"signedTimestamp":%q}]}},"dsseEnvelope":%s}`,
			e.Certificate, e.TlogEntry, e.SignedTimestamp, e.DSSEEnvelope))
	}
	return out, nil
}

var (
	hexRun   = regexp.MustCompile(`[0-9a-f]{16,}`)
	numbers  = regexp.MustCompile(`[0-9]+`)
	maxClass = 140
)

// reasonClass is a refusal's message with the parts that differ from one
// attestation to the next (IDs, numbers, times) blanked, for counting.
func reasonClass(msg string) string {
	msg = numbers.ReplaceAllString(hexRun.ReplaceAllString(msg, "…"), "#")
	if len(msg) > maxClass {
		msg = msg[:maxClass] + "…"
	}
	return msg
}

func printReport(r *report) {
	fmt.Println("soak: ---- report ----")
	fmt.Printf("soak: %s of load (%s)\n", r.Duration, r.Load)
	fmt.Printf("soak: attestations asked for %d: succeeded %d, logged and verified %d, refused %d, lost %d, duplicated %d, unverifiable %d\n",
		r.Made, r.Succeeded, r.Logged, r.Refused, r.Lost, r.Duplicated, r.Unverified)
	fmt.Printf("soak: log size %d (entries not accounted for by a success: %d)\n", r.LogSize, r.Unaccounted)
	fmt.Printf("soak: SVID rotations seen by the agents %.0f, signing certificate renewals %.0f\n", r.SVIDRotations, r.Renewals)
	reasons := make([]string, 0, len(r.RefusedBy))
	for k := range r.RefusedBy {
		reasons = append(reasons, k)
	}
	sort.Slice(reasons, func(i, j int) bool { return r.RefusedBy[reasons[i]] > r.RefusedBy[reasons[j]] })
	for _, k := range reasons {
		fmt.Printf("soak:   refused %5d x %s\n", r.RefusedBy[k], k)
	}
	names := make([]string, 0, len(r.UsageEnd))
	for k := range r.UsageEnd {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, n := range names {
		s, e, p := r.UsageStart[n], r.UsageEnd[n], r.UsagePeak[n]
		restarted := ""
		if s.PID != e.PID {
			restarted = fmt.Sprintf(" (restarted: pid %d -> %d)", s.PID, e.PID)
		}
		fmt.Printf("soak: %-18s RSS %6.1f -> %6.1f MiB (peak %6.1f), goroutines %4.0f -> %4.0f, fds %3.0f -> %3.0f%s\n", n,
			s.RSSBytes/(1<<20), e.RSSBytes/(1<<20), p.RSSBytes/(1<<20), s.Goroutines, e.Goroutines, s.OpenFDs, e.OpenFDs, restarted)
	}
	fmt.Printf("soak: bounds: RSS growth <= %d MiB, RSS peak <= %d MiB, goroutines +%d, fds +%d\n",
		maxRSSGrowth>>20, maxRSSPeak>>20, maxGoroutineGrowth, maxFDGrowth)
	for _, e := range r.Events {
		fmt.Printf("soak: event %s %-6s %s\n", e.At.Format(time.TimeOnly), e.Kind, e.Detail)
	}
	for _, p := range r.Problems {
		fmt.Printf("soak: PROBLEM %s\n", p)
	}
}

func writeReport(r *report, paths ...string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Bounds on every daemon's resources over a run: what "flat" means. The
// peak allows for an agent replaying its outbox after a kill -9.
const (
	maxRSSGrowth       = 32 << 20 // bytes, end over start
	maxRSSPeak         = 256 << 20
	maxGoroutineGrowth = 16
	maxFDGrowth        = 16
)

// usageProblems names every daemon whose usage grew past the bounds.
func usageProblems(r *report) []string {
	var out []string
	for name, e := range r.UsageEnd {
		s, ok := r.UsageStart[name]
		if !ok {
			out = append(out, name+": no usage at the start")
			continue
		}
		if d := e.RSSBytes - s.RSSBytes; d > maxRSSGrowth {
			out = append(out, fmt.Sprintf("%s: RSS grew %.1f MiB, more than %d MiB", name, d/(1<<20), maxRSSGrowth>>20))
		}
		if p := r.UsagePeak[name].RSSBytes; p > maxRSSPeak {
			out = append(out, fmt.Sprintf("%s: RSS peaked at %.1f MiB, more than %d MiB", name, p/(1<<20), maxRSSPeak>>20))
		}
		if d := e.Goroutines - s.Goroutines; d > maxGoroutineGrowth {
			out = append(out, fmt.Sprintf("%s: %.0f more goroutines, more than %d", name, d, maxGoroutineGrowth))
		}
		if d := e.OpenFDs - s.OpenFDs; d > maxFDGrowth {
			out = append(out, fmt.Sprintf("%s: %.0f more open files, more than %d", name, d, maxFDGrowth))
		}
	}
	sort.Strings(out)
	return out
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// minDuration is the shortest run the schedule fits: the server side is
// down for certTTL+30s from 60% of it, and the rest must see it recover.
const minDuration = 10 * time.Minute

// bound is how long a run may take beyond its duration: draining the
// outboxes and checking every attestation.
const bound = 15 * time.Minute

// event is something that happened, for the report.
type event struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
}

type events struct {
	mu   sync.Mutex
	list []event
}

func (e *events) add(kind, detail string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, event{At: time.Now(), Kind: kind, Detail: detail})
	fmt.Printf("soak: %s %-6s %s\n", time.Now().Format(time.TimeOnly), kind, detail)
}

func (e *events) all() []event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]event(nil), e.list...)
}

// fault is one disturbance, injected at a fraction of the duration.
type fault struct {
	at   float64
	name string
	run  func(ctx context.Context, st *soakStack, ev *events) error
}

// schedule is every fault injected, in order. SVID rotation and signing
// certificate renewal go on all along (svidTTL, certTTL).
var schedule = []fault{
	{0.10, "rotate the signing CA: prepare and activate a new issuer", rotateSigningCA},
	{0.20, "restart hallmark-server replica 1", restartReplica},
	{0.30, "kill -9 hallmark-agent 2, restart it 10 s later", killAgent},
	{0.40, "stop PostgreSQL for 60 s", postgresDown},
	{0.50, "taint the old signing issuer (agents renew at once)", taintOldIssuer},
	{0.60, fmt.Sprintf("stop both hallmark-server replicas for %s (certificate TTL %s)", certTTL+30*time.Second, certTTL), serverSideDown},
}

// runFaults injects the schedule over the duration from start; it returns
// the first fault's error, having gone on with the others.
func runFaults(ctx context.Context, st *soakStack, ev *events, start time.Time, d time.Duration) error {
	var first error
	for _, f := range schedule {
		at := start.Add(time.Duration(f.at * float64(d)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(at)):
		}
		ev.add("fault", f.name)
		if err := f.run(ctx, st, ev); err != nil {
			ev.add("FAILED", fmt.Sprintf("%s: %v", f.name, err))
			if first == nil {
				first = fmt.Errorf("%s: %w", f.name, err)
			}
			continue
		}
		ev.add("done", f.name)
	}
	return first
}

type rotationStep struct {
	Issuer struct {
		ID          string `json:"id"`
		State       string `json:"state"`
		Fingerprint string `json:"fingerprint"`
	} `json:"issuer"`
}

func rotate(ctx context.Context, st *soakStack, ev *events, step string) error {
	out, err := st.admin(ctx, "rotate", "signing", step)
	if err != nil {
		return err
	}
	var s rotationStep
	if err := json.Unmarshal(out, &s); err != nil {
		return fmt.Errorf("%s: %w: %s", step, err, out)
	}
	ev.add("rotate", fmt.Sprintf("signing %s: issuer %s is %s (fingerprint %.16s)", step, s.Issuer.ID, s.Issuer.State, s.Issuer.Fingerprint))
	return nil
}

func rotateSigningCA(ctx context.Context, st *soakStack, ev *events) error {
	if err := rotate(ctx, st, ev, "prepare"); err != nil {
		return err
	}
	time.Sleep(5 * time.Second)
	return rotate(ctx, st, ev, "activate")
}

func taintOldIssuer(ctx context.Context, st *soakStack, ev *events) error {
	return rotate(ctx, st, ev, "taint")
}

func restartReplica(ctx context.Context, st *soakStack, ev *events) error {
	if err := st.servers[0].Stop(); err != nil {
		return err
	}
	ev.add("down", st.servers[0].Name)
	time.Sleep(5 * time.Second)
	if err := st.servers[0].Start(ctx); err != nil {
		return err
	}
	ev.add("up", st.servers[0].Name)
	return nil
}

func killAgent(ctx context.Context, st *soakStack, ev *events) error {
	ag := st.agents[1]
	ag.Kill()
	ev.add("down", ag.Name+" (kill -9)")
	time.Sleep(10 * time.Second)
	if err := ag.Start(ctx); err != nil {
		return err
	}
	ev.add("up", ag.Name)
	return nil
}

func postgresDown(ctx context.Context, st *soakStack, ev *events) error {
	if err := st.pg.Down(); err != nil {
		return err
	}
	ev.add("down", "PostgreSQL")
	time.Sleep(time.Minute)
	if err := st.pg.Up(ctx); err != nil {
		return err
	}
	ev.add("up", "PostgreSQL")
	return nil
}

func serverSideDown(ctx context.Context, st *soakStack, ev *events) error {
	for _, s := range st.servers {
		if err := s.Stop(); err != nil {
			return err
		}
	}
	ev.add("down", "hallmark-server replicas 1 and 2")
	time.Sleep(certTTL + 30*time.Second)
	for _, s := range st.servers {
		if err := s.Start(ctx); err != nil {
			return err
		}
	}
	ev.add("up", "hallmark-server replicas 1 and 2")
	return nil
}

// usage is a daemon's resources as its /metrics says.
type usage struct {
	At         time.Time `json:"at"`
	PID        int       `json:"pid"`
	RSSBytes   float64   `json:"rss_bytes"`
	Goroutines float64   `json:"goroutines"`
	OpenFDs    float64   `json:"open_fds"`
}

// sample reads every daemon's usage.
func sample(ctx context.Context, st *soakStack) map[string]usage {
	out := map[string]usage{}
	for _, s := range append(append([]*harness.Service(nil), st.servers...), st.agents...) {
		body, err := s.Get(ctx, "/metrics")
		if err != nil {
			continue
		}
		out[s.Name] = usage{
			At: time.Now(), PID: s.Pid(),
			RSSBytes:   metricValue(body, "process_resident_memory_bytes"),
			Goroutines: metricValue(body, "go_goroutines"),
			OpenFDs:    metricValue(body, "process_open_fds"),
		}
	}
	return out
}

// metricValue is the value of an unlabelled series in a Prometheus text
// exposition, -1 when absent.
func metricValue(body []byte, name string) float64 {
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

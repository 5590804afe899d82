package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// cpuSample is CPU time used so far: the machine's busy and total clock
// ticks (/proc/stat), this process's and each replica's CPU time.
type cpuSample struct {
	at          time.Time
	busy, total uint64
	self        time.Duration
	replicas    []time.Duration
}

func readCPU(replicas []*harness.Service) (cpuSample, error) {
	s := cpuSample{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return s, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	// user nice system idle iowait irq softirq steal; guest time is in
	// user time already.
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return s, fmt.Errorf("/proc/stat: %w", err)
		}
		s.total += v
		if i != 3 && i != 4 {
			s.busy += v
		}
	}
	s.self = selfCPU()
	for _, r := range replicas {
		s.replicas = append(s.replicas, procCPU(r.Pid()))
	}
	return s, nil
}

// since describes the CPU used between before and s, in cores (1.0 is
// one CPU busy all the time).
func (s cpuSample) since(before cpuSample, replicas []*harness.Service) string {
	elapsed := s.at.Sub(before.at)
	if s.total == before.total || elapsed <= 0 {
		return "unknown"
	}
	ncpu := cpuCount()
	cores := func(d time.Duration) float64 { return d.Seconds() / elapsed.Seconds() }
	var b strings.Builder
	fmt.Fprintf(&b, "machine %.2f of %d cores busy; this generator (the simulated agents) %.2f",
		float64(s.busy-before.busy)/float64(s.total-before.total)*float64(ncpu), ncpu, cores(s.self-before.self))
	for i := range s.replicas {
		if i < len(before.replicas) && i < len(replicas) {
			fmt.Fprintf(&b, "; %s %.2f", replicas[i].Name, cores(s.replicas[i]-before.replicas[i]))
		}
	}
	return b.String()
}

// cpuCount is the number of CPUs /proc/stat counts.
func cpuCount() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 1
	}
	n := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "cpu") && len(line) > 3 && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return max(n, 1)
}

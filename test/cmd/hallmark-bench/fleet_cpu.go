package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// cpuSample is CPU time used so far: the machine's busy and total clock
// ticks (/proc/stat), this process's CPU time and that of every process
// it started (the stack), by PID.
type cpuSample struct {
	at          time.Time
	busy, total uint64
	self        time.Duration
	children    map[int]procTime
}

type procTime struct {
	name string
	cpu  time.Duration
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
	s.children = descendants(os.Getpid())
	for _, r := range replicas {
		if p, ok := s.children[r.Pid()]; ok {
			p.name = r.Name
			s.children[r.Pid()] = p
		}
	}
	return s, nil
}

// descendants are the processes under pid, with their command names and
// CPU times.
func descendants(pid int) map[int]procTime {
	parent := map[int]int{}
	procs := map[int]procTime{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue // gone
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 13 {
			continue
		}
		p, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
		parent[p], _ = strconv.Atoi(fields[1])
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		const clkTck = 100 // USER_HZ on Linux
		procs[p] = procTime{name: s[open+1 : end], cpu: time.Duration(utime+stime) * time.Second / clkTck}
	}
	out := map[int]procTime{}
	for p, t := range procs {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				out[p] = t
				break
			}
		}
	}
	return out
}

// since describes the CPU used between before and s, in cores (1.0 is
// one CPU busy all the time): the machine's, this generator's, each part
// of the stack's, and the rest (other users of the machine).
func (s cpuSample) since(before cpuSample) string {
	elapsed := s.at.Sub(before.at)
	if s.total == before.total || elapsed <= 0 {
		return "unknown"
	}
	ncpu := cpuCount()
	cores := func(d time.Duration) float64 { return d.Seconds() / elapsed.Seconds() }
	machine := float64(s.busy-before.busy) / float64(s.total-before.total) * float64(ncpu)
	self := cores(s.self - before.self)
	byName := map[string]float64{}
	stack := 0.0
	for pid, t := range s.children {
		c := cores(t.cpu - before.children[pid].cpu)
		byName[t.name] += c
		stack += c
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		if byName[n] >= 0.005 {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool { return byName[names[i]] > byName[names[j]] })
	var b strings.Builder
	fmt.Fprintf(&b, "machine %.2f of %d cores busy: this generator (the simulated agents) %.2f", machine, ncpu, self)
	for _, n := range names {
		fmt.Fprintf(&b, ", %s %.2f", n, byName[n])
	}
	fmt.Fprintf(&b, "; other processes on the machine %.2f", max(machine-self-stack, 0))
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

package server

import "sync"

// maxCallsPerCaller bounds one caller's unary calls under way. An agent
// makes a few at a time (a batch of timestamps, a submission, a renewal,
// a policy fetch); a caller already at the bound is refused at once
// (ResourceExhausted) rather than queued, so that one compromised agent's
// flood of expensive calls holds at most this many of the server's
// goroutines, and no request it sent waits in memory for a turn. Before,
// one agent could keep any number under way: each Timestamp call of 500
// one-byte signatures costs 88 ms of CPU, and 64 of them at once made
// every other agent's timestamp take 455 ms (an attacker review).
const maxCallsPerCaller = 16

// callLimit counts unary calls under way per caller; its zero value is
// ready to use.
type callLimit struct {
	mu   sync.Mutex
	open map[string]int
}

// take counts a call for caller, unless max are under way already; the
// returned func gives its place back, once.
func (l *callLimit) take(caller string, max int) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[caller] >= max {
		return nil, false
	}
	if l.open == nil {
		l.open = map[string]int{}
	}
	l.open[caller]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.open[caller]--; l.open[caller] == 0 {
				delete(l.open, caller)
			}
		})
	}, true
}

// Package uidlimit bounds work under way per uid and in all, fairly: one
// uid's burst of work never takes what another uid needs to be served. The
// agent's local API bounds attestations and identifications with it, and
// the measuring threads are shared out with it.
package uidlimit

import (
	"context"
	"sync"
)

// Limit bounds work under way per uid and, optionally, in all. A uid
// waits for its own slots first, so a uid over its bound never holds a
// slot of the shared bound: other uids always find one free while fewer
// than all/perUID uids are busy.
type Limit struct {
	perUID int
	all    chan struct{} // nil: no bound in all

	mu   sync.Mutex
	uids map[uint32]*slots
}

type slots struct {
	slots chan struct{}
	refs  int // holders and waiters; the entry goes at zero
}

// New returns a Limit of perUID slots per uid and all in all (zero or
// less: no bound in all).
func New(perUID, all int) *Limit {
	l := &Limit{perUID: perUID, uids: map[uint32]*slots{}}
	if all > 0 {
		l.all = make(chan struct{}, all)
	}
	return l
}

// Acquire waits for a slot of uid's (and one in all) until ctx ends; the
// returned func gives them back. Its error is ctx's, unwrapped.
func (l *Limit) Acquire(ctx context.Context, uid uint32) (func(), error) {
	l.mu.Lock()
	s := l.uids[uid]
	if s == nil {
		s = &slots{slots: make(chan struct{}, l.perUID)}
		l.uids[uid] = s
	}
	s.refs++
	l.mu.Unlock()
	drop := func() {
		l.mu.Lock()
		if s.refs--; s.refs == 0 {
			delete(l.uids, uid)
		}
		l.mu.Unlock()
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	}
	if l.all != nil {
		select {
		case l.all <- struct{}{}:
		case <-ctx.Done():
			<-s.slots
			drop()
			return nil, ctx.Err()
		}
	}
	return func() {
		if l.all != nil {
			<-l.all
		}
		<-s.slots
		drop()
	}, nil
}

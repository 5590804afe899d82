package agent

import (
	"context"
	"sync"
	"time"
)

// LocalLimits bound what callers of the local API may hold at once, so that
// one uid abusing the socket cannot starve another's steps or the agent.
// A zero field takes its default.
type LocalLimits struct {
	// Connections bounds the open connections in all; default 1024.
	Connections int
	// ConnectionsPerUID bounds one uid's open connections; default 64.
	ConnectionsPerUID int
	// StreamsPerConnection bounds the calls under way on one connection;
	// default 16.
	StreamsPerConnection int
	// AttestationsPerUID bounds one uid's attestations under way; more
	// wait. Default 16.
	AttestationsPerUID int
	// IdentificationsPerUID bounds one uid's calls to the workload
	// attestors under way (SPIRE's Delegated Identity API); more wait.
	// Default 4.
	IdentificationsPerUID int
	// Identifications bounds those calls in all; default 32.
	Identifications int
	// IdleTimeout closes a connection with no call under way for this
	// long; default 60s.
	IdleTimeout time.Duration
}

// Defaults of LocalLimits.
const (
	DefaultMaxConnections           = 1024
	DefaultMaxConnectionsPerUID     = 64
	DefaultMaxStreamsPerConnection  = 16
	DefaultMaxAttestationsPerUID    = 16
	DefaultMaxIdentificationsPerUID = 4
	DefaultMaxIdentifications       = 32
	DefaultIdleTimeout              = 60 * time.Second
)

func (l LocalLimits) withDefaults() LocalLimits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.Connections, DefaultMaxConnections)
	def(&l.ConnectionsPerUID, DefaultMaxConnectionsPerUID)
	def(&l.StreamsPerConnection, DefaultMaxStreamsPerConnection)
	def(&l.AttestationsPerUID, DefaultMaxAttestationsPerUID)
	def(&l.IdentificationsPerUID, DefaultMaxIdentificationsPerUID)
	def(&l.Identifications, DefaultMaxIdentifications)
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	return l
}

// uidLimit bounds work under way per uid and, optionally, in all. A uid
// waits for its own slots first, so a uid over its bound never holds a
// slot of the shared bound: other uids always find one free while fewer
// than total/perUID uids are busy.
type uidLimit struct {
	perUID int
	all    chan struct{} // nil: no bound in all

	mu   sync.Mutex
	uids map[uint32]*uidSlots
}

type uidSlots struct {
	slots chan struct{}
	refs  int // holders and waiters; the entry goes at zero
}

func newUIDLimit(perUID, all int) *uidLimit {
	l := &uidLimit{perUID: perUID, uids: map[uint32]*uidSlots{}}
	if all > 0 {
		l.all = make(chan struct{}, all)
	}
	return l
}

// acquire waits for a slot of uid's (and one in all) until ctx ends; the
// returned func gives them back.
func (l *uidLimit) acquire(ctx context.Context, uid uint32) (func(), error) {
	l.mu.Lock()
	s := l.uids[uid]
	if s == nil {
		s = &uidSlots{slots: make(chan struct{}, l.perUID)}
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

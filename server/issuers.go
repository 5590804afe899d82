package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/plugins/store"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// issuerRefresh is how often a log re-reads the issuer states from its
// store, so that a rotation made through another server on the same
// database reaches this one's agents.
const issuerRefresh = 5 * time.Second

// fingerprint is the SHA-256 of an issuing CA certificate's DER: how
// rotation names an issuer across the key manager, the store and agents.
type fingerprint [sha256.Size]byte

func fingerprintOf(c *x509.Certificate) fingerprint { return sha256.Sum256(c.Raw) }

// issuerStates holds rotation's decisions (taint and revocation times) by
// issuer, and wakes watchers when they change. Safe for concurrent use.
type issuerStates struct {
	mu       sync.RWMutex
	states   map[fingerprint]store.IssuerState
	revision uint64
	changed  chan struct{} // closed and replaced on every change
}

func newIssuerStates(list []store.IssuerState) *issuerStates {
	s := &issuerStates{changed: make(chan struct{})}
	s.states = index(list)
	return s
}

func index(list []store.IssuerState) map[fingerprint]store.IssuerState {
	m := make(map[fingerprint]store.IssuerState, len(list))
	for _, st := range list {
		var fp fingerprint
		copy(fp[:], st.Fingerprint)
		m[fp] = st
	}
	return m
}

// get returns the state of an issuer; the zero state if none.
func (s *issuerStates) get(fp fingerprint) store.IssuerState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.states[fp]
}

// replace installs a new set of states, waking watchers if it differs,
// and reports whether it did.
func (s *issuerStates) replace(list []store.IssuerState) bool {
	m := index(list)
	s.mu.Lock()
	defer s.mu.Unlock()
	if equalStates(s.states, m) {
		return false
	}
	s.states = m
	s.revision++
	close(s.changed)
	s.changed = make(chan struct{})
	return true
}

func equalStates(a, b map[fingerprint]store.IssuerState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !v.TaintedAt.Equal(w.TaintedAt) || !v.RevokedAt.Equal(w.RevokedAt) {
			return false
		}
	}
	return true
}

// tainted returns the fingerprints of every tainted or revoked issuer,
// sorted, the revision they are from, and a channel closed at the next
// change.
func (s *issuerStates) tainted() ([][]byte, uint64, <-chan struct{}) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out [][]byte
	for fp, st := range s.states {
		if !st.TaintedAt.IsZero() || !st.RevokedAt.IsZero() {
			out = append(out, bytes.Clone(fp[:]))
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i], out[j]) < 0 })
	return out, s.revision, s.changed
}

// list returns every issuer state.
func (s *issuerStates) list() []store.IssuerState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]store.IssuerState, 0, len(s.states))
	for _, st := range s.states {
		out = append(out, st)
	}
	return out
}

// SetIssuerState records a rotation decision in the store and applies it
// at once: to the agents' streams and to the trust state the log admits
// entries against and exports (package attest/trust says what a taint and
// a revocation end).
func (l *TransparencyLog) SetIssuerState(ctx context.Context, st store.IssuerState) error {
	if err := l.store.SetIssuerState(ctx, st); err != nil {
		return err
	}
	_, err := l.refreshIssuers(ctx)
	return err
}

// refreshIssuers re-reads the issuer states and, when they changed,
// prepares the admission again; it reports whether they changed.
func (l *TransparencyLog) refreshIssuers(ctx context.Context) (bool, error) {
	list, err := l.store.IssuerStates(ctx)
	if err != nil {
		return false, err
	}
	if !l.issuers.replace(list) {
		return false, nil
	}
	return true, l.rebuildAdmission()
}

// watchIssuers re-reads the issuer states and the latest checkpoint every
// issuerRefresh until ctx ends: a rotation or appends through another
// server sharing the store show here.
func (l *TransparencyLog) watchIssuers(ctx context.Context) {
	t := time.NewTicker(issuerRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := l.refreshIssuers(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("Cannot re-read the signing CAs' rotation states", zap.Error(err))
			}
			if err := l.refreshHead(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("Cannot re-read the log's latest checkpoint", zap.Error(err))
			}
		}
	}
}

// WatchSigningAuthorities streams the tainted issuers to an agent: the
// set now, then again on every change.
func (a *agentService) WatchSigningAuthorities(_ *serverv1.WatchSigningAuthoritiesRequest, stream serverv1.AgentService_WatchSigningAuthoritiesServer) error {
	if a.tlog == nil {
		return status.Error(codes.Unimplemented, "this server has no transparency log")
	}
	sent := false
	var last uint64
	for {
		set, rev, changed := a.tlog.issuers.tainted()
		if !sent || rev != last {
			if err := stream.Send(&serverv1.SigningAuthorities{TaintedIssuers: set, Revision: rev}); err != nil {
				return err
			}
			sent, last = true, rev
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-a.stopping: // nil in tests: never
			return status.Error(codes.Unavailable, "the server is stopping")
		case <-changed:
		}
	}
}

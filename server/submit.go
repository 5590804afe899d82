package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/internal/serverfault"
	"github.com/hallmark-dev/hallmark/plugins/store"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// SubmitEntries appends the caller's signed envelopes to the transparency
// log (see TransparencyLog.Submit for the checks). A refused entry gets
// its reason in its result and the others go on; a failure of the log
// itself fails the call with Unavailable, and the agent retries.
func (a *agentService) SubmitEntries(ctx context.Context, req *serverv1.SubmitEntriesRequest) (*serverv1.SubmitEntriesResponse, error) {
	if a.tlog == nil {
		return nil, status.Error(codes.Unavailable, "the server has no transparency log")
	}
	n := len(req.GetEntries())
	if n > MaxSubmitEntries {
		return nil, status.Errorf(codes.InvalidArgument, "%d entries in one call, more than the %d allowed", n, MaxSubmitEntries)
	}
	// A log whose store is down decides nothing: say so before checking
	// every entry (signatures, timestamps, chains) of a call that agents
	// will send again and again until the store is back.
	if err := a.s.storeReady(ctx); err != nil {
		return nil, serverfault.Errorf(codes.Unavailable, "store", "transparency log: store: %v", err)
	}
	subs := make([]Submission, n)
	for i, e := range req.GetEntries() {
		subs[i] = Submission{Envelope: e.GetEnvelope(), Certificate: e.GetCertificate(), Timestamp: e.GetTimestamp()}
	}
	id := caller(ctx)
	results, err := a.tlog.Submit(ctx, id, subs)
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			return nil, err
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, status.FromContextError(err).Err()
		}
		return nil, serverfault.Errorf(codes.Unavailable, "transparency log", "transparency log: %v", err)
	}
	resp := &serverv1.SubmitEntriesResponse{Results: make([]*serverv1.LogEntryResult, n)}
	for i, r := range results {
		if r.Refusal != nil {
			resp.Results[i] = &serverv1.LogEntryResult{Error: r.Refusal.Error()}
			a.s.log.Warn("Log entry refused", zap.String(logCallerID, id.String()), zap.Int("position", i), zap.String(logReason, r.Refusal.Error()))
			continue
		}
		out, err := tlog.MarshalEntry(r.Entry)
		if err != nil { // cannot happen: the log made the entry
			return nil, status.Errorf(codes.Internal, "marshal log entry: %v", err)
		}
		resp.Results[i] = &serverv1.LogEntryResult{TlogEntry: out, SignedTimestamp: r.Timestamp}
	}
	return resp, nil
}

// recordSigningCA records the CA part of an issued chain (leaf first).
func (a *agentService) recordSigningCA(ctx context.Context, chain []*x509.Certificate) error {
	if a.tlog == nil || len(chain) < 2 {
		return nil
	}
	return a.tlog.RecordSigningCA(ctx, chain[1:])
}

// keyManagerRoots is implemented by key managers that know their roots
// before issuing (the local one).
type keyManagerRoots interface {
	Roots(ctx context.Context) ([]*x509.Certificate, error)
}

// recordKeyManagerRoots records the key manager's roots at start, so the
// trusted root lists them before the first issuance.
func (s *Server) recordKeyManagerRoots(ctx context.Context, km KeyManager) error {
	r, ok := km.(keyManagerRoots)
	if !ok || s.tlog == nil {
		return nil
	}
	roots, err := r.Roots(ctx)
	if err != nil {
		return fmt.Errorf("server: key manager %s roots: %w", s.cfg.KeyManager.Name, err)
	}
	for _, root := range roots {
		if err := s.tlog.RecordSigningCA(ctx, []*x509.Certificate{root}); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	return nil
}

// openLog opens the store and the transparency log. A store that holds a
// log is never given a new key: without its key the log cannot continue.
func (s *Server) openLog(ctx context.Context) (*TransparencyLog, Store, error) {
	st, err := s.cfg.Store.open(ctx, storeOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("server: store %s: %w", s.cfg.Store.Name, err)
	}
	tl, err := s.openLogIn(ctx, st)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return tl, st, nil
}

func (s *Server) openLogIn(ctx context.Context, st Store) (*TransparencyLog, error) {
	_, err := st.LatestCheckpoint(ctx)
	hasLog := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("server: store %s: %w", s.cfg.Store.Name, err)
	}
	keyPath := logKeyPath(s.cfg.DataDir)
	key, err := loadLogKey(keyPath, !hasLog, s.cfg.Now())
	if errors.Is(err, errNoLogKey) {
		return nil, fmt.Errorf("server: the store holds a transparency log but its key %s is missing: restore it (a new key cannot continue the log)", keyPath)
	}
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	tsaPath := tsaKeyPath(s.cfg.DataDir)
	ts, err := loadTSA(tsaPath, s.cfg.LogOrigin, !hasLog, s.cfg.Now())
	if errors.Is(err, errNoTSAKey) {
		return nil, fmt.Errorf("server: the store holds a transparency log but its timestamp key %s is missing: restore it (the trusted root names its certificate)", tsaPath)
	}
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	tl, err := NewTransparencyLog(ctx, TransparencyLogConfig{
		Store: st, Key: key.priv, KeyCreated: key.created, Origin: s.cfg.LogOrigin, TSA: ts,
		Log: s.log.With(zap.String("component", "tlog")), Now: s.cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.metrics.registry.MustRegister(tl.metrics.collectors()...)
	s.log.Info("Transparency log open",
		zap.String("origin", tl.origin),
		zap.Uint64("size", tl.currentHead().size),
		zap.String("log_id", hex.EncodeToString(tl.logID)),
		zap.String("store", s.cfg.Store.Name))
	return tl, nil
}

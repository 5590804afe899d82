package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/plugins/keymanager"
	"github.com/hallmark-dev/hallmark/plugins/store"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// issuerManager is what signing-CA rotation needs of a key manager: both
// built-in key managers implement it (plugins/keymanager).
type issuerManager interface {
	Issuers(ctx context.Context) ([]keymanager.Issuer, error)
	PrepareIssuer(ctx context.Context) (keymanager.Issuer, error)
	ActivateIssuer(ctx context.Context, id string) error
	RevokeIssuer(ctx context.Context, id string) error
}

// Issuer states as AdminService reports them.
const (
	issuerPrepared = "prepared"
	issuerActive   = "active"
	issuerOld      = "old"
	issuerTainted  = "tainted"
	issuerRevoked  = "revoked"
)

// adminService implements serverv1.AdminServiceServer: signing-CA
// rotation in four steps (docs/rotation.md). Steps are serialized.
type adminService struct {
	serverv1.UnimplementedAdminServiceServer
	s    *Server
	km   issuerManager
	tlog *TransparencyLog
	mu   sync.Mutex // one rotation step at a time
}

// issuerView is an issuer with rotation's state.
type issuerView struct {
	keymanager.Issuer
	fp    fingerprint
	state string
	st    store.IssuerState
}

// issuers lists the key manager's issuers, oldest first, with their state:
// revoked or tainted as recorded; otherwise active, old (before the active
// one) or prepared (after it).
func (a *adminService) issuers(ctx context.Context) ([]issuerView, error) {
	list, err := a.km.Issuers(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "key manager %s: %v", a.s.cfg.KeyManager.Name, err)
	}
	active := -1
	for i, is := range list {
		if is.Active {
			active = i
		}
	}
	out := make([]issuerView, len(list))
	for i, is := range list {
		if len(is.Chain) == 0 {
			return nil, status.Errorf(codes.Internal, "key manager issuer %s has no certificate", is.ID)
		}
		v := issuerView{Issuer: is, fp: fingerprintOf(is.Chain[0])}
		v.st = a.tlog.issuers.get(v.fp)
		switch {
		case is.Revoked || !v.st.RevokedAt.IsZero():
			v.state = issuerRevoked
		case !v.st.TaintedAt.IsZero():
			v.state = issuerTainted
		case is.Active:
			v.state = issuerActive
		case i < active:
			v.state = issuerOld
		default:
			v.state = issuerPrepared
		}
		out[i] = v
	}
	return out, nil
}

// resolve returns the issuer a step acts on: see pick.
func (a *adminService) resolve(ctx context.Context, id, want, step string) (issuerView, error) {
	list, err := a.issuers(ctx)
	if err != nil {
		return issuerView{}, err
	}
	return pick(list, id, want, step)
}

// pick returns the issuer named id, or, when id is empty, the only issuer
// in state want.
func pick(list []issuerView, id, want, step string) (issuerView, error) {
	if id != "" {
		for _, v := range list {
			if v.ID == id {
				return v, nil
			}
		}
		return issuerView{}, status.Errorf(codes.NotFound, "%s: no issuer %q", step, id)
	}
	var found []issuerView
	for _, v := range list {
		if v.state == want {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return issuerView{}, status.Errorf(codes.FailedPrecondition, "%s: no %s issuer%s", step, want, hint(want))
	default:
		return issuerView{}, status.Errorf(codes.FailedPrecondition, "%s: %d %s issuers; name one with its ID", step, len(found), want)
	}
}

func hint(state string) string {
	switch state {
	case issuerPrepared:
		return "; run prepare first"
	case issuerOld:
		return "; run activate first"
	case issuerTainted:
		return "; run taint first"
	}
	return ""
}

func (a *adminService) GetStatus(ctx context.Context, _ *serverv1.GetStatusRequest) (*serverv1.GetStatusResponse, error) {
	list, err := a.issuers(ctx)
	if err != nil {
		return nil, err
	}
	resp := &serverv1.GetStatusResponse{}
	for _, v := range list {
		resp.Issuers = append(resp.Issuers, v.status())
	}
	resp.Agents = a.s.agents.list()
	return resp, nil
}

func (v issuerView) status() *serverv1.IssuerStatus {
	c := v.Chain[0]
	out := &serverv1.IssuerStatus{
		Id: v.ID, Fingerprint: v.fp[:], State: v.state, Subject: c.Subject.String(),
		NotBefore: timestamppb.New(c.NotBefore), NotAfter: timestamppb.New(c.NotAfter),
		TrustedUntil: timestamppb.New(c.NotAfter),
	}
	// The trust rule's end (package attest/trust), as the trusted root
	// says it.
	if ca, err := trust.SigningCA(v.Chain, v.st.TaintedAt, v.st.RevokedAt); err == nil {
		out.TrustedUntil = timestamppb.New(ca.ValidFor.End)
	}
	if !v.st.TaintedAt.IsZero() {
		out.TaintedAt = timestamppb.New(v.st.TaintedAt)
	}
	if !v.st.RevokedAt.IsZero() {
		out.RevokedAt = timestamppb.New(v.st.RevokedAt)
	}
	return out
}

// PrepareIssuer creates an issuer and publishes it in the trust material
// before anything is signed under it.
func (a *adminService) PrepareIssuer(ctx context.Context, _ *serverv1.PrepareIssuerRequest) (*serverv1.IssuerStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	is, err := a.km.PrepareIssuer(ctx)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "prepare: key manager %s: %v", a.s.cfg.KeyManager.Name, err)
	}
	if err := a.tlog.RecordSigningCA(ctx, is.Chain); err != nil {
		return nil, status.Errorf(codes.Unavailable, "prepare: publish the new issuer: %v", err)
	}
	return a.report(ctx, "prepare", is.ID)
}

// ActivateIssuer makes an issuer sign new certificates.
func (a *adminService) ActivateIssuer(ctx context.Context, req *serverv1.IssuerRequest) (*serverv1.IssuerStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, err := a.resolve(ctx, req.GetId(), issuerPrepared, "activate")
	if err != nil {
		return nil, err
	}
	if v.state == issuerTainted || v.state == issuerRevoked {
		return nil, status.Errorf(codes.FailedPrecondition, "activate: issuer %s is %s", v.ID, v.state)
	}
	// Published first, so no certificate exists under an issuer the
	// trusted root lacks (a no-op when prepare already did it).
	if err := a.tlog.RecordSigningCA(ctx, v.Chain); err != nil {
		return nil, status.Errorf(codes.Unavailable, "activate: publish the issuer: %v", err)
	}
	if err := a.km.ActivateIssuer(ctx, v.ID); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "activate: key manager %s: %v", a.s.cfg.KeyManager.Name, err)
	}
	return a.report(ctx, "activate", v.ID)
}

// TaintIssuer tells agents to leave an issuer and stops logging its
// certificates after trust.TaintGrace.
func (a *adminService) TaintIssuer(ctx context.Context, req *serverv1.IssuerRequest) (*serverv1.IssuerStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, err := a.resolve(ctx, req.GetId(), issuerOld, "taint")
	if err != nil {
		return nil, err
	}
	switch v.state {
	case issuerTainted, issuerRevoked:
		return v.status(), nil // done already
	case issuerActive:
		return nil, status.Errorf(codes.FailedPrecondition, "taint: issuer %s is the active one; activate another one first", v.ID)
	case issuerPrepared:
		return nil, status.Errorf(codes.FailedPrecondition, "taint: issuer %s was never active; nothing to move away from", v.ID)
	}
	st := store.IssuerState{Fingerprint: v.fp[:], TaintedAt: a.s.cfg.Now().UTC().Truncate(time.Second)}
	if err := a.tlog.SetIssuerState(ctx, st); err != nil {
		return nil, status.Errorf(codes.Unavailable, "taint: %v", err)
	}
	a.s.log.Warn("Signing CA tainted: agents renew now; its certificates are refused for new log entries after the grace",
		zap.String(logIssuer, v.ID), zap.Duration("grace", trust.TaintGrace))
	return a.report(ctx, "taint", v.ID)
}

// RevokeIssuer revokes a tainted issuer from a time on.
func (a *adminService) RevokeIssuer(ctx context.Context, req *serverv1.RevokeIssuerRequest) (*serverv1.IssuerStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, err := a.resolve(ctx, req.GetId(), issuerTainted, "revoke")
	if err != nil {
		return nil, err
	}
	if v.state != issuerTainted && v.state != issuerRevoked {
		return nil, status.Errorf(codes.FailedPrecondition, "revoke: issuer %s is %s; taint it first", v.ID, v.state)
	}
	now := a.s.cfg.Now().UTC()
	at := now.Truncate(time.Second)
	if req.GetAt() != nil {
		if err := req.GetAt().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "revoke: at: %v", err)
		}
		// Down to the second, as trust.SigningCA ends the window:
		// timestamps may round their time down, so a revocation between
		// two whole seconds would admit a signature made just after it.
		at = req.GetAt().AsTime().UTC().Truncate(time.Second)
	}
	if prev := v.st.RevokedAt; !prev.IsZero() {
		// Revoked before: running revoke again (as after a key manager
		// failure) keeps the recorded time unless given an earlier one.
		// A later one would trust again what was signed in between.
		switch {
		case req.GetAt() == nil:
			at = prev
		case at.After(prev):
			return nil, status.Errorf(codes.FailedPrecondition, "revoke: issuer %s is revoked from %s; a later time (%s) would trust again what it signed in between, "+
				"so revocation only moves earlier (run revoke without --at to retry the key manager step)",
				v.ID, prev.UTC().Format(time.RFC3339), at.Format(time.RFC3339))
		}
	}
	if at.After(now) {
		return nil, status.Errorf(codes.InvalidArgument, "revoke: at %s is in the future; revocation takes effect from a past or present time", at.Format(time.RFC3339))
	}
	if first := v.Chain[0].NotBefore; at.Before(first) {
		return nil, status.Errorf(codes.InvalidArgument, "revoke: at %s is before the issuer existed (%s)", at.Format(time.RFC3339), first.UTC().Format(time.RFC3339))
	}
	// Recorded first: from here the log refuses the issuer and the
	// trusted root ends its validFor at at, even if the key manager step
	// below fails (it is then retried by running revoke again).
	st := v.st
	st.Fingerprint = v.fp[:]
	st.RevokedAt = at
	if err := a.tlog.SetIssuerState(ctx, st); err != nil {
		return nil, status.Errorf(codes.Unavailable, "revoke: %v", err)
	}
	if err := a.km.RevokeIssuer(ctx, v.ID); err != nil {
		return nil, status.Errorf(codes.Unavailable, "revoke: recorded, but key manager %s: %v (run `hallmark admin rotate signing revoke --id %s` again: the recorded time stays)", a.s.cfg.KeyManager.Name, err, v.ID)
	}
	a.s.log.Warn("Signing CA revoked", zap.String(logIssuer, v.ID), zap.Time("revoked_at", at))
	return a.report(ctx, "revoke", v.ID)
}

// report returns the issuer id's status after a step.
func (a *adminService) report(ctx context.Context, step, id string) (*serverv1.IssuerStatus, error) {
	list, err := a.issuers(ctx)
	if err != nil {
		return nil, err
	}
	for _, v := range list {
		if v.ID == id {
			a.s.log.Info("Signing CA rotation step", zap.String("step", step), zap.String(logIssuer, id), zap.String("state", v.state))
			return v.status(), nil
		}
	}
	return nil, status.Errorf(codes.Internal, "%s: issuer %s vanished", step, id)
}

// publishIssuers records every issuer the key manager has, so that
// prepared issuers are in the trust material after a restart too.
func (a *adminService) publishIssuers(ctx context.Context) error {
	list, err := a.km.Issuers(ctx)
	if err != nil {
		return fmt.Errorf("server: key manager %s issuers: %w", a.s.cfg.KeyManager.Name, err)
	}
	for _, is := range list {
		if len(is.Chain) == 0 {
			continue
		}
		if err := a.tlog.RecordSigningCA(ctx, is.Chain); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	return nil
}

// serveAdmin serves AdminService on the admin socket until ctx ends. The
// socket is 0600 in a directory others cannot write, and each call's
// peer must pass allowed (allowAdmin in production: the server's user or
// root).
func (s *Server) serveAdmin(ctx context.Context, svc *adminService, allowed func(uid uint32) bool) error {
	ln, err := peercred.Listen(peercred.ListenConfig{
		Path: s.cfg.AdminSocket, Mode: 0o600, GID: -1,
		Refused: func(err error) []byte {
			s.log.Warn("Admin connection dropped", zap.Error(err))
			// No limits here: its peer could not be identified (gone,
			// most likely). Closed without a word.
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("server: admin socket: %w", err)
	}
	g := s.newAdminGRPC(allowed)
	serverv1.RegisterAdminServiceServer(g, svc)
	s.log.Info("Serving the admin API", zap.String(logAddress, s.cfg.AdminSocket))
	go func() {
		<-ctx.Done()
		stopGracefully(g, 5*time.Second)
	}()
	if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("server: serve admin: %w", err)
	}
	return nil
}

// allowAdmin is the admin API's authorization: the caller runs as the
// server's own user or as root.
func allowAdmin(serverUID int) func(uid uint32) bool {
	return func(uid uint32) bool { return uid == 0 || int64(uid) == int64(serverUID) }
}

// newAdminGRPC is the admin socket's gRPC server: every call, unary or
// streaming, on any service registered on it, is authorized by its peer's
// uid first.
func (s *Server) newAdminGRPC(allowed func(uid uint32) bool) *grpc.Server {
	return grpc.NewServer(
		grpc.Creds(peercred.Credentials()),
		grpc.ChainUnaryInterceptor(s.adminInterceptor(allowed)),
		grpc.ChainStreamInterceptor(s.adminStreamInterceptor(allowed)),
	)
}

// adminAuthorize refuses a caller allowed does not let in.
func (s *Server) adminAuthorize(ctx context.Context, method string, allowed func(uid uint32) bool) (peercred.Info, error) {
	conn, ok := peercred.FromContext(ctx)
	if !ok {
		return peercred.Info{}, status.Error(codes.Unauthenticated, "no peer credentials")
	}
	peer := conn.Peer()
	if !allowed(peer.UID) {
		s.metrics.denied.WithLabelValues(method).Inc()
		s.log.Warn("Admin call denied", zap.String(logMethod, method), zap.Uint32("uid", peer.UID), zap.Int32("pid", peer.PID),
			zap.String(logReason, "not the server's user or root"))
		return peer, status.Errorf(codes.PermissionDenied, "uid %d may not call %s: run as the server's user or root", peer.UID, method)
	}
	return peer, nil
}

// adminInterceptor authorizes every unary admin call by its peer's uid, and
// logs each failure once.
func (s *Server) adminInterceptor(allowed func(uid uint32) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		peer, err := s.adminAuthorize(ctx, info.FullMethod, allowed)
		if err != nil {
			return nil, err
		}
		resp, err := handler(ctx, req)
		s.logAdminFailure(info.FullMethod, peer, err)
		return resp, err
	}
}

// adminStreamInterceptor is adminInterceptor for streaming calls: none of
// AdminService's today, but no call on the admin socket goes unchecked.
func (s *Server) adminStreamInterceptor(allowed func(uid uint32) bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		peer, err := s.adminAuthorize(ss.Context(), info.FullMethod, allowed)
		if err != nil {
			return err
		}
		err = handler(srv, ss)
		s.logAdminFailure(info.FullMethod, peer, err)
		return err
	}
}

func (s *Server) logAdminFailure(method string, peer peercred.Info, err error) {
	if err != nil {
		st := status.Convert(err)
		s.log.Warn("Admin call failed", zap.String(logMethod, method), zap.Uint32("uid", peer.UID),
			zap.String(logCode, st.Code().String()), zap.String(logError, st.Message()))
	}
}

// agentRecords remembers the latest signing certificate this server
// issued to each agent, for AdminService.GetStatus.
type agentRecords struct {
	mu sync.Mutex
	m  map[string]*serverv1.AgentStatus
}

func (r *agentRecords) issued(id string, chain []*x509.Certificate, at time.Time) {
	leaf := chain[0]
	var fp []byte
	if len(chain) > 1 {
		f := fingerprintOf(chain[1])
		fp = f[:]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string]*serverv1.AgentStatus)
	}
	r.m[id] = &serverv1.AgentStatus{
		SpiffeId: id, Serial: leaf.SerialNumber.Text(16),
		ExpiresAt: timestamppb.New(leaf.NotAfter), IssuedAt: timestamppb.New(at), IssuerFingerprint: fp,
	}
}

func (r *agentRecords) list() []*serverv1.AgentStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*serverv1.AgentStatus, 0, len(r.m))
	for _, a := range r.m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SpiffeId < out[j].SpiffeId })
	return out
}

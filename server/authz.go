package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// authorizer decides whether a caller may call a method.
type authorizer func(id spiffeid.ID) bool

// policy maps every gRPC method to who may call it. A method missing here
// is refused to everyone.
func (s *Server) policy() map[string]authorizer {
	return map[string]authorizer{
		serverv1.AgentService_IssueSigningCertificate_FullMethodName: s.isAgent,
		serverv1.AgentService_GetPolicy_FullMethodName:               s.isAgent,
		healthpb.Health_Check_FullMethodName:                         s.isMember,
		healthpb.Health_List_FullMethodName:                          s.isMember,
		healthpb.Health_Watch_FullMethodName:                         s.isMember,
		serverv1.AgentService_SubmitEntries_FullMethodName:           s.isAgent,
		serverv1.AgentService_WatchSigningAuthorities_FullMethodName: s.isAgent,
		serverv1.AgentService_Timestamp_FullMethodName:               s.isAgent,
	}
}

// isMember reports whether id is in the server's trust domain (TLS has
// already required it; kept explicit here).
func (s *Server) isMember(id spiffeid.ID) bool { return id.MemberOf(s.cfg.TrustDomain) }

// isAgent reports whether id is an agent: in the trust domain, under the
// configured path prefix.
func (s *Server) isAgent(id spiffeid.ID) bool {
	return id.MemberOf(s.cfg.TrustDomain) && strings.HasPrefix(id.Path(), s.cfg.AgentPathPrefix)
}

// authorize decides one call, unary or streaming, by the caller's SPIFFE
// ID and the method's policy entry; a denial is counted and logged here.
func (s *Server) authorize(ctx context.Context, policy map[string]authorizer, method string) (spiffeid.ID, error) {
	id, ok := grpccredentials.PeerIDFromContext(ctx)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no X509-SVID presented")
	}
	allowed, known := policy[method]
	if known && allowed(id) {
		return id, nil
	}
	reason := fmt.Sprintf("agents are %s members under %s", s.cfg.TrustDomain, s.cfg.AgentPathPrefix)
	label := method
	if !known {
		// The caller wrote the method's name (up to gRPC's header
		// limit): neither a metric label of its own nor all of it logged.
		reason, label = "the method has no authorization policy", unknownMethod
		if len(method) > maxLoggedMethod {
			method = method[:maxLoggedMethod] + "…"
		}
	}
	s.metrics.denied.WithLabelValues(label).Inc()
	s.deniedLog().Warn("Call denied",
		zap.String(logMethod, method),
		zap.String(logCallerID, id.String()),
		zap.String(logReason, reason))
	return id, status.Errorf(codes.PermissionDenied, "%s may not call %s: %s", id, method, reason)
}

// unknownMethod labels the denials of methods the policy does not name;
// maxLoggedMethod bounds how much of such a name is logged and answered.
const (
	unknownMethod   = "unknown"
	maxLoggedMethod = 128
)

// deniedLog logs denials: the first 20 a second, then none until the
// next second (hallmark_server_authorization_denied_total counts them
// all), so that a caller refused call after call cannot fill the disk.
func (s *Server) deniedLog() *zap.Logger {
	s.deniedOnce.Do(func() {
		s.denied = s.log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return zapcore.NewSamplerWithOptions(c, time.Second, 20, 0)
		}))
	})
	return s.denied
}

// tap authorizes each call, by the same policy and with the same
// denial, when its headers arrive: before gRPC reads its request (up to
// maxRecvMsgSize), so a member of the trust domain that is not an agent
// (any workload SPIRE gives an SVID, build steps included) cannot make
// the server hold megabytes of a request it will refuse. gRPC answers a
// refusal here with the returned status and never starts the call; a
// connection refused call after call is closed (connGuard).
func (s *Server) tap(policy map[string]authorizer) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		ctx, err := s.admit(ctx, policy, info.FullMethodName)
		if err != nil {
			if p, ok := peer.FromContext(ctx); ok && s.conns.refused(p.LocalAddr, p.Addr) {
				s.deniedLog().Warn("Connection closed: too many calls refused on it",
					zap.String(logAddress, p.Addr.String()), zap.Int("refused", maxRefusalsPerConn+1), zap.Duration("within", refusalWindow))
			}
			return nil, err
		}
		return ctx, nil
	}
}

// admit is the tap's decision. A caller that is not an agent takes a
// place among its ID's (maxOutsiderCalls) until its request is read (the
// interceptors give it back: requestRead, placeHeldUntilRead) or the
// call ends first (whatever way it ends, gRPC cancels its context; one
// refused after the tap has its context ended already): a health watch
// open for days holds none.
func (s *Server) admit(ctx context.Context, policy map[string]authorizer, method string) (context.Context, error) {
	id, err := s.authorize(ctx, policy, method)
	if err != nil {
		return ctx, err
	}
	if s.isAgent(id) {
		return ctx, nil
	}
	release, ok := s.outsiders.take(id.String(), maxOutsiderCalls)
	if !ok {
		s.metrics.limited.WithLabelValues(method).Inc()
		return ctx, status.Errorf(codes.ResourceExhausted, "%s has %d calls whose requests are under way, the most the server takes from a caller that is not an agent: wait for them", id, maxOutsiderCalls)
	}
	context.AfterFunc(ctx, release)
	return context.WithValue(ctx, outsiderPlaceKey{}, release), nil
}

type outsiderPlaceKey struct{}

// requestRead gives back the outsider's place the tap took for the call
// of ctx, if any: its request is read.
func requestRead(ctx context.Context) {
	if release, ok := ctx.Value(outsiderPlaceKey{}).(func()); ok {
		release()
	}
}

// unaryInterceptor authorizes each call by the caller's SPIFFE ID, then logs
// failures once, here at the API edge.
func (s *Server) unaryInterceptor(policy map[string]authorizer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		requestRead(ctx)
		id, err := s.authorize(ctx, policy, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			release, ok := s.calls.take(p.Addr.String(), maxCallsPerConn)
			if !ok {
				s.metrics.limited.WithLabelValues(info.FullMethod).Inc()
				return nil, status.Errorf(codes.ResourceExhausted, "%s has %d calls under way on this connection, the most the server takes on one: wait for them", id, maxCallsPerConn)
			}
			defer release()
		}
		resp, err := handler(withCaller(ctx, id), req)
		if err != nil {
			st := status.Convert(err)
			s.log.Warn("Call failed",
				zap.String(logMethod, info.FullMethod),
				zap.String(logCallerID, id.String()),
				zap.String(logCode, st.Code().String()),
				zap.String(logError, st.Message()))
		}
		return resp, err
	}
}

// streamInterceptor applies the same per-method policy to streaming calls.
func (s *Server) streamInterceptor(policy map[string]authorizer) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if _, err := s.authorize(ss.Context(), policy, info.FullMethod); err != nil {
			return err
		}
		// A streaming call's request is read by the handler's first
		// RecvMsg (which reads on to the end of a server-streaming
		// call's requests): the outsider's place goes back once that
		// returns, or, for a call whose client streams, once a RecvMsg
		// finds the end.
		if _, ok := ss.Context().Value(outsiderPlaceKey{}).(func()); ok {
			ss = placeHeldUntilRead{ss, info.IsClientStream}
		}
		return handler(srv, ss)
	}
}

// placeHeldUntilRead gives back the call's outsider place when its
// request has been read: its one message, or, for a client stream,
// every message to the end.
type placeHeldUntilRead struct {
	grpc.ServerStream
	clientStream bool
}

func (s placeHeldUntilRead) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if !s.clientStream || err != nil {
		requestRead(s.Context())
	}
	return err
}

type callerKey struct{}

func withCaller(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

// caller is the authorized caller's SPIFFE ID, set by the interceptor.
func caller(ctx context.Context) spiffeid.ID {
	id, _ := ctx.Value(callerKey{}).(spiffeid.ID)
	return id
}

// Log field names.
const (
	logMethod     = "method"
	logCallerID   = "caller_id"
	logReason     = "reason"
	logCode       = "code"
	logError      = "error"
	logSPIFFEID   = "spiffe_id"
	logSerial     = "serial"
	logNotAfter   = "not_after"
	logIssuer     = "issuer"
	logKeyManager = "key_manager"
	logAddress    = "address"
)

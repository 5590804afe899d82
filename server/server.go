// Package server is hallmark-server: it authenticates agents by their
// X509-SVIDs over mutual TLS and certifies their short-lived signing keys
// through a key manager (Vault PKI, or a local CA).
//
// A Server is built with New and runs with Run until its context ends.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/hallmark-dev/hallmark/internal/limits"
	"github.com/hallmark-dev/hallmark/internal/svidwatch"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// maxRecvMsgSize bounds any request to the agent API: SubmitEntries
// carries envelopes (each up to MaxEnvelopeSize), so it is the largest.
// Only authenticated agents get as far as sending one. Agents size their
// calls under it (internal/limits).
const maxRecvMsgSize = limits.MaxCallBytes

// Server is hallmark-server.
type Server struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics
	ready   atomic.Bool
	// tlog is the transparency log, opened by Run.
	tlog *TransparencyLog
	// agents are the latest certificates issued, for the admin API.
	agents agentRecords
	// calls counts the unary calls under way on each connection;
	// outsiders the calls open by each SPIFFE ID that is not an agent's.
	calls, outsiders callLimit
	// conns are the agent API's connections, for the tap to close.
	conns connGuard
	// denied logs denials, sampled (deniedLog).
	deniedOnce sync.Once
	denied     *zap.Logger
}

// New checks cfg and returns a server ready to Run.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.KeyManager.build == nil {
		return nil, errors.New("server: no key manager configured")
	}
	cfg.setLogDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return &Server{cfg: cfg, log: cfg.Log, metrics: newMetrics()}, nil
}

// Run serves until ctx ends. It opens the store and the transparency log,
// serves the health, log and trust endpoints, waits for the server's
// X509-SVID from the SPIRE agent, then serves the agent API.
func (s *Server) Run(ctx context.Context) (err error) {
	tl, st, err := s.openLog(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := st.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("server: close store: %w", cerr)
		}
	}()
	s.tlog = tl
	var healthLn net.Listener
	if s.cfg.HealthAddress != "" {
		if healthLn, err = net.Listen("tcp", s.cfg.HealthAddress); err != nil {
			return fmt.Errorf("server: health listener: %w", err)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return tl.Run(ctx) })
	if healthLn != nil {
		g.Go(func() error { return s.serveHealth(ctx, healthLn) })
	}
	g.Go(func() error { return s.serve(ctx) })
	return g.Wait()
}

func (s *Server) serve(ctx context.Context) error {
	s.log.Info("Waiting for the X509-SVID from the SPIRE Workload API", zap.String(logAddress, s.cfg.WorkloadAPIAddr))
	clientOpt := workloadapi.WithClientOptions(workloadapi.WithAddr(s.cfg.WorkloadAPIAddr))
	source, err := workloadapi.NewX509Source(ctx, clientOpt)
	if err != nil {
		return fmt.Errorf("server: X509-SVID source: %w", err)
	}
	defer source.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		return fmt.Errorf("server: X509-SVID: %w", err)
	}
	if !svid.ID.MemberOf(s.cfg.TrustDomain) {
		return fmt.Errorf("server: own SPIFFE ID %s is not in trust domain %s", svid.ID, s.cfg.TrustDomain)
	}

	jwts, err := workloadapi.New(ctx, workloadapi.WithAddr(s.cfg.WorkloadAPIAddr))
	if err != nil {
		return fmt.Errorf("server: workload API client: %w", err)
	}
	defer jwts.Close()
	km, err := s.cfg.KeyManager.build(pluginDeps{log: s.log.With(zap.String(logKeyManager, s.cfg.KeyManager.Name)), svids: source, jwts: jwts, now: s.cfg.Now})
	if err != nil {
		return fmt.Errorf("server: key manager %s: %w", s.cfg.KeyManager.Name, err)
	}
	if err := s.recordKeyManagerRoots(ctx, km); err != nil {
		return err
	}
	var admin *adminService
	if im, ok := km.(issuerManager); ok && s.tlog != nil {
		admin = &adminService{s: s, km: im, tlog: s.tlog}
		if err := admin.publishIssuers(ctx); err != nil {
			return err
		}
	}
	if s.cfg.AdminSocket != "" && admin == nil {
		return fmt.Errorf("server: admin_socket is set but key manager %s cannot rotate its signing CA", s.cfg.KeyManager.Name)
	}

	// TLS admits any member of the trust domain (anything else cannot even
	// chain to its bundle); which member may call what is decided per call
	// when the call's headers arrive (the tap), before a byte of its
	// request is read, so a refused caller gets PermissionDenied with the
	// reason instead of a bare handshake failure, and costs the server no
	// more than its headers. The interceptors decide again, by the same
	// policy.
	creds := serverCredentials(source, source, s.cfg.TrustDomain)
	grpcServer := grpc.NewServer(
		grpc.Creds(creds),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		grpc.MaxHeaderListSize(maxHeaderListBytes),
		grpc.InTapHandle(s.tap(s.policy())),
		grpc.StatsHandler(connContexts{}),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor(s.policy())),
		grpc.ChainStreamInterceptor(s.streamInterceptor(s.policy())),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      s.cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: 30 * time.Second,
			Timeout:               tcpUserTimeout, // gRPC's default; connGuard sets it as TCP_USER_TIMEOUT
		}),
		// Agents ping every 30 s to notice a vanished replica; allow it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true}),
	)
	agents := &agentService{s: s, km: km, tlog: s.tlog, stopping: make(chan struct{})}
	serverv1.RegisterAgentServiceServer(grpcServer, agents)
	// gRPC health (grpc.health.v1) for any member of the trust domain:
	// SERVING once the SVID and the key manager are in place.
	health := grpchealth.NewServer()
	health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	health.SetServingStatus(serverv1.AgentService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(grpcServer, health)
	defer health.Shutdown()

	ln, err := net.Listen("tcp", s.cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("server: listen: %w", err)
	}
	s.log.Info("Serving the agent API",
		zap.String(logAddress, ln.Addr().String()),
		zap.String(logSPIFFEID, svid.ID.String()),
		zap.String(logKeyManager, s.cfg.KeyManager.Name),
		zap.String("trust_domain", s.cfg.TrustDomain.String()),
		zap.String("agent_path_prefix", s.cfg.AgentPathPrefix),
		zap.Duration("certificate_ttl", s.cfg.CertificateTTL))

	g, ctx := errgroup.WithContext(ctx)
	if s.cfg.AdminSocket != "" {
		g.Go(func() error { return s.serveAdmin(ctx, admin, allowAdmin(os.Geteuid())) })
	}
	g.Go(func() error {
		s.ready.Store(true)
		defer s.ready.Store(false)
		if err := grpcServer.Serve(s.conns.listener(ln)); err != nil {
			return fmt.Errorf("server: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		close(agents.stopping) // end the agents' watch streams first
		stopGracefully(grpcServer, 10*time.Second)
		return nil
	})
	g.Go(func() error {
		svidwatch.Watch(ctx, source, s.log, func(leaf *x509.Certificate, rotated bool) {
			if rotated {
				s.metrics.svidRotations.Inc()
			}
			s.metrics.svidExpiry.Set(float64(leaf.NotAfter.Unix()))
		})
		return nil
	})
	return g.Wait()
}

// stopGracefully lets in-flight calls finish for up to grace.
func stopGracefully(g *grpc.Server, grace time.Duration) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		g.Stop()
	}
}

func (s *Server) serveHealth(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready: waiting for the X509-SVID or the key manager", http.StatusServiceUnavailable)
			return
		}
		if err := s.storeReady(r.Context()); err != nil {
			http.Error(w, "not ready: the store does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	if s.tlog != nil {
		s.tlog.registerHTTP(mux, s.log)
	}
	return serveHTTP(ctx, ln, mux)
}

// serveHTTP serves h on ln until ctx ends.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx) //nolint:errcheck // best effort on the way out
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("server: health: %w", err)
	}
	return nil
}

// storeReady pings the log's store, briefly: a server whose database is
// gone says so, and load balancers and agents move to another replica.
func (s *Server) storeReady(ctx context.Context) error {
	if s.tlog == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.tlog.store.Ping(ctx)
}

// serverCredentials are the server's mTLS credentials: it presents its
// X509-SVID from svids, and admits a peer only when the peer's X509-SVID
// chains to the bundles' authorities for its trust domain and that trust
// domain is td (go-spiffe's AuthorizeMemberOf). A peer of any other trust
// domain, even one whose SVID chains to an authority the server holds (a
// federated one), fails the handshake (TestHandshakeAdmitsOnlyTheTrustDomain).
func serverCredentials(svids x509svid.Source, bundles x509bundle.Source, td spiffeid.TrustDomain) credentials.TransportCredentials {
	return grpccredentials.MTLSServerCredentials(svids, bundles, tlsconfig.AuthorizeMemberOf(td))
}

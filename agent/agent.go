// Package agent is hallmark-agent, the daemon on every CI runner. It takes
// its X509-SVID from the local SPIRE agent, talks to hallmark-server over
// mutual TLS (accepting exactly the configured server SPIFFE ID), and keeps
// a short-lived signing certificate for a key that exists only in its memory,
// renewed with a fresh key at half its lifetime.
//
// An Agent is built with New and runs with Run until its context ends.
package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/internal/limits"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/internal/policy"
	"github.com/hallmark-dev/hallmark/internal/serverfault"
	"github.com/hallmark-dev/hallmark/internal/svidwatch"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

const callTimeout = 30 * time.Second

// Log field names.
const (
	logSPIFFEID  = "spiffe_id"
	logSerial    = "serial"
	logNotAfter  = "not_after"
	logIssuer    = "issuer"
	logAddress   = "address"
	logAddresses = "addresses"
	logRetryIn   = "retry_in"
	logError     = "error"
	logSocket    = "socket"
	logMethod    = "method"
	logCode      = "code"
	logReason    = "reason"
	logEvent     = "event"
	logPID       = "pid"
	logUID       = "uid"
	logGID       = "gid"
	logStep      = "step"
	logRule      = "rule"

	logWorkspace    = "workspace"
	logSPIFFEIDs    = "spiffe_ids"
	logSelectors    = "selectors"
	logInvocationID = "invocation_id"
	logNotLogged    = "not_logged_since" // like events not logged since the last line
)

// certIssuer is the server call the agent makes to renew; the generated
// serverv1.AgentServiceClient is one.
type certIssuer interface {
	IssueSigningCertificate(ctx context.Context, in *serverv1.IssueSigningCertificateRequest, opts ...grpc.CallOption) (*serverv1.IssueSigningCertificateResponse, error)
}

// Agent is hallmark-agent.
type Agent struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics
	keys    keyHolder
	pol     atomic.Pointer[policy.Policy] // in force
	outbox  *outbox.Outbox                // opened by Run
	// submitNudge wakes the log submitter when an envelope is queued.
	submitNudge chan struct{}
	// timestamps obtains the timestamp of every signature (timestamp.go).
	timestamps timestamper
	// submitCap is the most entries the submitter sends in its next
	// call: LogBatchSize, less after a call refused as too large.
	// Touched by the submitter only.
	submitCap int
	// renewNudge wakes the renew loop to look at the held certificate
	// again: its CA may have been tainted.
	renewNudge chan struct{}
	tainted    atomic.Pointer[taintSet] // the server's last word, nil before any

	// retry delays after a failed renewal
	backoffBase, backoffMax time.Duration
	// between asks for the signing-CA stream of a server without it
	authoritiesRetryUnimplemented time.Duration
	// how often the exec canary runs, and how long its exec event may take
	execCanaryEvery, execCanaryWait time.Duration
	// serverReady says whether a server replica is connected; set by run
	// before the loops start, nil in tests that call them directly.
	serverReady func() bool

	mu        sync.Mutex // guards the fields below
	id        spiffeid.ID
	svid      *x509.Certificate
	reachable bool
	lastErr   string
	renewErr  string // why the last renewal failed; empty after a success
	// exeForgeable, when set, says why callers' executables can be
	// forged on this host (peercred.ExeForgeable).
	exeForgeable string
	renewals     int
	failures     int // renewals that failed

	policySource   string // where the policy in force came from
	policyRevision string // the server's revision of it
	rotations      int    // SVID rotations seen
}

// New checks cfg and returns an agent ready to Run.
func New(cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.Policy == nil {
		cfg.Policy = policy.DenyAll()
	}
	if cfg.PolicyRefresh <= 0 {
		cfg.PolicyRefresh = DefaultPolicyRefresh
	}
	if cfg.LogBatchSize <= 0 {
		cfg.LogBatchSize = DefaultLogBatchSize
	}
	cfg.LogBatchSize = min(cfg.LogBatchSize, limits.MaxEntriesPerCall)
	if cfg.OutboxMaxPendingBytes <= 0 {
		cfg.OutboxMaxPendingBytes = DefaultOutboxMaxPendingBytes
	}
	a := &Agent{
		cfg:         cfg,
		log:         cfg.Log,
		metrics:     newMetrics(),
		submitNudge: make(chan struct{}, 1),
		renewNudge:  make(chan struct{}, 1),
		backoffBase: time.Second,
		backoffMax:  30 * time.Second,

		authoritiesRetryUnimplemented: DefaultAuthoritiesRetryUnimplemented,
		execCanaryEvery:               execCanaryEvery,
		execCanaryWait:                execCanaryWait,
	}
	a.pol.Store(cfg.Policy)
	a.policySource = "file"
	if !cfg.PolicyFromFile {
		a.policySource = "server (none received yet: denying all)"
	}
	return a, nil
}

// Run works until ctx ends: it waits for the agent's X509-SVID, then keeps a
// signing certificate and serves the health endpoints.
func (a *Agent) Run(ctx context.Context) error {
	var healthLn net.Listener
	if a.cfg.HealthAddress != "" {
		var err error
		if healthLn, err = net.Listen("tcp", a.cfg.HealthAddress); err != nil {
			return fmt.Errorf("agent: health listener: %w", err)
		}
	}
	if a.cfg.DataDir != "" {
		ob, err := a.openOutbox(filepath.Join(a.cfg.DataDir, "outbox"))
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer ob.Close()
	}
	var (
		localLn *peercred.Listener
		execs   *peercred.ExecWatch
	)
	if a.cfg.SocketPath != "" {
		var err error
		if localLn, execs, err = a.listenLocal(); err != nil {
			if healthLn != nil {
				healthLn.Close()
			}
			return fmt.Errorf("agent: local API: %w", err)
		}
		defer execs.Close()
	}
	g, ctx := errgroup.WithContext(ctx)
	if healthLn != nil {
		g.Go(func() error { return a.serveHealth(ctx, healthLn) })
	}
	if localLn != nil {
		g.Go(func() error { return execs.Run(ctx) })
		if len(a.cfg.ExecCanary) > 0 {
			passed := func() { a.metrics.execCanaryPassed.Set(float64(a.cfg.Now().UnixNano()) / 1e9) }
			g.Go(func() error {
				return execs.RunCanary(ctx, a.cfg.ExecCanary, a.execCanaryEvery, a.execCanaryWait, passed)
			})
		}
		g.Go(func() error { return a.serveLocal(ctx, localLn) })
	}
	g.Go(func() error { return a.run(ctx) })
	return g.Wait()
}

// ExecCanaryCommand is the hallmark-agent command that the agent execs
// every execCanaryEvery (Config.ExecCanary) to prove that the exec watch
// still sees execs; it does nothing. Should the event not come within
// execCanaryWait, the watch refuses every connection and the agent stops
// with the error (its supervisor restarts it, subscribing anew).
const (
	ExecCanaryCommand = "exec-canary"
	execCanaryEvery   = 30 * time.Second
	execCanaryWait    = 5 * time.Second
)

// listenLocal checks the capabilities the local API needs, starts
// watching execs, which it needs to tie a request to the program image
// that sent it, and listens on the socket.
func (a *Agent) listenLocal() (*peercred.Listener, *peercred.ExecWatch, error) {
	if err := checkLocalAPICaps(); err != nil {
		return nil, nil, err
	}
	execs, err := peercred.WatchExecs()
	if err != nil {
		return nil, nil, fmt.Errorf("%w (hallmark-agent needs CAP_NET_ADMIN and the host's network, user and pid namespaces: on Kubernetes hostNetwork and hostPID)", err)
	}
	if forgeable, why := peercred.ExeForgeable(); forgeable {
		a.mu.Lock()
		a.exeForgeable = why
		a.mu.Unlock()
		a.metrics.exeForgeable.Set(1)
		a.log.Warn("Any local user can make its /proc/PID/exe name a program it never ran on this host (" + why + "): " +
			"selectors read from the executable (unix:path, unix:sha256, SPIRE's path and sha256) do not prove which program called. " +
			"Name callers in policy by uid, group or SPIFFE IDs not resting on those, or close unprivileged user namespaces " +
			"(sysctl user.max_user_namespaces=0, or kernel.apparmor_restrict_unprivileged_userns=1); docs/security.md")
	}
	if execs.Unfiltered() {
		a.log.Warn("The kernel sends the exec watch every process event, not exec events alone (Linux before 6.6): " +
			"a local user making events fast enough (forks, thread renames) can overflow it, and the steps connected meanwhile are refused")
	}
	lim := a.cfg.LocalLimits.withDefaults()
	// Every connection holds up to four descriptors (socket, pidfd,
	// /proc/PID/cmdline and status); the rest must stay free for the
	// health listener, the server connection and the outbox.
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < uint64(4*lim.Connections+512) {
		execs.Close()
		return nil, nil, fmt.Errorf("the open files limit (%d) is too low for max_connections = %d: raise it to %d (LimitNOFILE) or lower max_connections",
			rl.Cur, lim.Connections, 4*lim.Connections+512)
	}
	ln, err := peercred.Listen(a.localListenConfig(lim, execs))
	if err != nil {
		execs.Close()
		return nil, nil, err
	}
	return ln, execs, nil
}

// localListenConfig is the local API's socket, its limits lim, and what
// happens to a connection refused at accept (localRefusal): the refusal
// is counted and logged (refusalLog), and the caller told why.
func (a *Agent) localListenConfig(lim LocalLimits, execs *peercred.ExecWatch) peercred.ListenConfig {
	refusals := newRefusalLog(a.log, a.cfg.Now)
	return peercred.ListenConfig{
		Path: a.cfg.SocketPath, Mode: a.cfg.SocketMode, GID: a.cfg.SocketGID,
		MaxConns: lim.Connections, MaxConnsPerUID: lim.ConnectionsPerUID, Execs: execs,
		Refused: func(err error) []byte {
			reason, goAway := localRefusal(lim, err)
			a.metrics.refusedConns.WithLabelValues(reason).Inc()
			refusals.record(reason, err)
			return goAway
		},
	}
}

func (a *Agent) run(ctx context.Context) error {
	a.log.Info("Waiting for the X509-SVID from the SPIRE Workload API", zap.String(logAddress, a.cfg.WorkloadAPIAddr))
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.cfg.WorkloadAPIAddr)))
	if err != nil {
		return fmt.Errorf("agent: X509-SVID source: %w", err)
	}
	defer source.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		return fmt.Errorf("agent: X509-SVID: %w", err)
	}
	a.mu.Lock()
	a.id = svid.ID
	a.mu.Unlock()

	creds := grpccredentials.MTLSClientCredentials(source, source, tlsconfig.AuthorizeID(a.cfg.ServerID))
	conn, err := dialServers(a.cfg.servers(), creds)
	if err != nil {
		return fmt.Errorf("agent: server client: %w", err)
	}
	defer conn.Close()
	a.serverReady = serverReady(conn)
	a.log.Info("Agent started",
		zap.String(logSPIFFEID, svid.ID.String()),
		zap.Strings(logAddresses, a.cfg.servers()),
		zap.String("server_spiffe_id", a.cfg.ServerID.String()))

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		svidwatch.Watch(ctx, source, a.log, func(leaf *x509.Certificate, rotated bool) {
			a.mu.Lock()
			a.id, a.svid = idOf(leaf), leaf
			a.mu.Unlock()
			if rotated {
				a.metrics.svidRotations.Inc()
				a.mu.Lock()
				a.rotations++
				a.mu.Unlock()
			}
			a.metrics.svidExpiry.Set(float64(leaf.NotAfter.Unix()))
		})
		return nil
	})
	client := serverv1.NewAgentServiceClient(conn)
	a.timestamps.setClient(client)
	g.Go(func() error { return a.renewLoop(ctx, client) })
	g.Go(func() error { return a.watchAuthorities(ctx, client) })
	if !a.cfg.PolicyFromFile {
		g.Go(func() error { return a.policyLoop(ctx, client) })
	}
	if a.outbox != nil {
		g.Go(func() error { return a.submitLoop(ctx, client) })
	}
	return g.Wait()
}

// renewLoop keeps a signing certificate: it renews at half the held
// certificate's lifetime, or at once when the server taints its CA, and,
// after a failure, retries with jittered backoff while the current
// certificate stays in use until it expires.
func (a *Agent) renewLoop(ctx context.Context, client certIssuer) error {
	b := newBackoff(a.backoffBase, a.backoffMax)
	for {
		held := a.keys.cur.Load()
		if _, tainted := a.taintedIssuer(held); tainted {
			a.metrics.taintedRenewals.Inc()
		} else if nudged, err := a.waitRenewal(ctx, renewAt(held)); err != nil {
			return nil
		} else if nudged {
			continue // look again at what is held now
		}
		known := a.tainted.Load()
		err := a.renew(ctx, client)
		if err == nil {
			if fp, tainted := a.taintedIssuer(a.keys.cur.Load()); tainted {
				if a.tainted.Load() != known {
					continue // tainted during the call: renew again now
				}
				// Installed, the held one being no better; the server
				// has yet to activate a new signing CA.
				err = fmt.Errorf("the server issued the new certificate from tainted CA %x too", fp)
			}
		}
		if err == nil && renewAt(a.keys.cur.Load()).After(a.cfg.Now()) {
			a.mu.Lock()
			a.renewErr = ""
			a.mu.Unlock()
			b.reset()
			continue
		}
		if err == nil {
			// Valid but already due for renewal (a clock skewed against
			// the server's, or a TTL clamped by the key manager): don't spin.
			err = errors.New("the new certificate is already past half its lifetime: check clocks and the key manager's TTL")
		}
		if ctx.Err() != nil {
			return nil
		}
		a.mu.Lock()
		a.failures++
		a.renewErr = err.Error()
		a.mu.Unlock()
		retry := b.delay()
		fields := []zap.Field{zap.Error(err), zap.Duration(logRetryIn, retry)}
		if c, ok := a.keys.current(a.cfg.Now()); ok {
			fields = append(fields, zap.Time("current_not_after", c.leaf().NotAfter))
			a.log.Warn("Signing certificate renewal failed; keeping the current certificate until it expires", fields...)
		} else {
			a.metrics.certExpiry.Set(0)
			a.metrics.certInfo.Reset()
			a.log.Error("No valid signing certificate: attestation is unavailable until renewal succeeds", fields...)
		}
		if err := sleepUntil(ctx, a.cfg.Now, a.cfg.Now().Add(retry)); err != nil {
			return nil
		}
	}
}

// renew obtains a certificate for a freshly generated key and installs it.
func (a *Agent) renew(ctx context.Context, client certIssuer) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	// The CSR names nothing: the server certifies the SPIFFE ID of our
	// mTLS identity, and only that.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("create CSR: %w", err)
	}
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := client.IssueSigningCertificate(callCtx, &serverv1.IssueSigningCertificateRequest{Csr: csr})
	a.recordCall(err)
	if err != nil {
		a.metrics.renewals.WithLabelValues("failure").Inc()
		return fmt.Errorf("issue signing certificate: %w", err)
	}
	chain, err := a.checkChain(resp.GetCertificateChain(), key)
	if err != nil {
		a.metrics.renewals.WithLabelValues("failure").Inc()
		return fmt.Errorf("server answer: %w", err)
	}
	held := &signingCert{key: key, chain: chain, received: a.cfg.Now()}
	if fp, tainted := a.taintedIssuer(held); tainted {
		if c, ok := a.keys.current(a.cfg.Now()); ok {
			if _, alsoTainted := a.taintedIssuer(c); !alsoTainted {
				a.metrics.renewals.WithLabelValues("failure").Inc()
				return fmt.Errorf("server answer: issued by tainted CA %x; keeping the current certificate from an untainted one", fp)
			}
		}
	}
	a.keys.cur.Store(held)
	a.metrics.renewals.WithLabelValues("success").Inc()

	leaf := chain[0]
	serial := leaf.SerialNumber.Text(16)
	a.metrics.certExpiry.Set(float64(leaf.NotAfter.Unix()))
	a.metrics.certInfo.Reset()
	a.metrics.certInfo.WithLabelValues(serial, leaf.Issuer.String()).Set(1)
	a.mu.Lock()
	a.renewals++
	a.mu.Unlock()
	a.log.Info("Signing certificate renewed",
		zap.String(logSerial, serial),
		zap.String(logSPIFFEID, leaf.URIs[0].String()),
		zap.Time(logNotAfter, leaf.NotAfter),
		zap.String(logIssuer, leaf.Issuer.String()),
		zap.Time("renew_at", renewAt(held)))
	return nil
}

// checkChain parses the server's answer and checks that it certifies key
// for the agent's own SPIFFE ID, each certificate signed by the next.
func (a *Agent) checkChain(ders [][]byte, key *ecdsa.PrivateKey) ([]*x509.Certificate, error) {
	if len(ders) < 2 {
		return nil, errors.New("certificate chain has no CA certificate")
	}
	chain := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		chain[i] = c
	}
	leaf := chain[0]
	if now := a.cfg.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate is not valid now (%s to %s): check clocks", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("certificate is not for the key the agent sent")
	}
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		return nil, fmt.Errorf("certificate names %v, not the agent's %s", leaf.URIs, id)
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("certificate %d is not signed by certificate %d: %w", i, i+1, err)
		}
	}
	return chain, nil
}

// recordCall notes whether the server answered the last call. An
// Unavailable the server marked as its key manager's or store's fault is
// an answer: the server is reachable, and the error says what failed
// behind it.
func (a *Agent) recordCall(err error) {
	reachable := true
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		_, answered := serverfault.Dependency(err)
		reachable = answered
	}
	a.mu.Lock()
	a.reachable = reachable
	a.lastErr = ""
	if err != nil {
		a.lastErr = err.Error()
	}
	a.mu.Unlock()
	if reachable {
		a.metrics.serverReachable.Set(1)
	} else {
		a.metrics.serverReachable.Set(0)
	}
}

// noCertCause says why the agent holds no valid signing certificate, for
// the step it refuses: what its last renewal met, and whether the server
// answered it (then the fault is behind the server, e.g. its Vault).
func (a *Agent) noCertCause() string {
	a.mu.Lock()
	renewErr, reachable := a.renewErr, a.reachable
	a.mu.Unlock()
	if renewErr == "" {
		return "no renewal has finished yet (is hallmark-server reachable? see `hallmark status`)"
	}
	return serverFault(renewErr, reachable, "hallmark-server answered its last renewal, but could not certify: ", "its last renewal failed, is hallmark-server reachable? ")
}

// serverCause says, for a step whose wait ran out, what the agent's last
// call to the server met.
func (a *Agent) serverCause() string {
	a.mu.Lock()
	lastErr, reachable := a.lastErr, a.reachable
	a.mu.Unlock()
	if lastErr == "" {
		return "hallmark-server's log is slow (see `hallmark status`)"
	}
	return serverFault(lastErr, reachable, "hallmark-server answered the agent's last call with: ", "is hallmark-server reachable? the agent's last call failed: ")
}

// serverFault is msg, a call's error, after answered when the server
// answered it, else after failed, and where to look.
func serverFault(msg string, reachable bool, answered, failed string) string {
	if reachable {
		return answered + msg + " (see `hallmark status` and the server's log)"
	}
	return failed + msg + " (see `hallmark status`)"
}

// waitRenewal waits until t, until the renew loop is nudged (nudged is
// then true) or until ctx ends (then it returns ctx's error).
func (a *Agent) waitRenewal(ctx context.Context, t time.Time) (nudged bool, err error) {
	d := t.Sub(a.cfg.Now())
	if d <= 0 {
		return false, ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-timer.C:
		return false, nil
	case <-a.renewNudge:
		return true, nil
	}
}

// sleepUntil waits until t or until ctx ends (then it returns ctx's error).
func sleepUntil(ctx context.Context, now func() time.Time, t time.Time) error {
	d := t.Sub(now())
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

func idOf(leaf *x509.Certificate) spiffeid.ID {
	if len(leaf.URIs) != 1 {
		return spiffeid.ID{}
	}
	id, _ := spiffeid.FromURI(leaf.URIs[0])
	return id
}

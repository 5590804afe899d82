package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/measure"
	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/internal/policy"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// WorkloadAttestor identifies a local caller; plugins/workloadattestor/*
// implement it.
type WorkloadAttestor interface {
	Attest(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, error)
}

// NamedAttestor is a configured workload attestor.
type NamedAttestor struct {
	Name     string
	Attestor WorkloadAttestor
}

// Limits on one attestation request.
const (
	maxRequestBytes = 1 << 20 // a request is names, not content
	maxPaths        = 10000   // products plus materials named in a request
	maxPathLen      = 4096
)

// pauseBeforeSignEnv, when set to a duration, makes the agent wait between
// measuring and its last check of the caller. End-to-end tests use it to
// open the window in which a caller could exit or exec; never set it in
// production.
const pauseBeforeSignEnv = "HALLMARK_AGENT_TEST_PAUSE_BEFORE_SIGN"

// identityTTL is how long a connection's attested identity is reused.
// Reuse is sound because every signing first re-checks, with Verify, that
// the peer is still the very process (pidfd, start time, executable) that
// was attested; the TTL bounds how late a registration change is seen.
const identityTTL = 10 * time.Second

// localAPI implements agentv1.WorkloadServiceServer.
type localAPI struct {
	agentv1.UnimplementedWorkloadServiceServer
	a     *Agent
	pause time.Duration
	// auditLog records attestations and denials. The events name
	// themselves (logEvent), so they skip the source line, which costs a
	// stack walk per request.
	auditLog *zap.Logger

	mu         sync.Mutex // guards identities
	identities map[*peercred.Conn]cachedIdentity

	lastSerial atomic.Pointer[certSerial]
}

// certSerial is a signing certificate's serial number as logged.
type certSerial struct {
	held *signingCert
	text string
}

// serial is held's serial number in hex, for the audit log; it is
// formatted once per certificate.
func (api *localAPI) serial(held *signingCert) string {
	if s := api.lastSerial.Load(); s != nil && s.held == held {
		return s.text
	}
	s := &certSerial{held: held, text: held.leaf().SerialNumber.Text(16)}
	api.lastSerial.Store(s)
	return s.text
}

type cachedIdentity struct {
	id      policy.Identity
	expires time.Time
}

// serveLocal serves the local API on cfg.SocketPath until ctx ends.
func (a *Agent) serveLocal(ctx context.Context, ln *peercred.Listener) error {
	api := &localAPI{a: a, auditLog: a.log.WithOptions(zap.WithCaller(false))}
	if v := os.Getenv(pauseBeforeSignEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("agent: %s: %w", pauseBeforeSignEnv, err)
		}
		api.pause = d
		a.log.Warn("Test hook active: attestation pauses before the final caller check; never use in production",
			zap.Duration("pause", d))
	}
	srv := grpc.NewServer(
		grpc.Creds(peercred.Credentials()),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.UnaryInterceptor(api.logErrors),
		grpc.StreamInterceptor(api.logStreamErrors),
	)
	agentv1.RegisterWorkloadServiceServer(srv, api)
	healthpb.RegisterHealthServer(srv, &localHealth{a: a})
	a.log.Info("Serving the local API", zap.String(logSocket, a.cfg.SocketPath))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		srv.GracefulStop()
		return nil
	case err := <-errc:
		return fmt.Errorf("agent: local API: %w", err)
	}
}

// logErrors logs unexpected failures once, at the API edge. Denials are
// logged as audit events where they are decided.
func (api *localAPI) logErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	api.logFailure(info.FullMethod, err)
	return resp, err
}

// logStreamErrors is logErrors for streaming calls.
func (api *localAPI) logStreamErrors(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	api.logFailure(info.FullMethod, err)
	return err
}

func (api *localAPI) logFailure(method string, err error) {
	if err == nil {
		return
	}
	if st := status.Convert(err); st.Code() != codes.PermissionDenied && st.Code() != codes.InvalidArgument {
		api.a.log.Warn("Local API call failed", zap.String(logMethod, method),
			zap.String(logCode, st.Code().String()), zap.String(logError, st.Message()))
	}
}

// caller identifies the peer of ctx with every configured attestor.
func (api *localAPI) caller(ctx context.Context) (*peercred.Conn, workloadattestor.Caller, policy.Identity, error) {
	conn, ok := peercred.FromContext(ctx)
	if !ok {
		return nil, workloadattestor.Caller{}, policy.Identity{}, status.Error(codes.Unauthenticated, "caller not identified by the kernel")
	}
	p := conn.Peer()
	c := workloadattestor.Caller{PID: p.PID, UID: p.UID, GID: p.GID}
	now := api.a.cfg.Now()
	api.mu.Lock()
	cached, ok := api.identities[conn]
	api.mu.Unlock()
	if ok && now.Before(cached.expires) {
		return conn, c, cached.id, nil
	}
	var id policy.Identity
	for _, na := range api.a.cfg.Attestors {
		res, err := na.Attestor.Attest(ctx, c)
		if err != nil {
			return nil, c, id, status.Errorf(codes.Unavailable, "workload attestor %s: %v", na.Name, err)
		}
		id.SPIFFEIDs = append(id.SPIFFEIDs, res.SPIFFEIDs...)
		id.Selectors = append(id.Selectors, res.Selectors...)
	}
	slices.Sort(id.SPIFFEIDs)
	id.SPIFFEIDs = slices.Compact(id.SPIFFEIDs)
	api.mu.Lock()
	if api.identities == nil {
		api.identities = map[*peercred.Conn]cachedIdentity{}
	}
	for k, v := range api.identities { // drop those of closed connections
		if now.After(v.expires) {
			delete(api.identities, k)
		}
	}
	api.identities[conn] = cachedIdentity{id: id, expires: now.Add(identityTTL)}
	api.mu.Unlock()
	return conn, c, id, nil
}

// WhoAmI tells the caller how the agent sees it and what policy grants it.
func (api *localAPI) WhoAmI(ctx context.Context, _ *agentv1.WhoAmIRequest) (*agentv1.WhoAmIResponse, error) {
	_, c, id, err := api.caller(ctx)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.WhoAmIResponse{
		Workload:      &agentv1.Workload{Pid: c.PID, Uid: c.UID, Gid: c.GID, SpiffeIds: id.SPIFFEIDs, Selectors: id.Selectors},
		AgentSpiffeId: api.a.spiffeID(),
	}
	for _, r := range api.a.policy().Matching(id) {
		resp.Grants = append(resp.Grants, &agentv1.Grant{Rule: r.Name, Steps: r.Steps, WorkspaceRoots: r.WorkspaceRoots})
	}
	return resp, nil
}

// AttestStep is the agent's reason to exist; attestStep does the work.
func (api *localAPI) AttestStep(ctx context.Context, req *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	return api.attestStep(ctx, req, nil)
}

// AttestStepStream is AttestStep that reports progress while it measures
// (see progress.go). Whom it serves and what it refuses is decided by the
// very same attestStep.
func (api *localAPI) AttestStepStream(req *agentv1.AttestStepRequest, stream agentv1.WorkloadService_AttestStepStreamServer) error {
	return api.attestStepStream(req, stream)
}

// attestStep serves AttestStep and AttestStepStream. In order: identify
// the caller from the kernel, check the request, decide by policy, measure
// the products and materials itself (counting into progress, when not
// nil: nothing counts before policy has allowed the call), confirm the
// caller is still the process that connected, and sign with the current
// short-lived key.
func (api *localAPI) attestStep(ctx context.Context, req *agentv1.AttestStepRequest, progress *measure.Progress) (*agentv1.AttestStepResponse, error) {
	a := api.a
	start := a.cfg.Now()
	conn, c, id, err := api.caller(ctx)
	if err != nil {
		a.metrics.attestations.WithLabelValues(resultError).Inc()
		return nil, err
	}
	// Room for every field of the audit event, so that it is built once.
	audit := make([]zap.Field, 0, 14)
	audit = append(audit,
		zap.Int32(logPID, c.PID), zap.Uint32(logUID, c.UID), zap.Uint32(logGID, c.GID),
		zap.Strings(logSPIFFEIDs, id.SPIFFEIDs), zap.Strings(logSelectors, id.Selectors),
		zap.String(logStep, req.GetStep()), zap.String(logWorkspace, req.GetWorkspace()),
	)
	deny := func(code codes.Code, class, reason string) error {
		a.metrics.attestations.WithLabelValues(resultDenied).Inc()
		a.metrics.denials.WithLabelValues(class).Inc()
		api.auditLog.Warn("Attestation denied", append(audit, zap.String(logEvent, "attestation_denied"), zap.String(logReason, reason))...)
		return status.Error(code, reason)
	}

	root, err := openRequest(req)
	if err != nil {
		return nil, deny(codes.InvalidArgument, denyRequest, err.Error())
	}
	defer root.Close()
	workspace := root.Path()
	rule, err := a.policy().Decide(id, req.GetStep(), workspace)
	if err != nil {
		return nil, deny(codes.PermissionDenied, denyPolicy, err.Error())
	}
	audit = append(audit, zap.String(logRule, rule.Name))

	// Beneath the directory that policy just allowed, whatever happens to
	// its path meanwhile.
	products, err := root.HashWithProgress(ctx, req.GetProducts(), a.cfg.Limits, progress)
	if err != nil {
		return nil, deny(measureCode(err), measureClass(err), "products: "+err.Error())
	}
	var materials []measure.Digest
	if len(req.GetMaterials()) > 0 {
		if materials, err = root.HashWithProgress(ctx, req.GetMaterials(), a.cfg.Limits, progress); err != nil {
			return nil, deny(measureCode(err), measureClass(err), "materials: "+err.Error())
		}
	}
	if len(products)+len(materials) > a.cfg.Limits.MaxFiles && a.cfg.Limits.MaxFiles > 0 {
		return nil, deny(codes.InvalidArgument, denyLimits, fmt.Sprintf("%d files measured, more than the %d allowed", len(products)+len(materials), a.cfg.Limits.MaxFiles))
	}
	if len(products) == 0 {
		return nil, deny(codes.InvalidArgument, denyRequest, "the products name no files")
	}
	// Git work trees, read by the agent itself (agent/gitsource.go).
	sources, err := gitSources(root, append(slices.Clone(req.GetProducts()), req.GetMaterials()...), a.cfg.Limits, append(slices.Clone(products), materials...))
	if err != nil {
		return nil, deny(codes.InvalidArgument, denyRequest, "git source: "+err.Error())
	}
	cmdline, err := conn.Cmdline()
	if err != nil {
		return nil, deny(codes.PermissionDenied, denyCallerChanged, "caller's command line: "+err.Error())
	}
	for i, arg := range cmdline {
		// Recorded as seen; bytes that are not UTF-8 cannot travel in JSON.
		cmdline[i] = strings.ToValidUTF8(arg, "\uFFFD")
	}

	if api.pause > 0 {
		select {
		case <-time.After(api.pause):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	// The identity, measurements and command line above belong to the
	// process that connected only if it is still that process.
	if err := conn.Verify(); err != nil {
		return nil, deny(codes.PermissionDenied, denyCallerChanged, "caller changed since it connected: "+err.Error())
	}

	held, ok := a.keys.current(a.cfg.Now())
	if !ok {
		a.metrics.attestations.WithLabelValues(resultError).Inc()
		return nil, status.Error(codes.Unavailable, "the agent holds no valid signing certificate yet (is hallmark-server reachable? see `hallmark status`)")
	}
	step := attest.Step{
		Name:          req.GetStep(),
		Workspace:     workspace,
		Command:       req.GetCommand(),
		CallerCmdline: cmdline,
		Products:      artifacts(products),
		Materials:     artifacts(materials),
		Sources:       sources,
		CallerClaims:  req.GetCallerClaims(),
		Workload:      attest.Workload{SPIFFEIDs: id.SPIFFEIDs, Selectors: id.Selectors, PID: c.PID, UID: c.UID, GID: c.GID},
		BuilderID:     a.spiffeID(),
		InvocationID:  newInvocationID(),
		StartedOn:     start,
		FinishedOn:    a.cfg.Now(),
	}
	if ts := req.GetStartedOn(); ts != nil && ts.IsValid() && ts.AsTime().Before(start) {
		step.StartedOn = ts.AsTime()
	}
	bundle, err := a.signStep(ctx, step, held)
	var refusal *signRefusal
	if errors.As(err, &refusal) { // the log would never take it (sign.go)
		return nil, deny(refusal.code, refusal.class, refusal.reason)
	}
	if err != nil {
		a.metrics.attestations.WithLabelValues(resultError).Inc()
		return nil, err
	}
	// On disk before the step hears of it: nothing signed is ever lost on
	// its way to the log (group commit shares the fsync among callers).
	if a.outbox != nil {
		if err := a.outbox.Put(outbox.Item{ID: step.InvocationID, Bundle: bundle, Certificate: held.leaf().Raw}); err != nil {
			a.metrics.attestations.WithLabelValues(resultError).Inc()
			return nil, status.Errorf(codes.Unavailable, "queue the attestation for the log: %v", err)
		}
		a.nudgeSubmitter()
		a.metrics.outboxQueued.Set(float64(a.outbox.Len()))
	}
	a.metrics.attestations.WithLabelValues(resultAttested).Inc()
	a.metrics.attestedSteps.WithLabelValues(step.Name).Inc() // names policy granted: bounded
	a.metrics.attestSeconds.Observe(a.cfg.Now().Sub(start).Seconds())
	api.auditLog.Info("Step attested", append(audit,
		zap.String(logEvent, "step_attested"),
		zap.String(logInvocationID, step.InvocationID),
		zap.Int("products", len(products)), zap.Int("materials", len(materials)),
		zap.String(logSerial, api.serial(held)))...)
	resp := &agentv1.AttestStepResponse{Bundle: bundle, InvocationId: step.InvocationID}
	for _, p := range products {
		resp.Subjects = append(resp.Subjects, &agentv1.Subject{Name: p.Name, Sha256: p.SHA256})
	}
	return resp, nil
}

// openRequest validates the request and opens its workspace. The root's
// Path, the workspace with symlinks resolved, is what policy sees, and
// measuring happens beneath the very directory it names. The caller closes
// the root.
func openRequest(req *agentv1.AttestStepRequest) (*measure.Root, error) {
	if !policy.ValidStepName(req.GetStep()) {
		return nil, fmt.Errorf("step %q: use 1-128 letters, digits, '.', '_' and '-'", req.GetStep())
	}
	if len(req.GetProducts()) == 0 {
		return nil, errors.New("no products: name the files or directories the step produced")
	}
	if n := len(req.GetProducts()) + len(req.GetMaterials()); n > maxPaths {
		return nil, fmt.Errorf("%d paths named, more than the %d allowed", n, maxPaths)
	}
	ws := req.GetWorkspace()
	for _, paths := range [][]string{req.GetProducts(), req.GetMaterials(), {ws}} {
		for _, p := range paths {
			if len(p) > maxPathLen || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
				return nil, fmt.Errorf("path %.64q: too long, not UTF-8 or contains NUL", p)
			}
		}
	}
	if !filepath.IsAbs(ws) {
		return nil, fmt.Errorf("workspace %q must be an absolute path", ws)
	}
	if err := attest.CheckCallerClaims(req.GetCallerClaims()); err != nil {
		return nil, err
	}
	root, err := measure.OpenRoot(ws)
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	return root, nil
}

// Denial classes, the reason label of hallmark_agent_attestation_denials_total.
const (
	denyRequest       = "invalid_request"
	denyPolicy        = "policy"
	denyEscape        = "path_escape"
	denyLimits        = "limits"
	denyCallerChanged = "caller_changed"
)

func measureClass(err error) string {
	switch {
	case errors.Is(err, measure.ErrEscapes):
		return denyEscape
	case errors.Is(err, measure.ErrTooManyFiles), errors.Is(err, measure.ErrTooLarge):
		return denyLimits
	default:
		return denyRequest
	}
}

func measureCode(err error) codes.Code {
	switch {
	case errors.Is(err, measure.ErrEscapes):
		return codes.PermissionDenied
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return codes.Canceled
	default:
		return codes.InvalidArgument
	}
}

func artifacts(ds []measure.Digest) []attest.Artifact {
	out := make([]attest.Artifact, len(ds))
	for i, d := range ds {
		out[i] = attest.Artifact{Name: d.Name, SHA256: d.SHA256}
	}
	return out
}

func newInvocationID() string {
	var b [16]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// spiffeID is the agent's current SPIFFE ID (the builder).
func (a *Agent) spiffeID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.id.IsZero() {
		return ""
	}
	return a.id.String()
}

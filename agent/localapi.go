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
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/agent/measure"
	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	"github.com/hallmark-dev/hallmark/internal/policy"
	"github.com/hallmark-dev/hallmark/internal/uidlimit"
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
	maxCommandArgs  = 65536 // the command as the step ran it, recorded
	maxHeaderBytes  = 16 << 10
	// maxHeldRequestBytesPerUID bounds the requests one uid has waiting
	// or under way, in bytes: an attestation waits for its uid's slot
	// until its deadline, which a caller may leave unset, and 1,000 of
	// them at 1 MiB held the agent at 1.6 GiB (an attacker review).
	// hallmark-attest's requests are a few hundred bytes.
	maxHeldRequestBytesPerUID = 16 << 20
	// handshakeTimeout bounds how long a connection may take to greet.
	handshakeTimeout = 10 * time.Second
)

// pauseBeforeSignEnv, when set to a duration, makes the agent wait between
// measuring and its last check of the caller. End-to-end tests use it to
// open the window in which a caller could exit or exec; never set it in
// production.
const pauseBeforeSignEnv = "HALLMARK_AGENT_TEST_PAUSE_BEFORE_SIGN"

// localAPI implements agentv1.WorkloadServiceServer.
type localAPI struct {
	agentv1.UnimplementedWorkloadServiceServer
	a     *Agent
	pause time.Duration
	// auditLog records attestations and denials. The events name
	// themselves (logEvent), so they skip the source line, which costs a
	// stack walk per request.
	auditLog *zap.Logger
	// attests and idents bound, per uid and in all, the attestations and
	// the identifications (workload attestor calls) under way.
	attests, idents *uidlimit.Limit
	// held bounds the bytes of requests each uid has waiting or under way.
	held *uidlimit.Budget

	mu      sync.Mutex // guards watched
	watched map[*peercred.Conn]*watchedIDs

	lastSerial atomic.Pointer[certSerial]

	// stopping is closed when the agent begins to stop: --wait-log
	// waits end then, rather than hold the stop for their own timeouts.
	stopping chan struct{}
}

// localStopGrace bounds how long the local API's graceful stop waits for
// calls under way (an attestation hashing its products) before it closes
// their connections.
const localStopGrace = 10 * time.Second

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

// serveLocal serves the local API on ln until ctx ends.
func (a *Agent) serveLocal(ctx context.Context, ln *peercred.Listener) error {
	lim := a.cfg.LocalLimits.withDefaults()
	api := &localAPI{
		a: a, auditLog: a.log.WithOptions(zap.WithCaller(false)),
		attests:  uidlimit.New(lim.AttestationsPerUID, 0),
		held:     uidlimit.NewBudget(maxHeldRequestBytesPerUID),
		idents:   uidlimit.New(lim.IdentificationsPerUID, lim.Identifications),
		stopping: make(chan struct{}),
	}
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
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.MaxConcurrentStreams(uint32(lim.StreamsPerConnection)),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: lim.IdleTimeout}),
		grpc.UnaryInterceptor(api.unaryEdge),
		grpc.StreamInterceptor(api.streamEdge),
	)
	agentv1.RegisterWorkloadServiceServer(srv, api)
	healthpb.RegisterHealthServer(srv, &localHealth{a: a})
	a.log.Info("Serving the local API", zap.String(logSocket, a.cfg.SocketPath))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		close(api.stopping)
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(localStopGrace):
			a.log.Warn("Calls to the local API still under way at the stop were cut off", zap.Duration("grace", localStopGrace))
			srv.Stop()
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("agent: local API: %w", err)
	}
}

// unaryEdge is the API's edge for unary calls: each call's request is
// held against its uid's budget of request bytes (maxHeldRequestBytesPerUID)
// until the call ends, and unexpected failures are logged once. Denials
// are logged as audit events where they are decided.
func (api *localAPI) unaryEdge(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	release, err := api.hold(ctx, req)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := handler(ctx, req)
	api.logFailure(info.FullMethod, err)
	return resp, err
}

// streamEdge is unaryEdge for streaming calls; their requests are held
// from when they are read.
func (api *localAPI) streamEdge(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	hs := &heldStream{ServerStream: ss, api: api}
	defer hs.release()
	err := handler(srv, hs)
	api.logFailure(info.FullMethod, err)
	return err
}

// hold takes req's size from its caller's budget of request bytes, or
// refuses the call (ResourceExhausted) when the caller's uid already holds
// its budget's worth.
func (api *localAPI) hold(ctx context.Context, req any) (func(), error) {
	m, ok := req.(proto.Message)
	c, r := kernelCaller(ctx)
	if !ok || r != nil {
		return func() {}, nil // the handler refuses an unidentified caller
	}
	release, used, ok := api.held.Take(c.peer.UID, heldSize(m))
	if !ok {
		api.a.metrics.denials.WithLabelValues(denyLimits).Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "hallmark-agent: uid %d has %d KiB of requests waiting or under way, the most one uid may hold is %d MiB; "+
			"nothing was done: send it again once its other calls end", c.peer.UID, used>>10, maxHeldRequestBytesPerUID>>20)
	}
	return release, nil
}

// heldSize is about what m holds in memory once decoded: its wire size,
// and for an attestation request the string headers of its lists and the
// entries of its claims, which are far larger than on the wire (an empty
// string is 2 bytes there and 16 here).
func heldSize(m proto.Message) int64 {
	n := int64(proto.Size(m))
	if r, ok := m.(*agentv1.AttestStepRequest); ok {
		n += 16*int64(len(r.GetProducts())+len(r.GetMaterials())+len(r.GetCommand())) + 64*int64(len(r.GetCallerClaims()))
	}
	return n
}

// heldStream holds what a streaming call's handler reads, as unaryEdge
// holds a unary call's request.
type heldStream struct {
	grpc.ServerStream
	api      *localAPI
	releases []func()
}

func (s *heldStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	release, err := s.api.hold(s.Context(), m)
	if err != nil {
		return err
	}
	s.releases = append(s.releases, release)
	return nil
}

func (s *heldStream) release() {
	for _, r := range s.releases {
		r()
	}
}

func (api *localAPI) logFailure(method string, err error) {
	if err == nil {
		return
	}
	switch st := status.Convert(err); st.Code() {
	case codes.PermissionDenied, codes.InvalidArgument, codes.Canceled, codes.ResourceExhausted:
	default:
		api.a.log.Warn("Local API call failed", zap.String(logMethod, method),
			zap.String(logCode, st.Code().String()), zap.String(logError, st.Message()))
	}
}

// refusal is why a stage of the gate stopped a request: the status code
// the caller gets, the denial class of the metric, and the reason, which
// is all the caller is told.
type refusal struct {
	code   codes.Code
	class  string
	reason string
}

func refuse(code codes.Code, class, reason string) *refusal {
	return &refusal{code: code, class: class, reason: reason}
}

// caller is who sent a request, as the gate learns it stage by stage.
type caller struct {
	conn *peercred.Conn
	peer peercred.Info
	id   policy.Identity
}

// kernelCaller is the first thing the gate knows of a request: the
// connection the kernel vouches for.
func kernelCaller(ctx context.Context) (*caller, *refusal) {
	conn, ok := peercred.FromContext(ctx)
	if !ok {
		return nil, refuse(codes.Unauthenticated, denyRequest, "caller not identified by the kernel")
	}
	return &caller{conn: conn, peer: conn.Peer()}, nil
}

// watchingAttestor is a WorkloadAttestor that can vouch for its answer
// over time (the spire attestor: SPIRE's own subscription): changed closes
// as soon as the answer may no longer hold, and the watch ends with ctx.
type watchingAttestor interface {
	AttestWatch(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, <-chan struct{}, error)
}

// watchedIDs are the watching attestors' answers about one connection's
// caller, each good until its changed closes; they end with the
// connection.
type watchedIDs struct {
	ctx     context.Context // ends when the connection closes
	mu      sync.Mutex
	answers map[string]watchedAnswer
}

type watchedAnswer struct {
	res     workloadattestor.Result
	changed <-chan struct{}
}

// watchedFor returns the answers kept for conn, made on first use.
func (api *localAPI) watchedFor(conn *peercred.Conn) *watchedIDs {
	api.mu.Lock()
	defer api.mu.Unlock()
	if w := api.watched[conn]; w != nil {
		return w
	}
	if api.watched == nil {
		api.watched = map[*peercred.Conn]*watchedIDs{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchedIDs{ctx: ctx, answers: map[string]watchedAnswer{}}
	api.watched[conn] = w
	go func() {
		<-conn.Done()
		cancel() // ends the watches
		api.mu.Lock()
		delete(api.watched, conn)
		api.mu.Unlock()
	}()
	return w
}

// answer is what attestor na says of the caller: a watching attestor's
// kept answer while it holds, else a fresh one.
func (api *localAPI) answer(ctx context.Context, c *caller, na NamedAttestor, wc workloadattestor.Caller) (workloadattestor.Result, error) {
	wa, ok := na.Attestor.(watchingAttestor)
	if !ok {
		return na.Attestor.Attest(ctx, wc)
	}
	w := api.watchedFor(c.conn)
	w.mu.Lock()
	defer w.mu.Unlock()
	if a, ok := w.answers[na.Name]; ok {
		select {
		case <-a.changed:
		default:
			return a.res, nil
		}
	}
	// The watch lives with the connection, not with this call; its first
	// answer is still bounded by the attestor's own timeout.
	res, changed, err := wa.AttestWatch(w.ctx, wc)
	if err != nil {
		delete(w.answers, na.Name)
		return res, err
	}
	w.answers[na.Name] = watchedAnswer{res: res, changed: changed}
	return res, nil
}

// identify asks every workload attestor who the caller is, at most a few
// at a time per uid. No identity outlives a check that would now fail:
// attestors answer anew on every call, except that a watching attestor's
// answer is kept for the connection while the attestor vouches for it
// (SPIRE has sent nothing since: no entry for the caller changed); the
// caller's program image cannot change meanwhile (the gate refuses a
// connection whose peer exec'd), nor its uid and groups (set at connect).
// A caller already known to have exec'd is refused without asking.
func (api *localAPI) identify(ctx context.Context, c *caller) *refusal {
	if err := c.conn.Execed(); err != nil {
		// Known already, without a system call; Verify says precisely why
		// (gone, if the exec was of a process that took over the pid).
		if verr := c.conn.Verify(); verr != nil {
			err = verr
		}
		return refuse(codes.PermissionDenied, denyCallerChanged, "caller changed since it connected: "+err.Error())
	}
	release, err := api.idents.Acquire(ctx, c.peer.UID)
	if err != nil {
		return refuse(status.Code(status.FromContextError(err).Err()), denyLimits, "waiting to be identified: "+err.Error())
	}
	defer release()
	wc := workloadattestor.NewCaller(c.peer.PID, c.peer.UID, c.peer.GID, c.peer.Groups)
	for _, na := range api.a.cfg.Attestors {
		res, err := api.answer(ctx, c, na, wc)
		if err != nil && ctx.Err() != nil {
			// The caller went away (hallmark-attest closes an early
			// identification's connection when its command fails fast):
			// not the attestor's failure.
			return refuse(status.Code(status.FromContextError(ctx.Err()).Err()), "", "identifying the caller: "+ctx.Err().Error())
		}
		if err != nil {
			return refuse(codes.Unavailable, "", fmt.Sprintf("workload attestor %s: %v", na.Name, err))
		}
		c.id.SPIFFEIDs = append(c.id.SPIFFEIDs, res.SPIFFEIDs...)
		c.id.Selectors = append(c.id.Selectors, res.Selectors...)
	}
	slices.Sort(c.id.SPIFFEIDs)
	c.id.SPIFFEIDs = slices.Compact(c.id.SPIFFEIDs)
	return nil
}

// WhoAmI tells the caller how the agent sees it and what policy grants it.
func (api *localAPI) WhoAmI(ctx context.Context, _ *agentv1.WhoAmIRequest) (*agentv1.WhoAmIResponse, error) {
	c, r := kernelCaller(ctx)
	if r == nil {
		r = api.identify(ctx, c)
	}
	if r != nil {
		return nil, status.Error(r.code, r.reason)
	}
	p := c.peer
	resp := &agentv1.WhoAmIResponse{
		Workload:      &agentv1.Workload{Pid: p.PID, Uid: p.UID, Gid: p.GID, SpiffeIds: c.id.SPIFFEIDs, Selectors: c.id.Selectors},
		AgentSpiffeId: api.a.spiffeID(),
	}
	for _, r := range api.a.policy().Matching(c.id) {
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

// attestStep is the local API's gate, one ordered pipeline in which each
// stage is a small function with one reason to refuse:
//
//  1. request: the request is well formed (names only; nothing is opened);
//  2. limits: the caller's uid is within its attestations under way (its
//     connections, streams and held request bytes were bounded before the
//     call began);
//  3. identify: who the caller is, from the kernel and the workload
//     attestors (a few identifications at a time per uid);
//  4. decide: policy allows this identity this step in this workspace, as
//     the caller names it; until here nothing touched the file system, so
//     a caller policy refuses learns nothing about files;
//  5. measure: the products and materials, in the caller's own root and
//     mount namespace and with the caller's own rights (counting into
//     progress, when not nil);
//  6. confirm: the caller is still the process, running the program image,
//     that connected and sent every byte of the request; a measurement
//     error reaches the caller only once this holds;
//  7. sign: with the current short-lived key, then queue for the log.
func (api *localAPI) attestStep(ctx context.Context, req *agentv1.AttestStepRequest, progress *measure.Progress) (*agentv1.AttestStepResponse, error) {
	start := api.a.cfg.Now()
	c, r := kernelCaller(ctx)
	if r != nil {
		api.a.metrics.attestations.WithLabelValues(resultError).Inc()
		return nil, status.Error(r.code, r.reason)
	}
	au := api.newAudit(c, req)

	// The request is checked before it may wait for its uid's slot: a
	// request out of bounds (a million empty paths in 1 MiB, eight times
	// that decoded) is not held in memory meanwhile (a second review).
	if r := checkRequest(req); r != nil {
		return nil, au.deny(r)
	}
	release, r := api.limit(ctx, c)
	if r != nil {
		return nil, au.deny(r)
	}
	defer release()
	if r := api.identify(ctx, c); r != nil {
		return nil, au.deny(r)
	}
	au.identified(c)
	rule, r := api.decide(c, req)
	if r != nil {
		return nil, au.deny(r)
	}
	au.allowed(rule, req.GetStep())
	products, materials, sources, r := api.measure(ctx, c, req, progress)
	if r != nil {
		if cr := api.confirm(ctx, c, nil); cr != nil {
			return nil, au.deny(cr) // the measurement's detail is for the caller that asked
		}
		return nil, au.deny(r)
	}
	var cmdline []string
	if r := api.confirm(ctx, c, &cmdline); r != nil {
		return nil, au.deny(r)
	}
	return api.sign(ctx, c, req, products, materials, sources, cmdline, start, au)
}

// audit is one request's audit event, built up as the gate learns more.
type audit struct {
	api    *localAPI
	fields []zap.Field
	// stepLabel is the step's label in hallmark_agent_attested_steps_total
	// once policy allowed it: its name when the rule names it, "*" when
	// the rule grants every step (any name a caller makes up would
	// otherwise be a series of its own, for good).
	stepLabel string
}

func (api *localAPI) newAudit(c *caller, req *agentv1.AttestStepRequest) *audit {
	// Room for every field of the event, so that it is built once.
	fields := make([]zap.Field, 0, 14)
	fields = append(fields,
		zap.Int32(logPID, c.peer.PID), zap.Uint32(logUID, c.peer.UID), zap.Uint32(logGID, c.peer.GID),
		zap.String(logStep, req.GetStep()), zap.String(logWorkspace, req.GetWorkspace()),
	)
	return &audit{api: api, fields: fields}
}

func (au *audit) identified(c *caller) {
	au.fields = append(au.fields, zap.Strings(logSPIFFEIDs, c.id.SPIFFEIDs), zap.Strings(logSelectors, c.id.Selectors))
}

func (au *audit) allowed(rule policy.Rule, step string) {
	au.fields = append(au.fields, zap.String(logRule, rule.Name))
	au.stepLabel = "*"
	if slices.Contains(rule.Steps, step) {
		au.stepLabel = step
	}
}

// deny counts and logs a refusal and returns it as the caller's status. A
// refusal without a class is no denial: the agent could not answer.
func (au *audit) deny(r *refusal) error {
	m := au.api.a.metrics
	if r.class == "" {
		m.attestations.WithLabelValues(resultError).Inc()
		return status.Error(r.code, r.reason)
	}
	m.attestations.WithLabelValues(resultDenied).Inc()
	m.denials.WithLabelValues(r.class).Inc()
	au.api.auditLog.Warn("Attestation denied", append(au.fields, zap.String(logEvent, "attestation_denied"), zap.String(logReason, r.reason))...)
	return status.Error(r.code, r.reason)
}

// limit waits for one of the caller's uid's attestation slots.
func (api *localAPI) limit(ctx context.Context, c *caller) (func(), *refusal) {
	release, err := api.attests.Acquire(ctx, c.peer.UID)
	if err != nil {
		return nil, refuse(status.Code(status.FromContextError(err).Err()), denyLimits, "waiting for the caller's other attestations: "+err.Error())
	}
	return release, nil
}

// decide asks policy whether the caller may attest the step in the
// workspace, as the caller names it.
func (api *localAPI) decide(c *caller, req *agentv1.AttestStepRequest) (policy.Rule, *refusal) {
	rule, err := api.a.policy().Decide(c.id, req.GetStep(), req.GetWorkspace())
	if err != nil {
		return policy.Rule{}, refuse(codes.PermissionDenied, denyPolicy, err.Error())
	}
	return rule, nil
}

// sign signs the step with the current short-lived key and queues the
// bundle for the log.
func (api *localAPI) sign(ctx context.Context, c *caller, req *agentv1.AttestStepRequest, products, materials []measure.Digest, sources []attest.GitSource, cmdline []string, start time.Time, au *audit) (*agentv1.AttestStepResponse, error) {
	a := api.a
	held, ok := a.keys.current(a.cfg.Now())
	if !ok {
		a.metrics.attestations.WithLabelValues(resultError).Inc()
		return nil, status.Error(codes.Unavailable, "the agent holds no valid signing certificate: "+a.noCertCause())
	}
	if a.outbox != nil {
		if n, max := a.outbox.PendingBytes(), a.cfg.OutboxMaxPendingBytes; n > max {
			// Bounded, so that a long outage ends in refusals a step sees,
			// not in an agent out of memory, again at every restart.
			a.metrics.attestations.WithLabelValues(resultError).Inc()
			return nil, status.Errorf(codes.Unavailable, "attestation refused: %d MiB of attestations wait for the log (agent.outbox_max_pending_bytes: %d MiB); "+
				"nothing was signed: is hallmark-server's log reachable? see `hallmark status`", n>>20, max>>20)
		}
	}
	p := c.peer
	step := attest.Step{
		Name:          req.GetStep(),
		Workspace:     req.GetWorkspace(),
		Command:       req.GetCommand(),
		CallerCmdline: cmdline,
		Products:      artifacts(products),
		Materials:     artifacts(materials),
		Sources:       sources,
		CallerClaims:  req.GetCallerClaims(),
		Workload:      attest.Workload{SPIFFEIDs: c.id.SPIFFEIDs, Selectors: c.id.Selectors, PID: p.PID, UID: p.UID, GID: p.GID},
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
		return nil, au.deny(refuse(refusal.code, refusal.class, refusal.reason))
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
	a.metrics.attestedSteps.WithLabelValues(au.stepLabel).Inc() // names policy lists, or "*": bounded
	a.metrics.attestSeconds.Observe(a.cfg.Now().Sub(start).Seconds())
	api.auditLog.Info("Step attested", append(au.fields,
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

// checkRequest refuses a malformed request by its names alone.
func checkRequest(req *agentv1.AttestStepRequest) *refusal {
	bad := func(format string, args ...any) *refusal {
		return refuse(codes.InvalidArgument, denyRequest, fmt.Sprintf(format, args...))
	}
	if !policy.ValidStepName(req.GetStep()) {
		return bad("step %q: use 1-128 letters, digits, '.', '_' and '-'", req.GetStep())
	}
	if len(req.GetProducts()) == 0 {
		return bad("no products: name the files or directories the step produced")
	}
	if n := len(req.GetProducts()) + len(req.GetMaterials()); n > maxPaths {
		return bad("%d paths named, more than the %d allowed", n, maxPaths)
	}
	if n := len(req.GetCommand()); n > maxCommandArgs {
		return bad("a command of %d arguments, more than the %d allowed", n, maxCommandArgs)
	}
	ws := req.GetWorkspace()
	for _, paths := range [][]string{req.GetProducts(), req.GetMaterials(), {ws}} {
		for _, p := range paths {
			if len(p) > maxPathLen || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
				return bad("path %.64q: too long, not UTF-8 or contains NUL", p)
			}
		}
	}
	if !filepath.IsAbs(ws) || filepath.Clean(ws) != ws {
		return bad("workspace %q must be an absolute, clean path (the CLI sends the real path of its directory)", ws)
	}
	if err := attest.CheckCallerClaims(req.GetCallerClaims()); err != nil {
		return bad("%v", err)
	}
	return nil
}

// measure hashes the request's products and materials in the caller's
// root, reached through the caller's pidfd, with the caller's uid, groups
// and capabilities, and reads the step's git work trees the same way
// (agent/gitsource.go).
func (api *localAPI) measure(ctx context.Context, c *caller, req *agentv1.AttestStepRequest, progress *measure.Progress) (products, materials []measure.Digest, sources []attest.GitSource, r *refusal) {
	root, err := c.conn.OpenRoot()
	if err != nil {
		return nil, nil, nil, refuse(codes.PermissionDenied, denyCallerChanged, "caller's root directory: "+err.Error())
	}
	defer unix.Close(root)
	mc := measure.Caller{Root: root, UID: c.peer.UID, GID: c.peer.GID, Groups: c.peer.Groups}
	if c.peer.UID == 0 {
		// Others' capabilities go with their non-zero fsuid anyway.
		if mc.Caps, err = c.conn.Capabilities(); err != nil {
			return nil, nil, nil, refuse(codes.PermissionDenied, denyCallerChanged, "caller's capabilities: "+err.Error())
		}
	}
	git := &gitWorkTrees{paths: append(slices.Clone(req.GetProducts()), req.GetMaterials()...), lim: api.a.cfg.Limits}
	products, materials, err = measure.MeasureAndRead(ctx, mc, req.GetWorkspace(), req.GetProducts(), req.GetMaterials(), api.a.cfg.Limits, progress, git.read)
	if err != nil {
		return nil, nil, nil, refuse(measureCode(err), measureClass(err), err.Error())
	}
	api.a.metrics.measuredFiles.Add(float64(len(products) + len(materials)))
	if len(products) == 0 {
		return nil, nil, nil, refuse(codes.InvalidArgument, denyRequest, "the products name no files")
	}
	return products, materials, git.sources(append(slices.Clone(products), materials...)), nil
}

// confirm is the gate's last check: it reads the caller's command
// line into cmdline (when not nil) and, after the test hook's pause,
// confirms that the caller is the very process, running the very program
// image, that connected: every measurement and the command line belong to
// it only if so.
func (api *localAPI) confirm(ctx context.Context, c *caller, cmdline *[]string) *refusal {
	if cmdline != nil {
		args, err := c.conn.Cmdline()
		if err != nil {
			return refuse(codes.PermissionDenied, denyCallerChanged, "caller's command line: "+err.Error())
		}
		for i, arg := range args {
			// Recorded as seen; bytes that are not UTF-8 cannot travel in JSON.
			args[i] = strings.ToValidUTF8(arg, "\uFFFD")
		}
		*cmdline = args
	}
	if api.pause > 0 {
		select {
		case <-time.After(api.pause):
		case <-ctx.Done():
			return refuse(codes.Canceled, "", ctx.Err().Error())
		}
	}
	if err := c.conn.Verify(); err != nil {
		return refuse(codes.PermissionDenied, denyCallerChanged, "caller changed since it connected: "+err.Error())
	}
	return nil
}

// Denial classes, the reason label of hallmark_agent_attestation_denials_total.
const (
	denyRequest       = "invalid_request"
	denyPolicy        = "policy"
	denyEscape        = "path_escape"
	denyLimits        = "limits"
	denyCallerChanged = "caller_changed"
	denyAccess        = "no_access"
)

func measureClass(err error) string {
	switch {
	case errors.Is(err, measure.ErrEscapes):
		return denyEscape
	case errors.Is(err, measure.ErrNoAccess):
		return denyAccess
	case errors.Is(err, measure.ErrTooManyFiles), errors.Is(err, measure.ErrTooLarge):
		return denyLimits
	default:
		return denyRequest
	}
}

func measureCode(err error) codes.Code {
	switch {
	case errors.Is(err, measure.ErrEscapes), errors.Is(err, measure.ErrNoAccess):
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

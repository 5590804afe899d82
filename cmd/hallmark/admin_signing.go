package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// serverAdminSocketEnv overrides the default of --server-admin-socket.
const serverAdminSocketEnv = "HALLMARK_SERVER_ADMIN_SOCKET"

// defaultServerAdminSocket is where the packaged server.admin_socket points.
const defaultServerAdminSocket = "/run/hallmark-server/admin.sock"

const serverAdminSocketUsage = "hallmark-server's admin socket (server.admin_socket; env " + serverAdminSocketEnv + ")"

func serverAdminSocketDefault() string {
	if s := os.Getenv(serverAdminSocketEnv); s != "" {
		return s
	}
	return defaultServerAdminSocket
}

// Issuer states, as AdminService reports them.
const (
	issuerPrepared = "prepared" // published in the trusted root, signs nothing yet
	issuerActive   = "active"   // new signing certificates come from it
	issuerOld      = "old"      // was active, neither tainted nor revoked
	issuerTainted  = "tainted"  // agents told to renew; refused for new log entries
	issuerRevoked  = "revoked"  // trusted only until its revocation time
)

// signingStep is one step of `hallmark admin rotate signing`.
type signingStep struct {
	use, short, long string
	done             string // "prepared", ... for the first output line
	idDefault        string // what an empty --id means; "" when the step takes none
	takesAt          bool   // --at
	run              func(ctx context.Context, c serverv1.AdminServiceClient, id string, at *timestamppb.Timestamp) (*serverv1.IssuerStatus, error)
}

var signingSteps = []signingStep{
	{
		use: "prepare", done: "prepared",
		short: "Create a new signing CA in the key manager and publish it in the trusted root; it signs nothing yet",
		long: `Create a new signing CA (issuer) in hallmark-server's key manager. It signs
nothing until activated, but the trusted root that GET /trust/trusted_root.json
and trust export publish lists it at once, so that verifiers hold it before
any attestation is signed under it.`,
		run: func(ctx context.Context, c serverv1.AdminServiceClient, _ string, _ *timestamppb.Timestamp) (*serverv1.IssuerStatus, error) {
			return c.PrepareIssuer(ctx, &serverv1.PrepareIssuerRequest{})
		},
	},
	{
		use: "activate", done: "activated", idDefault: "the prepared one",
		short: "Make the prepared signing CA the one new signing certificates come from",
		long: `Make the prepared issuer the active one: every signing certificate
hallmark-server issues to agents from now on comes from it. The previously
active issuer becomes old; certificates it issued stay valid and agents
replace them at their next renewal (or at once, after taint). Run it once
every verifier has refreshed its trusted root since prepare.`,
		run: func(ctx context.Context, c serverv1.AdminServiceClient, id string, _ *timestamppb.Timestamp) (*serverv1.IssuerStatus, error) {
			return c.ActivateIssuer(ctx, &serverv1.IssuerRequest{Id: id})
		},
	},
	{
		use: "taint", done: "tainted", idDefault: "the old one",
		short: "Tell agents to renew away from the old signing CA at once; refuse its certificates for new log entries",
		long: `Taint the old issuer: every connected agent holding a certificate from it is
told over its stream to renew at once (from the active issuer), and after a
grace period (10 s) the log refuses new entries signed under its
certificates. Entries already logged keep verifying. The active issuer
cannot be tainted.`,
		run: func(ctx context.Context, c serverv1.AdminServiceClient, id string, _ *timestamppb.Timestamp) (*serverv1.IssuerStatus, error) {
			return c.TaintIssuer(ctx, &serverv1.IssuerRequest{Id: id})
		},
	},
	{
		use: "revoke", done: "revoked", idDefault: "the tainted one", takesAt: true,
		short: "Trust the tainted signing CA only until a time (--at, default now) in the trusted root",
		long: `Revoke the tainted issuer from a time on (--at, RFC 3339, now or in the past,
not before the issuer existed; default now): the trusted root trusts it only
until then. Revoking from time T rejects entries integrated after T and
keeps earlier ones valid. Verifiers see the change once they refresh their
trusted root.`,
		run: func(ctx context.Context, c serverv1.AdminServiceClient, id string, at *timestamppb.Timestamp) (*serverv1.IssuerStatus, error) {
			return c.RevokeIssuer(ctx, &serverv1.RevokeIssuerRequest{Id: id, At: at})
		},
	},
}

func rotateSigningCmd() *cobra.Command {
	var socket string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "signing",
		Short: "Rotate hallmark-server's signing CA (prepare, activate, taint, revoke)",
		Long: `Rotate the CA that hallmark-server's key manager issues agents' signing
certificates from, through the server's AdminService on its admin socket
(server.admin_socket; run as the server's user or root). Steps, in order:
prepare, activate, taint, revoke. Each acts on the issuer the state calls
for unless given --id, and prints the issuer it acted on and every issuer
after it. The runbook is docs/rotation.md.`,
		Args: cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVar(&socket, "server-admin-socket", serverAdminSocketDefault(), serverAdminSocketUsage)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	for _, s := range signingSteps {
		var id, at string
		sub := &cobra.Command{
			Use: s.use, Short: s.short, Long: s.long, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				var ts *timestamppb.Timestamp
				if at != "" {
					t, err := time.Parse(time.RFC3339, at)
					if err != nil {
						return fmt.Errorf("--at %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z", at)
					}
					ts = timestamppb.New(t)
				}
				return runSigningStep(cmd.Context(), cmd.OutOrStdout(), socket, s, id, ts, asJSON)
			},
		}
		if s.idDefault != "" {
			sub.Flags().StringVar(&id, "id", "", "the issuer to "+s.use+" (default: "+s.idDefault+")")
		}
		if s.takesAt {
			sub.Flags().StringVar(&at, "at", "", "revoke from this time on, RFC 3339, not in the future (default: now, on the server's clock)")
		}
		cmd.AddCommand(sub)
	}
	return cmd
}

func runSigningStep(ctx context.Context, w io.Writer, socket string, s signingStep, id string, at *timestamppb.Timestamp, asJSON bool) error {
	c, err := dialServerAdmin(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	is, err := s.run(ctx, c.api, id, at)
	if err != nil {
		return c.rpcErr(s.use, err)
	}
	rep, err := c.report(ctx)
	if err != nil {
		return fmt.Errorf("%s done, but reading the state after it: %w", s.use, err)
	}
	issuer := newSigningIssuer(is)
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Step   string         `json:"step"`
			Issuer signingIssuer  `json:"issuer"`
			State  *signingReport `json:"state"`
		}{s.use, issuer, rep})
	}
	fmt.Fprintf(w, "%s signing CA %s (%s, fingerprint %s)\n\n", s.done, issuer.ID, issuer.State, shortFingerprint(is.GetFingerprint()))
	rep.printHeader(w)
	rep.printIssuers(w)
	rep.printPhase(w)
	return nil
}

func bindSigningStatus(cmd *cobra.Command) func(context.Context) (statusReport, error) {
	var socket string
	cmd.Flags().StringVar(&socket, "server-admin-socket", serverAdminSocketDefault(), serverAdminSocketUsage)
	return func(ctx context.Context) (statusReport, error) {
		c, err := dialServerAdmin(socket)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c.report(ctx)
	}
}

// dialUnix connects to the admin socket; tests replace it to see how
// connection errors are explained.
var dialUnix = func(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

// serverAdmin is a client of hallmark-server's AdminService on its admin
// socket.
type serverAdmin struct {
	socket string
	conn   *grpc.ClientConn
	api    serverv1.AdminServiceClient

	mu      sync.Mutex
	dialErr error // the last failed connect, to explain Unavailable
}

// dialServerAdmin prepares a client for the admin socket at path (a file
// path, or unix:// followed by one). It fails early, saying what to do,
// when nothing is there or the caller may not open it.
func dialServerAdmin(path string) (*serverAdmin, error) {
	path = strings.TrimPrefix(path, "unix://")
	if path == "" {
		return nil, errors.New("no hallmark-server admin socket given (--server-admin-socket or " + serverAdminSocketEnv + ")")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, socketErr(path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("%s is not a socket: give hallmark-server's server.admin_socket", path)
	}
	c := &serverAdmin{socket: path}
	dial := dialUnix
	c.conn, err = grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			conn, err := dial(ctx, path)
			c.mu.Lock()
			c.dialErr = err
			c.mu.Unlock()
			return conn, err
		}))
	if err != nil {
		return nil, fmt.Errorf("hallmark-server admin socket %s: %w", path, err)
	}
	c.api = serverv1.NewAdminServiceClient(c.conn)
	return c, nil
}

// Close releases the connection.
func (c *serverAdmin) Close() error { return c.conn.Close() }

// socketErr says why the admin socket at path cannot be used, and what to
// do about it.
func socketErr(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no hallmark-server admin socket at %s: is hallmark-server running with server.admin_socket set? (give its path with --server-admin-socket or %s)", path, serverAdminSocketEnv)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on hallmark-server's admin socket %s: run as the server's user or root", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing listens on hallmark-server's admin socket %s (left from an earlier run?): is hallmark-server running with server.admin_socket set?", path)
	}
	return fmt.Errorf("hallmark-server admin socket %s: %w", path, err)
}

// rpcErr says which call failed and keeps the server's code and message.
func (c *serverAdmin) rpcErr(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch st.Code() {
	case codes.Unavailable:
		c.mu.Lock()
		dialErr := c.dialErr
		c.mu.Unlock()
		if dialErr != nil {
			return socketErr(c.socket, dialErr)
		}
		// Connected: the server's own answer, or the connection broke.
		return fmt.Errorf("%s: hallmark-server unavailable: %s", what, strings.TrimPrefix(st.Message(), what+": "))
	case codes.Unimplemented:
		if strings.HasPrefix(st.Message(), "unknown service") {
			return fmt.Errorf("%s: the server on %s does not serve %s (%s): is it a hallmark-server with signing-CA rotation?", what, c.socket, serverv1.AdminService_ServiceDesc.ServiceName, st.Message())
		}
	}
	// The server names the step itself ("taint: no old issuer; ...").
	msg := strings.TrimPrefix(st.Message(), what+": ")
	if st.Code() == codes.PermissionDenied && !strings.Contains(msg, "run as") {
		msg += ": run as the server's user or root"
	}
	return fmt.Errorf("%s: hallmark-server refused (%s): %s", what, st.Code(), msg)
}

// report reads every issuer and agent.
func (c *serverAdmin) report(ctx context.Context) (*signingReport, error) {
	resp, err := c.api.GetStatus(ctx, &serverv1.GetStatusRequest{})
	if err != nil {
		return nil, c.rpcErr("get status", err)
	}
	return newSigningReport(c.socket, resp), nil
}

// signingReport is the signing section of `hallmark admin status` and the
// state each rotation step prints.
type signingReport struct {
	Socket  string          `json:"socket"`
	Issuers []signingIssuer `json:"issuers"`
	Agents  []signingAgent  `json:"agents"`
	Phase   string          `json:"phase"`
	Next    string          `json:"next"`
}

// signingIssuer is one signing CA. Fingerprints are the lowercase hex
// SHA-256 of the CA certificate's DER.
type signingIssuer struct {
	ID           string     `json:"id"`
	State        string     `json:"state"`
	Subject      string     `json:"subject"`
	Fingerprint  string     `json:"fingerprint"`
	NotBefore    *time.Time `json:"not_before,omitempty"`
	NotAfter     *time.Time `json:"not_after,omitempty"`
	TaintedAt    *time.Time `json:"tainted_at,omitempty"`
	RevokedAt    *time.Time `json:"revoked_at,omitempty"`
	TrustedUntil *time.Time `json:"trusted_until,omitempty"`
}

// signingAgent is an agent's latest signing certificate.
type signingAgent struct {
	SPIFFEID          string     `json:"spiffe_id"`
	Serial            string     `json:"serial"`
	ExpiresAt         *time.Time `json:"expires_at,omitempty"`
	IssuedAt          *time.Time `json:"issued_at,omitempty"`
	IssuerFingerprint string     `json:"issuer_fingerprint"`
	// Issuer is the ID of the issuer with that fingerprint, when known.
	Issuer string `json:"issuer,omitempty"`
}

func newSigningIssuer(is *serverv1.IssuerStatus) signingIssuer {
	return signingIssuer{
		ID: is.GetId(), State: is.GetState(), Subject: is.GetSubject(),
		Fingerprint: hex.EncodeToString(is.GetFingerprint()),
		NotBefore:   timeOf(is.GetNotBefore()), NotAfter: timeOf(is.GetNotAfter()),
		TaintedAt: timeOf(is.GetTaintedAt()), RevokedAt: timeOf(is.GetRevokedAt()),
		TrustedUntil: timeOf(is.GetTrustedUntil()),
	}
}

func newSigningReport(socket string, resp *serverv1.GetStatusResponse) *signingReport {
	r := &signingReport{Socket: socket, Issuers: []signingIssuer{}, Agents: []signingAgent{}}
	byFingerprint := map[string]string{}
	for _, is := range resp.GetIssuers() {
		i := newSigningIssuer(is)
		r.Issuers = append(r.Issuers, i)
		byFingerprint[i.Fingerprint] = i.ID
	}
	for _, a := range resp.GetAgents() {
		fp := hex.EncodeToString(a.GetIssuerFingerprint())
		r.Agents = append(r.Agents, signingAgent{
			SPIFFEID: a.GetSpiffeId(), Serial: a.GetSerial(),
			ExpiresAt: timeOf(a.GetExpiresAt()), IssuedAt: timeOf(a.GetIssuedAt()),
			IssuerFingerprint: fp, Issuer: byFingerprint[fp],
		})
	}
	r.Phase, r.Next = signingPhase(r.Issuers)
	return r
}

// signingPhase says where a rotation stands and what to do next.
func signingPhase(issuers []signingIssuer) (phase, next string) {
	n := map[string]int{}
	for _, i := range issuers {
		n[i.State]++
	}
	switch {
	case n[issuerPrepared] > 0:
		return "prepared", "wait until every verifier has refreshed its trusted root (it lists the prepared issuer), then run activate"
	case n[issuerOld] > 0:
		return "activated", "run taint, so that agents renew from the active issuer at once"
	case n[issuerTainted] > 0:
		return "tainted", "once every agent holds a certificate from the active issuer (the agents of hallmark admin status), run revoke (--at TIME: from another time than now)"
	case n[issuerActive] == 0:
		return "no active issuer", "run prepare, then activate"
	case n[issuerRevoked] > 0:
		return "rotated", "none: the old issuer is revoked; verifiers must refresh their trusted root"
	}
	return "steady", "none; run prepare to start a rotation"
}

// Print writes the issuers, the agents and the next step.
func (r *signingReport) Print(w io.Writer) {
	r.printHeader(w)
	r.printIssuers(w)
	r.printAgents(w)
	r.printPhase(w)
}

func (r *signingReport) printHeader(w io.Writer) {
	fmt.Fprintf(w, "Signing CAs of hallmark-server (admin socket %s)\n", r.Socket)
}

func (r *signingReport) printIssuers(w io.Writer) {
	if len(r.Issuers) == 0 {
		fmt.Fprintln(w, "  issuers: none")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tSTATE\tSUBJECT\tNOT BEFORE\tNOT AFTER\tTAINTED AT\tREVOKED AT\tTRUSTED UNTIL\tFINGERPRINT")
	for _, i := range r.Issuers {
		state := i.State
		if state == issuerTainted || state == issuerRevoked {
			state = strings.ToUpper(state)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.ID, state, orDash(i.Subject),
			stamp(i.NotBefore), stamp(i.NotAfter), stamp(i.TaintedAt), stamp(i.RevokedAt), stamp(i.TrustedUntil), shortHex(i.Fingerprint))
	}
	tw.Flush()
}

func (r *signingReport) printAgents(w io.Writer) {
	if len(r.Agents) == 0 {
		fmt.Fprintln(w, "  agents: none issued a signing certificate since the server started")
		return
	}
	fmt.Fprintf(w, "  agents (%d):\n", len(r.Agents))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  SPIFFE ID\tSERIAL\tEXPIRES\tISSUER\tISSUED")
	for _, a := range r.Agents {
		issuer := shortHex(a.IssuerFingerprint)
		if a.Issuer != "" && !strings.HasPrefix(a.Issuer, issuer) { // local IDs are fingerprint prefixes
			issuer += " (" + a.Issuer + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", a.SPIFFEID, orDash(a.Serial), stamp(a.ExpiresAt), issuer, stamp(a.IssuedAt))
	}
	tw.Flush()
}

func (r *signingReport) printPhase(w io.Writer) {
	fmt.Fprintf(w, "  phase:    %s\n  next:     %s\n", r.Phase, r.Next)
}

// shortFingerprint is the first 8 bytes of a fingerprint, hex: enough to
// tell issuers apart at a glance.
func shortFingerprint(b []byte) string { return shortHex(hex.EncodeToString(b)) }

func shortHex(s string) string {
	if s == "" {
		return "-"
	}
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

func timeOf(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil {
		return nil
	}
	t := ts.AsTime().UTC()
	return &t
}

func stamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/agentstatus"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

const defaultSPIFFESocket = "unix:///run/spire/agent-sockets/api.sock"

// doctorState is what the checks share: the flags, and what earlier checks
// learnt for later ones.
type doctorState struct {
	spireSocket string // Workload API address, unix:///...
	healthAddr  string // the agent's health_address
	socket      string // the agent's local API socket
	now         func() time.Time

	spireIDs []string                // SVIDs SPIRE issued to this process
	status   *agentstatus.Status     // the agent's /status, once read
	socketOK bool                    // the agent socket exists and is a socket
	whoami   *agentv1.WhoAmIResponse // the agent's WhoAmI answer, once made
}

// doctorCheck is one link of the chain. run reports ok, what it found and,
// when something is wrong (or merely worth a warning when ok), the fix.
type doctorCheck struct {
	name  string
	needs func(*doctorState) bool // prerequisite from an earlier check; nil: none
	run   func(ctx context.Context, s *doctorState) (ok bool, detail, fix string)
}

func hasStatus(s *doctorState) bool { return s.status != nil }
func hasWhoAmI(s *doctorState) bool { return s.whoami != nil }
func hasSocket(s *doctorState) bool { return s.socketOK }

// doctorChecks are the links in the order they are checked.
var doctorChecks = []doctorCheck{
	{name: "spire", run: checkSPIRE},
	{name: "agent", run: checkAgent},
	{name: "agent-svid", needs: hasStatus, run: checkAgentSVID},
	{name: "server", needs: hasStatus, run: checkServer},
	{name: "signing-cert", needs: hasStatus, run: checkSigningCert},
	{name: "policy", needs: hasStatus, run: checkPolicy},
	{name: "exe-selectors", needs: hasStatus, run: checkExeSelectors},
	{name: "socket", run: checkSocket},
	{name: "whoami", needs: hasSocket, run: checkWhoAmI},
	{name: "delegation", needs: hasWhoAmI, run: checkDelegation},
}

// runDoctor runs checks in order, printing one line each (OK, WARN, FAIL
// with its fix, or SKIP when an earlier link is broken), and reports
// whether every check passed.
func runDoctor(ctx context.Context, w io.Writer, s *doctorState, checks []doctorCheck) bool {
	all := true
	for _, c := range checks {
		if c.needs != nil && !c.needs(s) {
			fmt.Fprintf(w, "SKIP  %-13s needs an earlier check to pass\n", c.name)
			continue
		}
		ok, detail, fix := c.run(ctx, s)
		switch {
		case !ok:
			all = false
			fmt.Fprintf(w, "FAIL  %-13s %s\n      fix: %s\n", c.name, detail, fix)
		case fix != "":
			fmt.Fprintf(w, "WARN  %-13s %s\n      hint: %s\n", c.name, detail, fix)
		default:
			fmt.Fprintf(w, "OK    %-13s %s\n", c.name, detail)
		}
	}
	return all
}

func doctorCmd() *cobra.Command {
	s := &doctorState{now: time.Now}
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check each link from SPIRE to the agent's socket, and say how to fix what is broken",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !runDoctor(cmd.Context(), cmd.OutOrStdout(), s, doctorChecks) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	spire := os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	if spire == "" {
		spire = defaultSPIFFESocket
	}
	health := os.Getenv("HALLMARK_AGENT_HEALTH_ADDR")
	if health == "" {
		health = "127.0.0.1:8081"
	}
	cmd.Flags().StringVar(&s.spireSocket, "spire-socket", spire, "the SPIRE Workload API address (env SPIFFE_ENDPOINT_SOCKET)")
	cmd.Flags().StringVar(&s.healthAddr, "agent-health-addr", health, "the agent's health_address (env HALLMARK_AGENT_HEALTH_ADDR)")
	socketFlag(cmd, &s.socket)
	return cmd
}

func checkSPIRE(ctx context.Context, s *doctorState) (bool, string, string) {
	addr := s.spireSocket
	if !strings.Contains(addr, "://") {
		addr = "unix://" + addr
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	x509Ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.PermissionDenied {
			// The SPIRE agent answered: the socket works, there is just no
			// registration entry for this process, which doctor does not need.
			return true, fmt.Sprintf("Workload API at %s answers (no identity issued to doctor itself: fine, the socket is reachable)", addr), ""
		}
		return false, fmt.Sprintf("Workload API at %s: %v", addr, err),
			"start the SPIRE agent, or point --spire-socket / SPIFFE_ENDPOINT_SOCKET at its socket_path (the same as the agent's workload_api_socket)"
	}
	for _, svid := range x509Ctx.SVIDs {
		s.spireIDs = append(s.spireIDs, svid.ID.String())
	}
	return true, fmt.Sprintf("Workload API at %s answers; issued to you: %s", addr, strings.Join(s.spireIDs, ", ")), ""
}

func checkAgent(ctx context.Context, s *doctorState) (bool, string, string) {
	st, err := fetchStatus(ctx, s.healthAddr)
	if err != nil {
		return false, err.Error(),
			"start hallmark-agent with health_address set, and pass that address as --agent-health-addr / HALLMARK_AGENT_HEALTH_ADDR"
	}
	s.status = &st
	if st.SPIFFEID == "" {
		return false, fmt.Sprintf("agent at %s runs but has no SPIFFE ID", s.healthAddr),
			"register hallmark-agent in SPIRE (spire-server entry create -selector unix:path:<hallmark-agent>) and check the agent's workload_api_socket"
	}
	return true, fmt.Sprintf("agent at %s runs as %s", s.healthAddr, st.SPIFFEID), ""
}

func checkAgentSVID(_ context.Context, s *doctorState) (bool, string, string) {
	st := s.status
	if st.SVIDNotAfter == nil {
		return false, "the agent holds no X509-SVID",
			"register hallmark-agent in SPIRE and check its workload_api_socket; its log says why the Workload API gave nothing"
	}
	ttl := st.SVIDNotAfter.Sub(s.now())
	if ttl <= 0 {
		return false, fmt.Sprintf("the agent's X509-SVID (serial %s) expired at %s", st.SVIDSerial, st.SVIDNotAfter.Format(time.RFC3339)),
			"check the SPIRE agent is running and attested to its server: it rotates SVIDs before they expire"
	}
	return true, fmt.Sprintf("X509-SVID serial %s, %s left", st.SVIDSerial, ttl.Round(time.Second)), ""
}

func checkServer(_ context.Context, s *doctorState) (bool, string, string) {
	sv := s.status.Server
	if strings.Contains(sv.LastError, keyManagerPrefix) {
		// The server answered: its key manager (Vault) is what failed.
		// (The agent counts that as reachable; agents before it did not.)
		return true, fmt.Sprintf("hallmark-server %s (%s) answers, but its key manager cannot certify (see signing-cert)", sv.Address, sv.SPIFFEID),
			"fix the key manager as signing-cert says"
	}
	if !sv.Reachable {
		detail := fmt.Sprintf("hallmark-server %s (%s) NOT reachable", sv.Address, sv.SPIFFEID)
		if sv.LastError != "" {
			detail += ": " + sv.LastError
		}
		return false, detail,
			"check hallmark-server runs at the agent's server_address, that server_spiffe_id matches the server's SVID, and that both are in one trust domain"
	}
	return true, fmt.Sprintf("hallmark-server %s (%s) reachable", sv.Address, sv.SPIFFEID), ""
}

func checkSigningCert(_ context.Context, s *doctorState) (bool, string, string) {
	c := s.status.SigningCertificate
	failing, fix := renewalFault(s.status.RenewalError)
	if c == nil {
		if failing != "" {
			return false, "no signing certificate held: attestation is unavailable; renewal fails: " + failing, fix
		}
		return false, "no signing certificate held: attestation is unavailable",
			"fix the server link first; otherwise the server's key manager refuses to certify (see the server's log)"
	}
	left := c.NotAfter.Sub(s.now())
	if left <= 0 {
		if failing != "" {
			return false, fmt.Sprintf("signing certificate serial %s expired at %s; renewal fails: %s", c.Serial, c.NotAfter.Format(time.RFC3339), failing), fix
		}
		return false, fmt.Sprintf("signing certificate serial %s expired at %s", c.Serial, c.NotAfter.Format(time.RFC3339)),
			"renewals are failing: see the agent's log and hallmark_agent_signing_certificate_renewals_total{result=\"failure\"}"
	}
	detail := fmt.Sprintf("signing certificate serial %s, expires %s (%s left)", c.Serial, c.NotAfter.Format(time.RFC3339), left.Round(time.Second))
	if failing != "" {
		// Still signing, but not for long unless this is fixed.
		return true, detail + "; renewal fails: " + failing, fix
	}
	return true, detail, ""
}

// keyManagerPrefix starts the server's message about a key manager that
// could not certify; keyManagerFix precedes the fix the key manager gives.
const (
	keyManagerPrefix = "desc = key manager "
	keyManagerFix    = "; fix: "
)

// renewalFault splits the agent's last renewal error into what failed and
// the fix: the one the server's key manager gave (for Vault: sealed,
// unreachable, refused by policy or misconfigured, with what to do), or a
// pointer to the logs.
func renewalFault(msg string) (failing, fix string) {
	if msg == "" {
		return "", ""
	}
	if i := strings.LastIndex(msg, keyManagerFix); i >= 0 && strings.Contains(msg, keyManagerPrefix) {
		return msg[:i], msg[i+len(keyManagerFix):]
	}
	return msg, "see the agent's log, and the server's log when the server answered"
}

func checkPolicy(_ context.Context, s *doctorState) (bool, string, string) {
	p := s.status.Policy
	src := p.Source
	if src == "" {
		src = "nowhere"
	}
	if len(p.Rules) == 0 {
		return true, fmt.Sprintf("policy from %s has no rules: every attestation is denied", src),
			"add rule blocks to the agent's policy block, or to the server's when the agent has none"
	}
	return true, fmt.Sprintf("policy from %s: rules %s", src, strings.Join(p.Rules, ", ")), ""
}

// checkExeSelectors warns where any local user can forge its executable:
// rules naming unix:path or unix:sha256 (or SPIFFE IDs SPIRE gives by path
// or sha256) then prove nothing about which program called.
func checkExeSelectors(_ context.Context, s *doctorState) (bool, string, string) {
	why := s.status.ExeSelectorsForgeable
	if why == "" {
		return true, "callers' executables cannot be forged by unprivileged users (user namespaces are closed to them)", ""
	}
	return true, "any local user can make its executable look like another program's: " + why,
		"name callers in policy by uid, group or SPIFFE IDs that do not rest on path or sha256 selectors, or close unprivileged user namespaces " +
			"(sysctl user.max_user_namespaces=0, or kernel.apparmor_restrict_unprivileged_userns=1); see docs/security.md"
}

func checkSocket(_ context.Context, s *doctorState) (bool, string, string) {
	fi, err := os.Stat(s.socket)
	if err != nil {
		return false, fmt.Sprintf("agent socket %s: %v", s.socket, errors.Unwrap(err)),
			"start hallmark-agent, or pass its socket_path as --socket / HALLMARK_AGENT_SOCKET"
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return false, fmt.Sprintf("%s is not a socket (%s)", s.socket, fi.Mode()),
			"pass the agent's socket_path as --socket / HALLMARK_AGENT_SOCKET"
	}
	s.socketOK = true
	group := "?"
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		gid := strconv.FormatUint(uint64(st.Gid), 10)
		group = gid
		if g, err := user.LookupGroupId(gid); err == nil {
			group = g.Name
		}
	}
	detail := fmt.Sprintf("%s is a socket, mode %#o, group %s", s.socket, fi.Mode().Perm(), group)
	if fi.Mode().Perm()&0o002 != 0 { // connecting needs write permission
		return true, detail + ", world-accessible (anyone may connect)",
			"set the agent's socket_group so only build users can reach it (policy still decides, but fewer callers is better)"
	}
	return true, detail, ""
}

func checkWhoAmI(ctx context.Context, s *doctorState) (bool, string, string) {
	agent, err := dialAgent(s.socket)
	if err != nil {
		return false, err.Error(), "fix the socket check first"
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := agent.WhoAmI(ctx, &agentv1.WhoAmIRequest{})
	if err != nil {
		if agent.refused.Load() != nil {
			return false, agent.explain(err).Error(),
				"the agent said why it refused the connection; its log has each refusal"
		}
		return false, agent.explain(err).Error(),
			"check you may open the socket (its group: socket_group) and the agent's log"
	}
	s.whoami = resp
	wl := resp.GetWorkload()
	detail := fmt.Sprintf("agent %s sees you as uid %d, gid %d", resp.GetAgentSpiffeId(), wl.GetUid(), wl.GetGid())
	if len(resp.GetGrants()) == 0 {
		return true, detail + "; policy allows you nothing",
			"add a policy rule matching one of your SPIFFE IDs or selectors (hallmark whoami lists them)"
	}
	var grants []string
	for _, g := range resp.GetGrants() {
		grants = append(grants, fmt.Sprintf("rule %q: steps %s", g.GetRule(), strings.Join(g.GetSteps(), ", ")))
	}
	return true, detail + "; allowed: " + strings.Join(grants, "; "), ""
}

func checkDelegation(_ context.Context, s *doctorState) (bool, string, string) {
	ids := s.whoami.GetWorkload().GetSpiffeIds()
	if len(ids) > 0 {
		return true, "the agent sees your SPIFFE IDs: " + strings.Join(ids, ", "), ""
	}
	agentID := s.whoami.GetAgentSpiffeId()
	if len(s.spireIDs) > 0 {
		return false, fmt.Sprintf("SPIRE issues you %s but the agent sees no SPIFFE IDs for you", strings.Join(s.spireIDs, ", ")),
			fmt.Sprintf("configure workload_attestor \"spire\" on the agent, and in the SPIRE agent set admin_socket_path and authorized_delegates = [%q]", agentID)
	}
	return true, "the agent sees no SPIFFE IDs for you (no SPIRE registration matches you)",
		fmt.Sprintf("if you should have one: register your workload in SPIRE, and make sure the SPIRE agent lists %q in authorized_delegates", agentID)
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/agent/agentstatus"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

var doctorNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// healthyStatus is what a working agent reports.
func healthyStatus() agentstatus.Status {
	svidNotAfter := doctorNow.Add(30 * time.Minute)
	return agentstatus.Status{
		SPIFFEID: "spiffe://example.org/hallmark/agent/runner-1", SVIDSerial: "1a", SVIDNotAfter: &svidNotAfter,
		Server: agentstatus.ServerStatus{Address: "127.0.0.1:8443", SPIFFEID: "spiffe://example.org/hallmark/server", Reachable: true},
		SigningCertificate: &agentstatus.CertStatus{
			Serial: "2b", Issuer: "CN=ca", NotBefore: doctorNow.Add(-time.Minute), NotAfter: doctorNow.Add(4 * time.Minute),
		},
		Policy: agentstatus.PolicyStatus{Source: "file", Rules: []string{"builders"}},
	}
}

// fakeHealth serves st on /status and returns its host:port.
func fakeHealth(t *testing.T, st agentstatus.Status) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st) //nolint:errcheck // test server
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hmdoc-") // unix socket paths must stay short
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveUnix serves a gRPC server on a new socket and returns its path.
func serveUnix(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	path := filepath.Join(shortDir(t), "s.sock")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := grpc.NewServer()
	register(srv)
	go srv.Serve(ln) //nolint:errcheck // stopped below
	t.Cleanup(srv.Stop)
	return path
}

// fakeSPIRE answers like a SPIRE agent with no registration for the caller.
type fakeSPIRE struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
}

func (fakeSPIRE) FetchX509SVID(*workload.X509SVIDRequest, grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return status.Error(codes.PermissionDenied, "no identity issued")
}

type fakeAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	resp *agentv1.WhoAmIResponse
	err  error
}

func (f *fakeAgent) WhoAmI(context.Context, *agentv1.WhoAmIRequest) (*agentv1.WhoAmIResponse, error) {
	return f.resp, f.err
}

func healthyWhoAmI() *agentv1.WhoAmIResponse {
	return &agentv1.WhoAmIResponse{
		AgentSpiffeId: "spiffe://example.org/hallmark/agent/runner-1",
		Workload:      &agentv1.Workload{Pid: 42, Uid: 1000, Gid: 1000, SpiffeIds: []string{"spiffe://example.org/ci/builder"}},
		Grants:        []*agentv1.Grant{{Rule: "builders", Steps: []string{"build"}}},
	}
}

func startFakeAgent(t *testing.T, f *fakeAgent) string {
	t.Helper()
	return serveUnix(t, func(s *grpc.Server) { agentv1.RegisterWorkloadServiceServer(s, f) })
}

type doctorSetup struct {
	status agentstatus.Status
	whoami *fakeAgent
	// edit changes the state after the fakes start (e.g. a wrong path).
	edit func(t *testing.T, s *doctorState)
	// checks edits the check table (e.g. a stub in place of SPIRE).
	checks func([]doctorCheck) []doctorCheck
}

func runDoctorWith(t *testing.T, d doctorSetup) (bool, string) {
	t.Helper()
	spire := serveUnix(t, func(s *grpc.Server) { workload.RegisterSpiffeWorkloadAPIServer(s, fakeSPIRE{}) })
	if d.whoami == nil {
		d.whoami = &fakeAgent{resp: healthyWhoAmI()}
	}
	s := &doctorState{
		spireSocket: "unix://" + spire,
		healthAddr:  fakeHealth(t, d.status),
		socket:      startFakeAgent(t, d.whoami),
		now:         func() time.Time { return doctorNow },
	}
	if d.edit != nil {
		d.edit(t, s)
	}
	checks := append([]doctorCheck(nil), doctorChecks...)
	if d.checks != nil {
		checks = d.checks(checks)
	}
	var out bytes.Buffer
	ok := runDoctor(context.Background(), &out, s, checks)
	return ok, out.String()
}

// lines returns the first word and check name of each result line.
func failed(out string) []string {
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "FAIL" {
			names = append(names, f[1])
		}
	}
	return names
}

func TestDoctorAllPass(t *testing.T) {
	ok, out := runDoctorWith(t, doctorSetup{status: healthyStatus()})
	require.True(t, ok, out)
	require.Empty(t, failed(out))
	require.NotContains(t, out, "SKIP")
	for _, c := range doctorChecks {
		require.Contains(t, out, "OK    "+c.name, out)
	}
	require.Contains(t, out, "no identity issued to doctor itself", "a PermissionDenied from SPIRE proves the socket")
	require.Contains(t, out, "30m0s left", "the SVID's remaining TTL")
	require.Contains(t, out, `rule "builders": steps build`)
	require.Contains(t, out, "spiffe://example.org/ci/builder")
}

func TestDoctorBrokenLinks(t *testing.T) {
	expired := doctorNow.Add(-time.Second)
	cases := []struct {
		name      string
		setup     doctorSetup
		wantCheck string
		wantFix   string
		wantText  string
	}{
		{"no SPIRE agent", doctorSetup{status: healthyStatus(), edit: func(t *testing.T, s *doctorState) {
			s.spireSocket = "unix://" + filepath.Join(shortDir(t), "missing.sock")
		}}, "spire", "--spire-socket", "missing.sock"},
		{"no agent health listener", doctorSetup{status: healthyStatus(), edit: func(_ *testing.T, s *doctorState) {
			s.healthAddr = "127.0.0.1:1"
		}}, "agent", "--agent-health-addr", "127.0.0.1:1"},
		{"agent without SPIFFE ID", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.SPIFFEID = ""
			return st
		}()}, "agent", "register hallmark-agent in SPIRE", "no SPIFFE ID"},
		{"no SVID", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.SVIDNotAfter = nil
			return st
		}()}, "agent-svid", "register hallmark-agent", "no X509-SVID"},
		{"expired SVID", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.SVIDNotAfter = &expired
			return st
		}()}, "agent-svid", "SPIRE agent is running", "expired"},
		{"server unreachable", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.Server.Reachable = false
			st.Server.LastError = "connection refused"
			return st
		}()}, "server", "server_spiffe_id", "connection refused"},
		{"no signing certificate", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.SigningCertificate = nil
			return st
		}()}, "signing-cert", "key manager", "attestation is unavailable"},
		{"expired signing certificate", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.SigningCertificate.NotAfter = expired
			return st
		}()}, "signing-cert", "renewals are failing", "expired"},
		{"Vault sealed, no signing certificate", doctorSetup{status: func() agentstatus.Status {
			st := healthyStatus()
			st.SigningCertificate = nil
			st.Server.Reachable = false // the server answered Unavailable
			st.Server.LastError = vaultSealed
			st.RenewalError = vaultSealed
			return st
		}()}, "signing-cert", "fix: unseal Vault (`vault operator unseal`", "renewal fails: issue signing certificate: rpc error: code = Unavailable desc = key manager vault: vault: write pki/sign/hallmark-agent: HTTP 503: Vault is sealed: vault is sealed\n"},
		{"no agent socket", doctorSetup{status: healthyStatus(), edit: func(t *testing.T, s *doctorState) {
			s.socket = filepath.Join(shortDir(t), "agent.sock")
		}}, "socket", "--socket", "no such file"},
		{"socket path is a file", doctorSetup{status: healthyStatus(), edit: func(t *testing.T, s *doctorState) {
			s.socket = filepath.Join(shortDir(t), "agent.sock")
			require.NoError(t, os.WriteFile(s.socket, nil, 0o600))
		}}, "socket", "socket_path", "not a socket"},
		{"WhoAmI refused", doctorSetup{status: healthyStatus(),
			whoami: &fakeAgent{err: status.Error(codes.Internal, "attestor broke")}},
			"whoami", "agent's log", "attestor broke"},
		{"SPIRE knows the caller, the agent does not", doctorSetup{status: healthyStatus(),
			whoami: &fakeAgent{resp: &agentv1.WhoAmIResponse{
				AgentSpiffeId: "spiffe://example.org/hallmark/agent/runner-1",
				Workload:      &agentv1.Workload{Uid: 1000},
				Grants:        []*agentv1.Grant{{Rule: "uids", Steps: []string{"build"}}},
			}},
			checks: func(cs []doctorCheck) []doctorCheck {
				cs[0].run = func(_ context.Context, s *doctorState) (bool, string, string) {
					s.spireIDs = []string{"spiffe://example.org/ci/builder"}
					return true, "stub", ""
				}
				return cs
			}},
			"delegation", `authorized_delegates = ["spiffe://example.org/hallmark/agent/runner-1"]`, "spiffe://example.org/ci/builder"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, out := runDoctorWith(t, tc.setup)
			require.False(t, ok, out)
			require.Equal(t, []string{tc.wantCheck}, failed(out), out)
			require.Contains(t, out, "fix: ", out)
			require.Contains(t, out, tc.wantFix, out)
			require.Contains(t, out, tc.wantText, out)
		})
	}
}

// vaultSealed is how an agent reports a renewal refused because the
// server's Vault is sealed.
const vaultSealed = "issue signing certificate: rpc error: code = Unavailable desc = key manager vault: vault: write pki/sign/hallmark-agent: HTTP 503: Vault is sealed: vault is sealed; fix: unseal Vault (`vault operator unseal`, or let its auto-unseal finish)"

// Must show: a Vault fault reaches the operator with its fix while the
// agent still signs with its current certificate.
func TestDoctorKeyManagerFault(t *testing.T) {
	st := healthyStatus()
	st.RenewalError = "issue signing certificate: rpc error: code = FailedPrecondition desc = key manager vault: vault: write pki/sign/hallmark-agent: HTTP 403: permission denied: vault refused by policy; fix: the server's Vault token lacks a grant for pki/sign/hallmark-agent"
	ok, out := runDoctorWith(t, doctorSetup{status: st})
	require.True(t, ok, "the certificate is still valid:\n%s", out)
	require.Contains(t, out, "WARN  signing-cert")
	require.Contains(t, out, "renewal fails: issue signing certificate: rpc error: code = FailedPrecondition desc = key manager vault: vault: write pki/sign/hallmark-agent: HTTP 403: permission denied: vault refused by policy\n")
	require.Contains(t, out, "hint: the server's Vault token lacks a grant for pki/sign/hallmark-agent")
	require.Contains(t, out, "OK    server")

	st = healthyStatus()
	st.Server.Reachable, st.Server.LastError, st.RenewalError = true, vaultSealed, vaultSealed
	ok, out = runDoctorWith(t, doctorSetup{status: st})
	require.True(t, ok, out)
	require.Contains(t, out, "WARN  server")
	require.Contains(t, out, "answers, but its key manager cannot certify")
	require.Contains(t, out, "WARN  signing-cert")
	require.Contains(t, out, "hint: unseal Vault")
}

func TestDoctorWarnings(t *testing.T) {
	noRules := healthyStatus()
	noRules.Policy.Rules = nil
	ok, out := runDoctorWith(t, doctorSetup{status: noRules, whoami: &fakeAgent{resp: &agentv1.WhoAmIResponse{
		AgentSpiffeId: "spiffe://example.org/hallmark/agent/runner-1", Workload: &agentv1.Workload{Uid: 1000},
	}}, edit: func(t *testing.T, s *doctorState) {
		require.NoError(t, os.Chmod(s.socket, 0o777))
	}})
	require.True(t, ok, "warnings do not fail the doctor:\n%s", out)
	require.Contains(t, out, "WARN  policy")
	require.Contains(t, out, "every attestation is denied")
	require.Contains(t, out, "WARN  socket")
	require.Contains(t, out, "world-accessible")
	require.Contains(t, out, "WARN  whoami")
	require.Contains(t, out, "policy allows you nothing")
	require.Contains(t, out, "WARN  delegation")
	require.Contains(t, out, "authorized_delegates")
}

// Must show: doctor warns where any local user can forge its executable
// (the agent found unprivileged user namespaces open), and says how to
// close it; where they are closed, the check passes quietly.
func TestDoctorExeSelectors(t *testing.T) {
	st := healthyStatus()
	ok, out := runDoctorWith(t, doctorSetup{status: st})
	require.True(t, ok, out)
	require.Contains(t, out, "OK    exe-selectors")

	st.ExeSelectorsForgeable = "unprivileged user namespaces are enabled"
	ok, out = runDoctorWith(t, doctorSetup{status: st})
	require.True(t, ok, "a warning, not a failure:\n%s", out)
	require.Contains(t, out, "WARN  exe-selectors any local user can make its executable look like another program's: unprivileged user namespaces are enabled")
	require.Contains(t, out, "sysctl user.max_user_namespaces=0")
}

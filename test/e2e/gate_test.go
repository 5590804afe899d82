package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/harness"
)

// The local API's gate against an attacker with a shell on the runner:
// ordinary users the suite created (users_test.go) act as build steps of
// their own, as another tenant, and as a uid abusing the socket.

var (
	roleBinOnce sync.Once
	roleBinPath string
	roleBinErr  error
)

// roleBin is a copy of this test binary that every user may run (the
// original lies in a directory only root may enter). It is not the
// registered builder: policy knows the users by uid.
func roleBin(t *testing.T) string {
	t.Helper()
	roleBinOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			roleBinErr = err
			return
		}
		dir := filepath.Join(stack.Dir, "roles")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			roleBinErr = err
			return
		}
		roleBinPath = filepath.Join(dir, "e2e-role")
		b, err := os.ReadFile(self)
		if err == nil {
			err = os.WriteFile(roleBinPath, b, 0o755)
		}
		roleBinErr = err
	})
	require.NoError(t, roleBinErr)
	return roleBinPath
}

// userWorkspace makes a workspace under the policy's roots owned by u.
func userWorkspace(t *testing.T, u osUser, files map[string]string) string {
	t.Helper()
	ws := workspace(t, files)
	require.NoError(t, filepath.Walk(ws, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.uid, u.gid)
	}))
	return ws
}

// hardenedAgent starts an agent of its own (so that its metrics count only
// this test's requests) with extra policy rules and agent settings.
func hardenedAgent(t *testing.T, name, rules, extra string) *harness.Service {
	t.Helper()
	ag, err := stack.SPIRE.StartAgent(context.Background(), stack.Bins.Agent, stack.Dir, name, harness.AgentOptions{
		ServerAddr: stack.Server.ServerAddr(), ServerID: harness.ServerID.String(),
		Policy: testPolicy(stack.Dir) + rules, SocketGroup: "nogroup", Extra: extra,
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	return ag
}

// runAs runs a role of the test binary as u, optionally wrapped (unshare
// ...), and returns the line it printed.
func runAs(t *testing.T, u osUser, wrap []string, role, socket, ws string, env ...string) string {
	t.Helper()
	args := append(append([]string{}, wrap...), roleBin(t), "-test.run=^$")
	cmd := u.as(t, exec.Command(args[0], args[1:]...))
	cmd.Env = append(append(os.Environ(), roleEnv+"="+role, "HALLMARK_E2E_SOCKET="+socket, "HALLMARK_E2E_WORKSPACE="+ws), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "role %s as %s: %s", role, u.name, out)
	return strings.TrimSpace(string(out))
}

// tenant starts a process of tenantUser in a user and mount namespace of
// its own with a private tmpfs at /mnt holding a world-readable secret,
// and returns its pid.
func tenant(t *testing.T) int {
	t.Helper()
	cmd := tenantUser.as(t, exec.Command("unshare", "-Urm", "sh", "-c",
		`mount -t tmpfs tmpfs /mnt && echo "another tenant's secret" >/mnt/secret && chmod 644 /mnt/secret && echo ready && exec sleep 600`))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck // ends the tenant
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ready\n", line)
	return cmd.Process.Pid
}

func measured(t *testing.T, ag *harness.Service) float64 {
	t.Helper()
	return counter(t, ag, "hallmark_agent_measured_files_total")
}

// Must show: a workspace through /proc/PID/root, from the caller's own
// user namespace and into another tenant's mount namespace, is refused
// with nothing hashed; so is the same through a bind mount and through a
// symbolic link into /proc. The policy here grants the step user every
// workspace ("/"), so that nothing but the gate's resolution refuses. An
// ordinary step of the same user is attested.
func TestWorkspaceInCallersWorld(t *testing.T) {
	t.Parallel()
	ag := hardenedAgent(t, "hallmark-agent-world", fmt.Sprintf(`
  rule "step-anywhere" {
    selectors       = ["unix:uid:%d"]
    steps           = ["build"]
    workspace_roots = ["/"]
  }`, stepUser.uid), "")
	b := tenant(t)
	ws := userWorkspace(t, stepUser, map[string]string{"out": "the step's own product"})
	for _, d := range []string{"p", "host"} {
		require.NoError(t, os.Mkdir(filepath.Join(ws, d), 0o755))
		require.NoError(t, os.Chown(filepath.Join(ws, d), stepUser.uid, stepUser.gid))
	}
	require.NoError(t, os.Symlink(fmt.Sprintf("/proc/%d/root/mnt", b), filepath.Join(ws, "l")))
	require.NoError(t, os.Lchown(filepath.Join(ws, "l"), stepUser.uid, stepUser.gid))
	// A 0600 file in a 0700 root directory, for the attacker's own
	// namespace, where it bind-mounts the host's / under its workspace.
	secretDir := filepath.Join(stack.Dir, "root-only")
	require.NoError(t, os.MkdirAll(secretDir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(secretDir, "secret"), []byte("root's secret"), 0o600))

	tenantNS := fmt.Sprintf("/proc/%d/root/mnt", b)
	userns := []string{"unshare", "-Urm"}
	bindProc := []string{"unshare", "-Urm", "sh", "-c", `mount --bind /proc "$HALLMARK_E2E_WORKSPACE_DIR/p" && exec "$0" "$@"`}
	bindRoot := []string{"unshare", "-Urm", "sh", "-c", `mount --rbind / "$HALLMARK_E2E_WORKSPACE_DIR/host" && exec "$0" "$@"`}
	for _, tc := range []struct {
		name      string
		wrap      []string
		workspace string
		products  string
		why       string // in the refusal
	}{
		{"another tenant's namespace through /proc/PID/root", nil, tenantNS, "secret", "magic link"},
		{"the same from the caller's own user namespace", userns, tenantNS, "secret", "magic link"},
		{"its own namespace's / bound under the workspace, named through /proc/PID/root", bindRoot,
			"/proc/{pid}/root" + ws + "/host" + secretDir, "secret", "magic link"},
		{"... and named directly: a root-only file", bindRoot, ws + "/host" + secretDir, "secret", "not accessible"},
		{"... and named as a product beneath the workspace", bindRoot, ws, "host" + secretDir + "/secret", "escapes"},
		{"/proc bound under the workspace, into the tenant", bindProc, fmt.Sprintf("%s/p/%d/root/mnt", ws, b), "secret", "magic link"},
		{"/proc bound under the workspace, as a product", bindProc, ws, fmt.Sprintf("p/%d/root/mnt/secret", b), "escapes"},
		{"/proc bound under the workspace, as the workspace", bindProc, ws + "/p", "self/environ", "procfs"},
		{"a symbolic link into /proc as the workspace", nil, ws + "/l", "secret", "symbolic link"},
		{"a symbolic link into /proc as a product", nil, ws, "l/secret", "escapes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := measured(t, ag)
			out := runAs(t, stepUser, tc.wrap, "attest", ag.Socket, tc.workspace,
				"HALLMARK_E2E_PRODUCTS="+tc.products, "HALLMARK_E2E_WORKSPACE_DIR="+ws)
			t.Logf("%s", out)
			require.True(t, strings.HasPrefix(out, "REFUSED PermissionDenied"), out)
			require.Contains(t, out, tc.why)
			require.NotContains(t, out, "another tenant's secret")
			require.Equal(t, before, measured(t, ag), "nothing hashed")
		})
	}
	t.Run("an ordinary step of the same user", func(t *testing.T) {
		before := measured(t, ag)
		out := runAs(t, stepUser, nil, "attest", ag.Socket, ws, "HALLMARK_E2E_PRODUCTS=out")
		require.Equal(t, "ATTESTED 1 subjects", out)
		require.Equal(t, before+1, measured(t, ag))
	})
	t.Run("an ordinary step from its own user namespace", func(t *testing.T) {
		out := runAs(t, stepUser, userns, "attest", ag.Socket, ws, "HALLMARK_E2E_PRODUCTS=out")
		require.Equal(t, "ATTESTED 1 subjects", out)
	})
}

// Must show: an allowed user asking for a file it cannot read is refused
// (nothing hashed); the same file, once readable by it, is attested; the
// same for a group it is not in, and one it is in.
func TestAttestOnlyWhatTheCallerCanRead(t *testing.T) {
	t.Parallel()
	ag := hardenedAgent(t, "hallmark-agent-rights", "", "")
	ws := userWorkspace(t, stepUser, nil)
	secret := filepath.Join(ws, "secret.bin")
	require.NoError(t, os.WriteFile(secret, []byte("root's 0600 file in the step's workspace"), 0o600))
	grouped := filepath.Join(ws, "tenant-group.bin")
	require.NoError(t, os.WriteFile(grouped, []byte("the tenant group's file"), 0o640))
	require.NoError(t, os.Chown(grouped, 0, tenantUser.gid))

	bundle := filepath.Join(ws, "bundle.json")
	attest := func(product string) (string, error) {
		os.Remove(bundle)
		cmd := stepUser.as(t, exec.Command(stack.Bins.CLI, "attest", "--socket", ag.Socket, "--step", "build",
			"--workspace", ws, "--product", product, "--out", bundle))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct {
		name    string
		product string
		prepare func()
		ok      bool
	}{
		{"root's 0600 file", "secret.bin", func() {}, false},
		{"the same file, made readable", "secret.bin", func() { require.NoError(t, os.Chmod(secret, 0o644)) }, true},
		{"a group's 0640 file, not the caller's group", "tenant-group.bin", func() {}, false},
		{"the same file, its group the caller's", "tenant-group.bin", func() { require.NoError(t, os.Chown(grouped, 0, stepUser.gid)) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.prepare()
			before := measured(t, ag)
			out, err := attest(tc.product)
			t.Logf("%s", strings.TrimSpace(out))
			if tc.ok {
				require.NoError(t, err, out)
				require.FileExists(t, bundle)
				require.Equal(t, before+1, measured(t, ag))
				return
			}
			require.Error(t, err)
			require.NoFileExists(t, bundle)
			require.Contains(t, out, "refused")
			require.Contains(t, out, "not accessible to the caller")
			require.Equal(t, before, measured(t, ag), "nothing hashed")
		})
	}
}

// Must show: a caller that exec()s after connecting is refused, whatever
// it execs and however often, back to the same binary included (A→B,
// A→B→A, A→A), though A is the registered builder and the request comes
// from A; an ordinary step on the same raw HTTP/2 client is attested.
func TestExecAfterConnectRefused(t *testing.T) {
	t.Parallel()
	ag := hardenedAgent(t, "hallmark-agent-exec", "", "")
	self, err := os.Executable()
	require.NoError(t, err)
	other := filepath.Join(t.TempDir(), "other.test") // B: not registered
	copyFile(t, self, other)
	for _, tc := range []struct {
		name  string
		chain []string
		ok    bool
	}{
		{"ordinary step", nil, true},
		{"A to B", []string{other}, false},
		{"A to B to A", []string{other, self}, false},
		{"A to A", []string{self}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := workspace(t, map[string]string{"out": "written by A"})
			before := counter(t, ag, `hallmark_agent_attestations_total{result="attested"}`)
			cmd := roleCmd(t, self, "exec-chain", ag.Socket, ws)
			cmd.Env = append(cmd.Env, "HALLMARK_E2E_CHAIN="+strings.Join(tc.chain, ","))
			cmd.Stderr = nil
			outb, err := cmd.CombinedOutput()
			out := strings.TrimSpace(string(outb))
			require.NoError(t, err, out)
			t.Logf("%s", out)
			if tc.ok {
				require.Equal(t, "ATTESTED 1 subjects", out)
				require.Equal(t, before+1, counter(t, ag, `hallmark_agent_attestations_total{result="attested"}`))
				return
			}
			require.Contains(t, out, "REFUSED code 7") // PermissionDenied
			require.Contains(t, out, "caller changed since it connected")
			require.Contains(t, out, "exec'd")
			require.Equal(t, before, counter(t, ag, `hallmark_agent_attestations_total{result="attested"}`), "nothing signed")
		})
	}
}

// procStatus reads a field (VmRSS, in kB) of /proc/PID/status and the
// number of open descriptors of pid.
func procUsage(pid int) (rssKB, fds int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			rssKB, _ = strconv.Atoi(strings.Fields(v)[0])
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return rssKB, len(ents), err
}

// Bounds the agent stays under while a uid abuses its socket: its
// connections are capped at max_connections_per_uid (64, each up to four
// descriptors and 16 streams), its identifications at 4.
const (
	abuseMaxRSS = 128 << 10 // KiB
	abuseMaxFDs = 512
)

// Must show: while a uid with socket access and no grant holds 10,000 idle
// connections, 10,000 half-open streams and 200 concurrent WhoAmI calls on
// fresh connections, authorized steps keep attesting with zero failures,
// and the agent's RSS and descriptors stay under the bounds above.
func TestAbuseFromAnotherUID(t *testing.T) {
	t.Parallel()
	ag := hardenedAgent(t, "hallmark-agent-abuse", "", "")
	pid := ag.Pid()
	rss0, fds0, err := procUsage(pid)
	require.NoError(t, err)

	abuser := abuserUser.as(t, exec.Command(roleBin(t), "-test.run=^$"))
	abuser.Env = append(os.Environ(), roleEnv+"=abuse", "HALLMARK_E2E_SOCKET="+ag.Socket,
		"HALLMARK_E2E_IDLE=10000", "HALLMARK_E2E_STREAMS=10000", "HALLMARK_E2E_WHOAMI=200")
	stdin, err := abuser.StdinPipe()
	require.NoError(t, err)
	out, err := abuser.StdoutPipe()
	require.NoError(t, err)
	abuser.Stderr = os.Stderr
	require.NoError(t, abuser.Start())
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { abuser.Wait(); close(done) }() //nolint:errcheck // the abuser's own status
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			abuser.Process.Kill() //nolint:errcheck // it did not stop when told
			<-done
		}
	})

	var maxRSS, maxFDs atomic.Int64
	stop := make(chan struct{})
	var sampled sync.WaitGroup
	sampled.Go(func() {
		for {
			if rss, fds, err := procUsage(pid); err == nil {
				if int64(rss) > maxRSS.Load() {
					maxRSS.Store(int64(rss))
				}
				if int64(fds) > maxFDs.Load() {
					maxFDs.Store(int64(fds))
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})

	// Authorized steps, from the moment the abuse starts until it is all
	// under way, and for a while after.
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ABUSING\n" {
			err = fmt.Errorf("abuser said %q", line)
		}
		ready <- err
	}()
	var attested, failed atomic.Int64
	var failures sync.Map
	step := func(i int) {
		ws := workspace(t, map[string]string{"out": fmt.Sprintf("step %d", i)})
		cmd := exec.Command(stack.Bins.CLI, "attest", "--socket", ag.Socket, "--step", "build", "--workspace", ws,
			"--product", "out", "--out", filepath.Join(ws, "b.json"))
		if o, err := cmd.CombinedOutput(); err != nil {
			failed.Add(1)
			failures.Store(i, string(o))
			return
		}
		attested.Add(1)
	}
	var steps sync.WaitGroup
	var next atomic.Int64
	done := make(chan struct{})
	for range 4 {
		steps.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				step(int(next.Add(1)))
			}
		})
	}
	select {
	case err := <-ready:
		require.NoError(t, err)
	case <-time.After(5 * time.Minute):
		t.Fatal("the abuse did not get under way in 5 minutes")
	}
	abusedAt := attested.Load()
	// Meanwhile a step of the abuser's uid, at its limit, is told why
	// its connections are refused; it tries for 10 s, then says so.
	type outcome struct {
		out  []byte
		err  error
		took time.Duration
	}
	refused := make(chan outcome, 1)
	go func() {
		start := time.Now()
		cmd := abuserUser.as(t, exec.Command(stack.Bins.Attest, "--socket", ag.Socket, "--step", "build", "--product", "out", "--", "true"))
		cmd.Dir = os.TempDir()
		out, err := cmd.CombinedOutput()
		refused <- outcome{out, err, time.Since(start)}
	}()
	time.Sleep(10 * time.Second) // everything held open
	r := <-refused
	close(done)
	steps.Wait()
	close(stop)
	sampled.Wait()

	failures.Range(func(k, v any) bool { t.Logf("step %v failed: %s", k, v); return true })
	t.Logf("authorized steps: %d attested (%d while the abuse got under way), %d failed", attested.Load(), abusedAt, failed.Load())
	t.Logf("agent: RSS %d -> max %d KiB (bound %d), descriptors %d -> max %d (bound %d)",
		rss0, maxRSS.Load(), abuseMaxRSS, fds0, maxFDs.Load(), abuseMaxFDs)
	t.Logf("connections refused at accept for limits: %.0f", counter(t, ag, `hallmark_agent_local_connections_refused_total{reason="limits"}`))
	t.Logf("a step of the abuser's uid, after %v: %s", r.took.Round(time.Millisecond), r.out)
	require.Error(t, r.err, "%s", r.out)
	require.Contains(t, string(r.out), fmt.Sprintf("kept refusing the connection: hallmark-agent: too many connections: uid %d has 64 open, the most one uid may (max_connections_per_uid = 64, max_connections = 1024)", abuserUser.uid))
	require.GreaterOrEqual(t, r.took, 10*time.Second, "tried again for 10 s")
	require.Contains(t, ag.Log(), `"reason":"limits"`, "the agent logs its refusals")
	require.Zero(t, failed.Load(), "authorized steps failed under abuse")
	require.Greater(t, attested.Load()-abusedAt, int64(10), "authorized steps went on while everything was held")
	require.Less(t, maxRSS.Load(), int64(abuseMaxRSS))
	require.Less(t, maxFDs.Load(), int64(abuseMaxFDs))
	// The health listener served throughout (the counter reads above
	// went through it) and still does.
	_, err = ag.Get(context.Background(), "/healthz")
	require.NoError(t, err)
}

// Must show: a connection that greets and then sits idle is closed after
// idle_timeout; one that never greets, after the handshake timeout.
func TestIdleConnectionsDropped(t *testing.T) {
	t.Parallel()
	ag := hardenedAgent(t, "hallmark-agent-idle", "", `idle_timeout = "2s"`)
	start := time.Now() // before both dials: the durations below are at least the agent's
	greeted, err := dialRaw(ag.Socket)
	require.NoError(t, err)
	defer greeted.Close()
	h := newH2(greeted)
	require.NoError(t, h.greet())
	silent, err := dialRaw(ag.Socket)
	require.NoError(t, err)
	defer silent.Close()

	require.NoError(t, greeted.SetReadDeadline(time.Now().Add(30*time.Second)))
	for {
		if _, err := h.fr.ReadFrame(); err != nil {
			break // GOAWAY, then the connection closes
		}
	}
	idle := time.Since(start)
	require.NoError(t, silent.SetReadDeadline(time.Now().Add(30*time.Second)))
	_, err = io.Copy(io.Discard, silent) // the server's SETTINGS, then the end
	require.NoError(t, err, "closed by the agent, not by the deadline")
	handshake := time.Since(start)
	t.Logf("greeted and idle: closed after %s; never greeted: closed after %s", idle.Round(time.Millisecond), handshake.Round(time.Millisecond))
	// idle_timeout 2s, and 10 s to greet from accept; the upper bounds
	// leave room for a loaded machine.
	require.Greater(t, idle, 1500*time.Millisecond, "closed before idle_timeout")
	require.Less(t, idle, 20*time.Second)
	require.Greater(t, handshake, 9*time.Second, "closed before its 10 s to greet")
	require.Less(t, handshake, 25*time.Second)
}

// Must show: `hallmark verify` names no builder, so it refuses to guess
// (exit 2, naming the flags); --insecure-any-builder accepts the bundle;
// a builder prefix verifies, another agent's is refused.
func TestVerifyRequiresIdentityConstraint(t *testing.T) {
	t.Parallel()
	ws := workspace(t, map[string]string{"app": "application"})
	bundle := filepath.Join(ws, "app.hallmark.json")
	cmd := exec.Command(stack.Bins.CLI, "attest", "--socket", stack.Agent.Socket, "--step", "build", "--wait-log",
		"--workspace", ws, "--product", "app", "--out", bundle)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootFile := filepath.Join(ws, "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, root, 0o644))
	verify := func(extra ...string) (int, string) {
		cmd := exec.Command(stack.Bins.CLI, append([]string{"verify", filepath.Join(ws, "app"), "--bundle", bundle, "--trusted-root", rootFile}, extra...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		require.NoError(t, err)
		return 0, string(out)
	}
	code, text := verify()
	require.Equal(t, 2, code, text)
	require.Contains(t, text, "--builder-id-prefix")
	require.Contains(t, text, "--insecure-any-builder")
	code, text = verify("--insecure-any-builder")
	require.Equal(t, 0, code, text)
	code, text = verify("--builder-id-prefix", "spiffe://example.org/hallmark/agent")
	require.Equal(t, 0, code, text)
	code, text = verify("--builder-id-prefix", "spiffe://example.org/hallmark/agent/node-2")
	require.Equal(t, 1, code, text)
	require.Contains(t, text, "policy check failed: builder")
}

// Must show: with the documented VM registration (which the harness ran:
// deploy/spire/register-vm.sh), the hallmark-agent binary gets the agent's
// SVID only as the daemons' user: started by a build step's user it gets
// none, and neither does another binary run as the daemons' user.
func TestVMRegistrationRefusesABuildStepsAgent(t *testing.T) {
	t.Parallel()
	// A build step on a VM can reach the Workload API socket: let this
	// one (the harness keeps SPIRE's directories closed).
	require.NoError(t, os.Chmod(filepath.Dir(stack.SPIRE.AgentSocket), 0o711))
	identity := func(cmd *exec.Cmd) (string, error) {
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	args := []string{"identity", "--workload-api-socket", stack.SPIRE.WorkloadAPIAddr(), "--timeout", "5s"}

	out, err := identity(exec.Command(stack.Bins.Agent, args...))
	require.NoError(t, err, "%s", out)
	require.Equal(t, harness.AgentID.String(), out, "the daemons' user gets the agent's SVID")

	out, err = identity(stepUser.as(t, exec.Command(stack.Bins.Agent, args...)))
	require.Error(t, err, "a build step's hallmark-agent got an SVID: %s", out)
	require.Contains(t, out, "no X509-SVID")
	t.Logf("as %s: %s", stepUser.name, out)

	copied := filepath.Join(t.TempDir(), "hallmark-agent")
	copyFile(t, stack.Bins.Agent, copied)
	out, err = identity(exec.Command(copied, args...))
	require.Error(t, err, "a copy of hallmark-agent elsewhere got an SVID: %s", out)
}

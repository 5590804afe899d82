package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Callers that change under the agent. The test binary re-executes itself
// in a role (env roleEnv) to be the caller; it holds the builder identity,
// so every refusal here comes from the process checks, not from policy.

const (
	roleEnv   = "HALLMARK_E2E_ROLE"
	pauseTime = 3 * time.Second
)

// runRole runs the caller roles; it returns false when no role is set.
func runRole() bool {
	role := os.Getenv(roleEnv)
	if role == "" {
		return false
	}
	socket, ws := os.Getenv("HALLMARK_E2E_SOCKET"), os.Getenv("HALLMARK_E2E_WORKSPACE")
	var err error
	switch role {
	case "exit-keeping-connection":
		err = exitKeepingConnection(socket, ws)
	case "exec-after-send":
		err = execAfterSend(socket, ws)
	case "send-fd":
		err = sendFD(socket)
	case "use-fd":
		err = useFD(ws)
	case "attest":
		err = roleAttest(socket, ws)
	case "exec-chain":
		err = roleExecChain(socket, ws)
	case "abuse":
		err = roleAbuse(socket)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "role:", err)
		os.Exit(2)
	}
	os.Exit(0)
	return true
}

// sendRequest dials socket, starts an AttestStep and returns the raw
// connection once the request is on its way.
func sendRequest(socket, ws string) (*net.UnixConn, error) {
	var raw *net.UnixConn
	conn, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
			if err == nil {
				raw = c.(*net.UnixConn)
			}
			return c, err
		}))
	if err != nil {
		return nil, err
	}
	go agentv1.NewWorkloadServiceClient(conn).AttestStep(context.Background(), //nolint:errcheck // never answered in time
		&agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}})
	time.Sleep(pauseTime / 3) // the request is with the agent, paused
	if raw == nil {
		return nil, fmt.Errorf("not connected")
	}
	return raw, nil
}

func rawFD(c *net.UnixConn) (int, error) {
	f, err := c.File() // a dup, kept open across exec below
	if err != nil {
		return -1, err
	}
	return int(f.Fd()), nil
}

// exitKeepingConnection sends a request, hands the connection to a child
// (inheritance keeps it open), and exits: its PID is free for reuse.
func exitKeepingConnection(socket, ws string) error {
	c, err := sendRequest(socket, ws)
	if err != nil {
		return err
	}
	f, err := c.File()
	if err != nil {
		return err
	}
	child := exec.Command("sleep", "30")
	child.ExtraFiles = []*os.File{f}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return child.Start()
}

// execAfterSend sends a request, then becomes /bin/sleep with the
// connection still open.
func execAfterSend(socket, ws string) error {
	c, err := sendRequest(socket, ws)
	if err != nil {
		return err
	}
	fd, err := rawFD(c)
	if err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
		return err
	}
	return syscall.Exec("/bin/sleep", []string{"sleep", "30"}, os.Environ())
}

// sendFD connects, passes the connection over fd 3, and stays alive.
func sendFD(socket string) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	f, err := c.(*net.UnixConn).File()
	if err != nil {
		return err
	}
	pair := os.NewFile(3, "pair")
	if err := unix.Sendmsg(int(pair.Fd()), []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		return err
	}
	time.Sleep(30 * time.Second)
	return nil
}

// useFD receives a connection on fd 3 and sends a request over it,
// printing the outcome.
func useFD(ws string) error {
	pair := os.NewFile(3, "pair")
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(pair.Fd()), buf, oob, 0)
	if err != nil {
		return err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("no fd received: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return err
	}
	nc, err := net.FileConn(os.NewFile(uintptr(fds[0]), "agent"))
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return nc, nil }))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := agentv1.NewWorkloadServiceClient(conn).AttestStep(ctx,
		&agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}})
	if err != nil {
		fmt.Printf("REFUSED %s: %s\n", status.Code(err), status.Convert(err).Message())
		return nil
	}
	fmt.Printf("BUNDLE %d bytes\n", len(resp.GetBundle()))
	return nil
}

// slowAgent is an agent whose attestations pause before the final caller
// check, which opens the window these tests need.
func slowAgent(t *testing.T) *harness.Service {
	t.Helper()
	ag, err := stack.SPIRE.StartAgent(context.Background(), stack.Bins.Agent, stack.Dir, "hallmark-agent-slow", harness.AgentOptions{
		ServerAddr: stack.Server.ServerAddr(), ServerID: harness.ServerID.String(),
		Policy: testPolicy(stack.Dir), Env: []string{"HALLMARK_AGENT_TEST_PAUSE_BEFORE_SIGN=" + pauseTime.String()},
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })
	return ag
}

func roleCmd(t *testing.T, bin, role, socket, ws string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role, "HALLMARK_E2E_SOCKET="+socket, "HALLMARK_E2E_WORKSPACE="+ws)
	cmd.Stderr = os.Stderr
	return cmd
}

// Must show: a caller that exits, its PID then reused by another process,
// is refused before signing, and before it is told anything its
// measurement found; so is one that exec()s another binary.
func TestAttestRefusesChangedCaller(t *testing.T) {
	t.Parallel()
	ag := slowAgent(t)
	self, err := os.Executable()
	require.NoError(t, err)
	ws := workspace(t, map[string]string{"out": "product"})

	t.Run("caller exits and its PID is reused", func(t *testing.T) {
		cmd := roleCmd(t, self, "exit-keeping-connection", ag.Socket, ws)
		require.NoError(t, cmd.Run())
		pid := cmd.Process.Pid
		reused := reusePID(t, pid)
		t.Logf("caller pid %d exited; reused by another process: %v", pid, reused)
		if os.Getuid() == 0 {
			require.True(t, reused, "as root the test steers the kernel to reuse the PID; it did not")
		}
		waitFor(t, "the agent to refuse the gone caller", 2*pauseTime, func() error {
			if !strings.Contains(ag.Log(), "caller changed since it connected: peercred: peer process is gone") {
				return fmt.Errorf("not refused yet")
			}
			return nil
		})
	})
	t.Run("caller exits: its failed measurement's detail is not told to whoever holds the connection", func(t *testing.T) {
		// The product is a directory holding a symbolic link out of the
		// workspace: the measurement fails, naming the link's target.
		ws := workspace(t, nil)
		require.NoError(t, os.MkdirAll(filepath.Join(ws, "out"), 0o755))
		require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(ws, "out", "passwd")))
		cmd := roleCmd(t, self, "exit-keeping-connection", ag.Socket, ws)
		require.NoError(t, cmd.Run())
		reusePID(t, cmd.Process.Pid)
		var denial string
		waitFor(t, "the agent to refuse the gone caller", 2*pauseTime, func() error {
			for _, line := range strings.Split(ag.Log(), "\n") {
				if strings.Contains(line, `"workspace":"`+ws+`"`) && strings.Contains(line, "attestation_denied") {
					denial = line
					return nil
				}
			}
			return fmt.Errorf("not refused yet")
		})
		require.Contains(t, denial, "caller changed since it connected: peercred: peer process is gone")
		require.NotContains(t, denial, "symbolic link to", "the measurement's detail went to a caller that is gone")
	})
	t.Run("caller execs another binary", func(t *testing.T) {
		cmd := roleCmd(t, self, "exec-after-send", ag.Socket, ws)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
		waitFor(t, "the agent to refuse the exec'd caller", 2*pauseTime, func() error {
			if !strings.Contains(ag.Log(), "caller changed since it connected: peercred: peer process exec'd since it connected") {
				return fmt.Errorf("not refused yet")
			}
			return nil
		})
	})
	require.Zero(t, counter(t, ag, `hallmark_agent_attestations_total{result="attested"}`), "nothing was signed")
	require.Equal(t, 3.0, counter(t, ag, `hallmark_agent_attestations_total{result="denied"}`))
}

// Must show: a connection opened by an allowed process and handed to an
// unregistered one, which then sends the request, is dropped.
func TestAttestRefusesHandedConnection(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	require.NoError(t, err)
	// A copy of this binary at another path has no SPIFFE ID.
	other := filepath.Join(t.TempDir(), "unregistered.test")
	copyFile(t, self, other)
	ws := workspace(t, map[string]string{"out": "product"})

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	require.NoError(t, err)
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer a.Close()
	defer b.Close()
	sender := roleCmd(t, self, "send-fd", stack.Agent.Socket, ws)
	sender.ExtraFiles = []*os.File{a}
	require.NoError(t, sender.Start())
	t.Cleanup(func() { sender.Process.Kill(); sender.Wait() }) //nolint:errcheck
	user := roleCmd(t, other, "use-fd", stack.Agent.Socket, ws)
	user.ExtraFiles = []*os.File{b}
	out, err := user.Output()
	require.NoError(t, err)
	t.Logf("handed connection: %s", strings.TrimSpace(string(out)))
	require.NotContains(t, string(out), "BUNDLE")
	require.Contains(t, string(out), "REFUSED")
	// Nothing was signed for this workspace (other tests attest on the
	// same agent meanwhile: the counter is no witness).
	for _, line := range strings.Split(stack.Agent.Log(), "\n") {
		if strings.Contains(line, `"workspace":"`+ws+`"`) {
			require.NotContains(t, line, `"event":"step_attested"`, "nothing was signed")
		}
	}
}

// reusePID makes the kernel hand pid to a new process (root only, through
// ns_last_pid) and reports whether it did.
func reusePID(t *testing.T, pid int) bool {
	t.Helper()
	for range 20 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Logf("cannot steer PIDs (%v): the caller's exit alone is what the agent must catch", err)
			return false
		}
		c := exec.Command("sleep", "10")
		require.NoError(t, c.Start())
		t.Cleanup(func() { c.Process.Kill(); c.Wait() }) //nolint:errcheck
		if c.Process.Pid == pid {
			return true
		}
	}
	return false
}

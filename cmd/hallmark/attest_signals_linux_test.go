package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

	"github.com/hallmark-dev/hallmark/internal/proctest"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// asCLIEnv makes the test binary run main, as the hallmark CLI, with its
// arguments.
const asCLIEnv = "HALLMARK_CLI_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asCLIEnv) != "" {
		main()
		os.Exit(0)
	}
	proctest.DefaultSignals() // the CLI starts with SIGHUP and SIGINT at their defaults
	os.Exit(m.Run())
}

// attestingAgent attests every step at once.
type attestingAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
}

func (attestingAgent) AttestStep(context.Context, *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	return &agentv1.AttestStepResponse{Bundle: []byte(`{"bundle":true}`), InvocationId: "inv"}, nil
}

// attestCLI is `hallmark attest`, through cobra and main, as a process
// of its own in a new directory, running script under sh as step b's
// command against an agent that attests at once. It is started, and has
// returned once script wrote "ready"; prepare may change it before.
func attestCLI(t *testing.T, script string, prepare func(*exec.Cmd)) (cmd *exec.Cmd, dir string, stderr *bytes.Buffer) {
	t.Helper()
	socket := serveAttestingAgent(t)
	dir = t.TempDir()
	stderr = new(bytes.Buffer)
	cmd = exec.Command(os.Args[0], "attest", "--step", "b", "--product", "p", "--socket", socket, "--", "sh", "-c", script)
	cmd.Dir, cmd.Stderr = dir, stderr
	cmd.Env = append(os.Environ(), asCLIEnv+"=1")
	proctest.OwnGroup(t, cmd)
	prepare(cmd)
	proctest.StartReady(t, cmd, dir, stderr)
	return cmd, dir, stderr
}

// serveAttestingAgent serves attestingAgent on a new unix socket until
// the test ends, and returns the socket's path.
func serveAttestingAgent(t *testing.T) string {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "hm") // short: a socket path has ~100 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	socket := filepath.Join(sockDir, "agent.sock")
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := grpc.NewServer()
	agentv1.RegisterWorkloadServiceServer(srv, attestingAgent{})
	go srv.Serve(ln) //nolint:errcheck // stopped below
	t.Cleanup(srv.Stop)
	return socket
}

func sigName(sig syscall.Signal) string { return strings.TrimPrefix(unix.SignalName(sig), "SIG") }

// Must show, for `hallmark attest` as a process, where main also cancels
// its context on SIGINT and SIGTERM (internal/attestcmd shows the same
// for hallmark-attest, and for attestcmd.Run without cobra): a signal
// that comes while the command runs goes to it; when the command handles
// it and exits 0, SIGHUP and SIGQUIT leave the step attested, and SIGINT
// and SIGTERM (a job cancelled) do not: exit 1, no bundle, the signal
// named.
func TestAttestSignalDuringTheCommand(t *testing.T) {
	for _, tc := range []struct {
		sig      syscall.Signal
		attested bool
	}{
		{syscall.SIGHUP, true},
		{syscall.SIGQUIT, true},
		{syscall.SIGINT, false},
		{syscall.SIGTERM, false},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			cmd, dir, stderr := attestCLI(t, fmt.Sprintf(`trap 'echo got > got; exit 0' %s; echo > ready; while :; do sleep 0.01; done`, sigName(tc.sig)), func(*exec.Cmd) {})
			require.NoError(t, cmd.Process.Signal(tc.sig))
			code := proctest.ExitCode(t, cmd)
			got, err := os.ReadFile(filepath.Join(dir, "got"))
			require.NoError(t, err, "the command never saw %v: %s", tc.sig, stderr)
			require.Equal(t, "got\n", string(got))
			bundle := filepath.Join(dir, "b.hallmark.json")
			if tc.attested {
				require.Equal(t, 0, code, "stderr: %s", stderr)
				require.FileExists(t, bundle)
				return
			}
			require.Equal(t, 1, code, "stderr: %s", stderr)
			require.NoFileExists(t, bundle)
			require.Equal(t, fmt.Sprintf("hallmark: %v signal received; step b not attested\n", tc.sig), stderr.String())
		})
	}
}

// Must show, as GitHub Actions cancels a job (SIGINT, then SIGTERM): the
// SIGTERM that comes after SIGINT ended the step, while the command still
// runs, goes to it too, and `hallmark attest` exits with its status.
func TestAttestSignalsAfterTheStepEnded(t *testing.T) {
	cmd, dir, stderr := attestCLI(t, `trap 'echo INT >> got' INT; trap 'echo TERM >> got; exit 3' TERM; echo > ready; while :; do sleep 0.01; done`, func(*exec.Cmd) {})
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	// The trap runs once the foreground sleep ends.
	require.Eventually(t, func() bool {
		got, _ := os.ReadFile(filepath.Join(dir, "got"))
		return string(got) == "INT\n"
	}, 10*time.Second, 5*time.Millisecond, "the command never saw SIGINT: %s", stderr)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 3, proctest.ExitCode(t, cmd), "stderr: %s", stderr)
	got, err := os.ReadFile(filepath.Join(dir, "got"))
	require.NoError(t, err)
	require.Equal(t, "INT\nTERM\n", string(got))
	require.Equal(t, "hallmark: sh exited with status 3; step b not attested\n", stderr.String())
}

// Must show, as nohup (SIGHUP) and a shell's background job (SIGINT)
// start it: a signal `hallmark attest` was started ignoring stays ignored
// by its command (the kernel's SigIgn mask of the command holds it), and,
// sent while the command runs, ends neither: the command exits with its
// own status and the step is attested. main registers SIGINT for cobra's
// context, which would stop it being ignored.
func TestAttestIgnoredSignalStaysIgnored(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			// The command records its mask, then runs until told to stop
			// (a file, not a signal) and exits 0.
			cmd, dir, stderr := attestCLI(t, `grep '^SigIgn:' /proc/$$/status > ign; echo > ready; while [ ! -e stop ]; do sleep 0.01; done`, func(cmd *exec.Cmd) {
				sh, err := exec.LookPath("sh")
				require.NoError(t, err)
				// As nohup and the shell do: ignore it, then exec.
				cmd.Args = append([]string{"sh", "-c", `trap "" ` + sigName(sig) + `; exec "$@"`, "sh", cmd.Path}, cmd.Args[1:]...)
				cmd.Path = sh
			})
			ign, err := os.ReadFile(filepath.Join(dir, "ign"))
			require.NoError(t, err)
			mask, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(string(ign), "SigIgn:")), 16, 64)
			require.NoError(t, err, "%q", ign)
			require.NotZero(t, mask&(1<<(sig-1)), "the command does not ignore %v: SigIgn %s", sig, ign)
			require.NoError(t, cmd.Process.Signal(sig))
			time.Sleep(50 * time.Millisecond) // time for the signal to do what it would
			require.NoError(t, os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644))
			require.Equal(t, 0, proctest.ExitCode(t, cmd), "stderr: %s", stderr)
			require.FileExists(t, filepath.Join(dir, "b.hallmark.json"))
		})
	}
}

// Must show: a SIGINT that comes before attestcmd.Run (here: once main
// has registered the forwarded signals, while cobra parses the command
// line) ends the step all the same: it waits for Run, whose dispatch ends
// the step, and nothing is attested. The command either never starts or
// gets the signal (a `sleep 30` that got it ends at once). Before, main
// had only its context see such a signal, two goroutine hops from
// cancelling it, and a Run that got ahead of the cancellation started the
// command, which then ran to its end without the signal. In-process, so
// that the signal lands in that window every time.
func TestAttestSignalBeforeRun(t *testing.T) {
	socket := serveAttestingAgent(t)
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	args := []string{"attest", "--step", "b", "--product", filepath.Join(dir, "p"), "--out", filepath.Join(dir, "b.hallmark.json"), "--socket", socket, "--", "sh", "-c", "echo > " + ran + "; exec sleep 30"}
	c := newCLI(args)
	defer c.stop()
	require.NotNil(t, c.attestSignals, "hallmark attest takes the signals main registered")
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGINT))
	require.Eventually(t, func() bool { return len(c.attestSignals) == 1 }, 5*time.Second, time.Millisecond, "the SIGINT never reached the channel")

	c.root.SetArgs(args)
	// attestcmd.OSEnv writes to os.Stderr, as the CLI does.
	r, w, err := os.Pipe()
	require.NoError(t, err)
	stderr := os.Stderr
	os.Stderr = w
	start := time.Now()
	// Not c.ctx: the step must end by the channel alone.
	err = c.root.ExecuteContext(context.Background())
	took := time.Since(start)
	os.Stderr = stderr
	w.Close()
	said, readErr := io.ReadAll(r)
	require.NoError(t, readErr)
	require.Less(t, took, 15*time.Second, "the command ran without the signal")
	var ee *exitError
	require.ErrorAs(t, err, &ee)
	require.NotZero(t, ee.code)
	require.Contains(t, string(said), "not attested", "stderr: %s", said)
	require.NoFileExists(t, filepath.Join(dir, "b.hallmark.json"))
	// Which of the two depends on whether Run's dispatch took the signal
	// before the command started: then it never starts; else the command
	// gets the signal and exits with 128+SIGINT, before or after it wrote
	// "ran" (sh's exit status for a signal, for sh or for sleep).
	require.Regexp(t, `^hallmark: (interrupt signal received|sh exited with status 130); step b not attested\n$`, string(said))
	if strings.Contains(string(said), "interrupt signal received") {
		require.NoFileExists(t, ran, "the command ran after the step was cancelled")
	}
}

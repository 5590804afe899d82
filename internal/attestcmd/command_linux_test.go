package attestcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/hallmark-dev/hallmark/internal/proctest"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// commandHelperEnv makes the test binary run the command itself (see
// TestMain), so that a test can signal it as a CI runner would: as a
// process of its own.
const commandHelperEnv = "HALLMARK_ATTESTCMD_TEST_AS_COMMAND"

// refuseEnv names a system call the kernel refuses to the command's
// process, as a sandbox may (see refuse).
const refuseEnv = "HALLMARK_ATTESTCMD_TEST_REFUSE"

// fsizeEnv is the helper process's file size limit (RLIMIT_FSIZE) in
// bytes, if not 0: a write past it fails, as on a full disk.
const fsizeEnv = "HALLMARK_ATTESTCMD_TEST_FSIZE"

// runRegistersEnv makes the helper process call Run with no
// Env.Signals, as `hallmark attest` does, instead of Main.
const runRegistersEnv = "HALLMARK_ATTESTCMD_TEST_RUN_REGISTERS"

// registrations are the two ways the signals are registered: for the
// process's life (Main, hallmark-attest) and for Run's (hallmark attest).
var registrations = []struct {
	name string
	env  []string
}{{"Main", nil}, {"Run", []string{runRegistersEnv + "=1"}}}

func TestMain(m *testing.M) {
	if os.Getenv(commandHelperEnv) != "" {
		if n, _ := strconv.ParseUint(os.Getenv(fsizeEnv), 10, 64); n > 0 {
			if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
		}
		if what := os.Getenv(refuseEnv); what != "" {
			if err := refuse(what); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
		}
		if os.Getenv(runRegistersEnv) != "" {
			// As `hallmark attest` runs it: Run registers the signals.
			os.Exit(Run(context.Background(), "hallmark-attest", os.Args[1:], OSEnv()))
		}
		os.Exit(Main("hallmark-attest")) // cmd/hallmark-attest's main
	}
	proctest.DefaultSignals() // the helpers start with SIGHUP and SIGINT at their defaults
	os.Exit(m.Run())
}

// asCommand is hallmark-attest, as a process of its own in a new
// directory, to run command and attest step b to a socket that accepts
// connections and answers nothing.
func asCommand(t *testing.T, command ...string) (cmd *exec.Cmd, dir string, stderr *bytes.Buffer) {
	t.Helper()
	dir, socket := silentSocket(t)
	return asCommandOn(t, dir, socket, command...)
}

// asCommandOn is asCommand in dir, attesting to the agent at socket.
func asCommandOn(t *testing.T, dir, socket string, command ...string) (cmd *exec.Cmd, _ string, stderr *bytes.Buffer) {
	t.Helper()
	stderr = new(bytes.Buffer)
	cmd = exec.Command(os.Args[0], append([]string{"--step", "b", "--product", "p", "--socket", socket, "--"}, command...)...)
	cmd.Dir, cmd.Stderr = dir, stderr
	cmd.Env = append(os.Environ(), commandHelperEnv+"=1")
	proctest.OwnGroup(t, cmd)
	return cmd, dir, stderr
}

// startAsCommand starts hallmark-attest (asCommand) to run script under
// sh, and returns once script wrote "ready".
func startAsCommand(t *testing.T, script string, env ...string) (cmd *exec.Cmd, dir string, stderr *bytes.Buffer) {
	t.Helper()
	cmd, dir, stderr = asCommand(t, "sh", "-c", script)
	cmd.Env = append(cmd.Env, env...)
	return startReady(t, cmd, dir, stderr)
}

// startReady starts cmd and returns once its command wrote "ready" in
// dir.
func startReady(t *testing.T, cmd *exec.Cmd, dir string, stderr *bytes.Buffer) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	proctest.StartReady(t, cmd, dir, stderr)
	return cmd, dir, stderr
}

// exitCode is proctest.ExitCode.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	return proctest.ExitCode(t, cmd)
}

// Must show: the step's command gets the signals a CI runner sends to
// hallmark-attest when it cancels a job (SIGINT, SIGTERM, SIGHUP,
// SIGQUIT), hallmark-attest waits for it and exits with its code: the
// command's own when it handles the signal, 128+signal when it dies of it;
// a step whose command did not succeed is not attested.
func TestCommandGetsTheSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT} {
		t.Run(fmt.Sprintf("%v handled", sig), func(t *testing.T) {
			// The trap runs once the foreground sleep ends.
			cmd, dir, stderr := startAsCommand(t, fmt.Sprintf(`trap 'echo got > got; exit 7' %s; echo > ready; while :; do sleep 0.01; done`, strings.TrimPrefix(unix.SignalName(sig), "SIG")))
			require.NoError(t, cmd.Process.Signal(sig))
			require.Equal(t, 7, exitCode(t, cmd), "stderr: %s", stderr)
			got, err := os.ReadFile(filepath.Join(dir, "got"))
			require.NoError(t, err, "the command never saw %v", sig)
			require.Equal(t, "got\n", string(got))
			require.Equal(t, "hallmark-attest: sh exited with status 7; step b not attested\n", stderr.String())
		})
		t.Run(fmt.Sprintf("%v kills", sig), func(t *testing.T) {
			// sh execs sleep, which dies of the signal.
			cmd, _, stderr := startAsCommand(t, `echo > ready; exec sleep 30`)
			require.NoError(t, cmd.Process.Signal(sig))
			want := 128 + int(sig)
			require.Equal(t, want, exitCode(t, cmd), "stderr: %s", stderr)
			require.Equal(t, fmt.Sprintf("hallmark-attest: sh exited with status %d; step b not attested\n", want), stderr.String())
		})
	}
}

// stallingAgent answers none of the calls it stalls: it tells called and
// waits for the call to end. It stalls AttestStep, or with stallLog
// attests at once, leaving the entry unlogged, and stalls GetBundle.
type stallingAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	called   chan<- struct{}
	stallLog bool
}

func (a stallingAgent) AttestStep(ctx context.Context, _ *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	if a.stallLog {
		return &agentv1.AttestStepResponse{InvocationId: "inv"}, nil
	}
	return nil, a.stall(ctx)
}

func (a stallingAgent) GetBundle(ctx context.Context, _ *agentv1.GetBundleRequest) (*agentv1.GetBundleResponse, error) {
	return nil, a.stall(ctx)
}

func (a stallingAgent) stall(ctx context.Context) error {
	a.called <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

// startStalled starts hallmark-attest (asCommandOn, `-- true`, as prepare
// leaves it) against a stallingAgent, and returns once the agent holds the
// call it stalls.
func startStalled(t *testing.T, stallLog bool, prepare func(*exec.Cmd)) (cmd *exec.Cmd, dir string, stderr *bytes.Buffer) {
	t.Helper()
	called := make(chan struct{}, 1)
	socket := serveUnix(t, func(s *grpc.Server) {
		agentv1.RegisterWorkloadServiceServer(s, stallingAgent{called: called, stallLog: stallLog})
	})
	cmd, dir, stderr = asCommandOn(t, t.TempDir(), socket, "true")
	prepare(cmd)
	require.NoError(t, cmd.Start())
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatalf("the agent was never asked: %s", stderr)
	}
	return cmd, dir, stderr
}

// Must show, as a CI runner cancelling a job does it: a signal that comes
// once the command has exited, while the agent attests, ends
// hallmark-attest at once with exit code 1 and writes no bundle, whichever
// of the four it is. SIGHUP and SIGQUIT did not do this before Main
// registered them for the process's life: SIGHUP killed it by the signal,
// SIGQUIT with a goroutine dump.
func TestSignalWhileTheAgentAttests(t *testing.T) {
	for _, sig := range Forwarded {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, dir, stderr := startStalled(t, false, func(*exec.Cmd) {})
			require.NoError(t, cmd.Process.Signal(sig))
			require.Equal(t, 1, exitCode(t, cmd), "stderr: %s", stderr)
			require.NoFileExists(t, filepath.Join(dir, "b.hallmark.json"))
			require.Equal(t, fmt.Sprintf("hallmark-attest: %v signal received; step b not attested\n", sig), stderr.String())
		})
	}
}

// ignoring makes cmd start as a process that ignores sig, as nohup (SIGHUP)
// or a shell's background job (SIGINT) does: sh ignores it and execs cmd.
func ignoring(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) {
	t.Helper()
	sh, err := exec.LookPath("sh")
	require.NoError(t, err)
	cmd.Args = append([]string{"sh", "-c", `trap "" ` + strings.TrimPrefix(unix.SignalName(sig), "SIG") + `; exec "$@"`, "sh", cmd.Path}, cmd.Args[1:]...)
	cmd.Path = sh
}

// Must show: a signal while --wait-log waits ends the wait, naming the
// signal, and writes no bundle.
func TestSignalWhileWaitingForTheLog(t *testing.T) {
	cmd, dir, stderr := startStalled(t, true, func(cmd *exec.Cmd) {
		cmd.Args = append([]string{cmd.Args[0], "--wait-log"}, cmd.Args[1:]...)
	})
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Equal(t, 1, exitCode(t, cmd), "stderr: %s", stderr)
	require.NoFileExists(t, filepath.Join(dir, "b.hallmark.json"))
	require.Equal(t, "hallmark-attest: attested (invocation inv) but not logged: hangup signal received\n", stderr.String())
}

// Must show, as a CI runner and a user at a shell send them: a signal
// that comes while the command runs goes to it; when the command handles
// it and exits 0, SIGHUP (a reload) and SIGQUIT (a JVM's thread dump)
// leave the step attested, and SIGINT and SIGTERM (a job cancelled) do
// not: exit 1, no bundle, the signal named.
func TestSignalDuringTheCommand(t *testing.T) {
	for _, tc := range []struct {
		sig      syscall.Signal
		attested bool
	}{
		{syscall.SIGHUP, true},
		{syscall.SIGQUIT, true},
		{syscall.SIGINT, false},
		{syscall.SIGTERM, false},
	} {
		for _, reg := range registrations {
			t.Run(tc.sig.String()+" "+reg.name, func(t *testing.T) {
				agent := &bundleAgent{}
				socket := serveUnix(t, func(s *grpc.Server) { agentv1.RegisterWorkloadServiceServer(s, agent) })
				dir := t.TempDir()
				cmd, _, stderr := asCommandOn(t, dir, socket, "sh", "-c",
					fmt.Sprintf(`trap 'echo got > got; exit 0' %s; echo > ready; while :; do sleep 0.01; done`, strings.TrimPrefix(unix.SignalName(tc.sig), "SIG")))
				cmd.Env = append(cmd.Env, reg.env...)
				startReady(t, cmd, dir, stderr)
				require.NoError(t, cmd.Process.Signal(tc.sig))
				code := exitCode(t, cmd)
				got, err := os.ReadFile(filepath.Join(dir, "got"))
				require.NoError(t, err, "the command never saw %v", tc.sig)
				require.Equal(t, "got\n", string(got))
				if tc.attested {
					require.Equal(t, 0, code, "stderr: %s", stderr)
					require.FileExists(t, filepath.Join(dir, "b.hallmark.json"))
					return
				}
				require.Equal(t, 1, code, "stderr: %s", stderr)
				require.NoFileExists(t, filepath.Join(dir, "b.hallmark.json"))
				require.Equal(t, fmt.Sprintf("hallmark-attest: %v signal received; step b not attested\n", tc.sig), stderr.String())
			})
		}
	}
}

// Must show, as GitHub Actions cancels a job (SIGINT, then SIGTERM): a
// signal that comes after one ended the step, while the command still
// runs, goes to it as well.
func TestSignalsAfterTheStepEnded(t *testing.T) {
	for _, reg := range registrations {
		t.Run(reg.name, func(t *testing.T) {
			cmd, dir, stderr := asCommand(t, "sh", "-c", `trap 'echo INT >> got' INT; trap 'echo TERM >> got; exit 3' TERM; echo > ready; while :; do sleep 0.01; done`)
			cmd.Env = append(cmd.Env, reg.env...)
			startReady(t, cmd, dir, stderr)
			require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
			// The trap runs once the foreground sleep ends.
			require.Eventually(t, func() bool {
				got, _ := os.ReadFile(filepath.Join(dir, "got"))
				return string(got) == "INT\n"
			}, 10*time.Second, 5*time.Millisecond, "the command never saw SIGINT")
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			require.Equal(t, 3, exitCode(t, cmd), "stderr: %s", stderr)
			got, err := os.ReadFile(filepath.Join(dir, "got"))
			require.NoError(t, err)
			require.Equal(t, "INT\nTERM\n", string(got))
			require.Equal(t, "hallmark-attest: sh exited with status 3; step b not attested\n", stderr.String())
		})
	}
}

// Must show: a signal that comes before the command started ends the
// step there: the command does not run. (A signal during its start waits
// for it and goes to it: stepSignals.start holds the dispatch meanwhile.)
func TestSignalBeforeTheCommand(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	in := make(chan os.Signal, 1)
	sigs, stop := newStepSignals(in, cancel)
	defer stop()
	in <- syscall.SIGHUP
	require.Eventually(t, func() bool { return ctx.Err() != nil }, 10*time.Second, time.Millisecond)
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	code, err := runCommand(ctx, Env{Stdout: io.Discard, Stderr: io.Discard}, []string{"sh", "-c", "echo > " + ran}, sigs)
	require.EqualError(t, err, "hangup signal received")
	require.Equal(t, 127, code)
	require.NoFileExists(t, ran)
}

// Must show, as nohup and a shell's background job use it: a signal
// hallmark-attest was started ignoring stays ignored. Sent while the
// command runs, it neither reaches the command (which exits with its own
// status, not 128+signal) nor ends hallmark-attest; sent while the agent
// attests, it does not end the attestation. Before, hallmark-attest
// registered the signal for os/signal, which stopped it being ignored,
// and forwarded it: the command died of it (exit 129 under nohup). The
// same signal not ignored is forwarded (TestCommandGetsTheSignals) and
// ends the attestation (TestSignalWhileTheAgentAttests).
func TestIgnoredSignalStaysIgnored(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		for _, reg := range registrations {
			t.Run(fmt.Sprintf("%v while the command runs %s", sig, reg.name), func(t *testing.T) {
				// Runs about half a second unless a signal kills it.
				cmd, dir, stderr := asCommand(t, "sh", "-c", `grep SigIgn /proc/self/status > sigign; echo > ready; i=0; while [ $i -lt 50 ]; do sleep 0.01; i=$((i+1)); done; exit 7`)
				cmd.Env = append(cmd.Env, reg.env...)
				ignoring(t, cmd, sig)
				startReady(t, cmd, dir, stderr)
				require.NoError(t, cmd.Process.Signal(sig))
				require.Equal(t, 7, exitCode(t, cmd), "stderr: %s", stderr)
				require.Equal(t, "hallmark-attest: sh exited with status 7; step b not attested\n", stderr.String())
				// The command's processes ignore it too: a hangup sent to the
				// whole group, as a terminal's is, would spare them.
				line, err := os.ReadFile(filepath.Join(dir, "sigign"))
				require.NoError(t, err)
				mask, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(string(line), "SigIgn:")), 16, 64)
				require.NoError(t, err, "%q", line)
				require.NotZero(t, mask&(1<<(uint(sig)-1)), "the command does not ignore %v: SigIgn %q", sig, line)
			})
		}
		t.Run(fmt.Sprintf("%v while the agent attests", sig), func(t *testing.T) {
			cmd, _, stderr := startStalled(t, false, func(cmd *exec.Cmd) { ignoring(t, cmd, sig) })
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			require.NoError(t, cmd.Process.Signal(sig))
			select {
			case err := <-done:
				t.Fatalf("hallmark-attest ended on an ignored %v: %v: %s", sig, err, stderr)
			case <-time.After(300 * time.Millisecond):
			}
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM)) // not ignored: ends it
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("still running 10s after SIGTERM")
			}
			require.Equal(t, 1, cmd.ProcessState.ExitCode(), "stderr: %s", stderr)
			require.Equal(t, "hallmark-attest: terminated signal received; step b not attested\n", stderr.String())
		})
	}
}

// Must show: the command's exit status and stdio pass through, and a
// command that cannot start is 127 with the reason, whether it is looked
// up in PATH or named by its path.
func TestCommandExitStatus(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "not-executable")
	require.NoError(t, os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644))

	for _, tc := range []struct {
		name           string
		command        []string
		code           int
		stdout, stderr string
	}{
		{"status 3", []string{"sh", "-c", "exit 3"}, 3, "", "hallmark-attest: sh exited with status 3; step b not attested\n"},
		{"stdio", []string{"sh", "-c", `read x; echo "out $x"; echo "err $x" >&2; exit 4`}, 4, "out in\n", "err in\nhallmark-attest: sh exited with status 4; step b not attested\n"},
		{"status 255", []string{"sh", "-c", "exit 255"}, 255, "", "hallmark-attest: sh exited with status 255; step b not attested\n"},
		{"killed", []string{"sh", "-c", "kill -KILL $$"}, 137, "", "hallmark-attest: sh exited with status 137; step b not attested\n"},
		{"not in PATH", []string{"hallmark-no-such-command"}, 127, "",
			"hallmark-attest: exec: \"hallmark-no-such-command\": executable file not found in $PATH\n" +
				"hallmark-attest: hallmark-no-such-command exited with status 127; step b not attested\n"},
		{"empty name", []string{""}, 127, "",
			"hallmark-attest: exec: no command\n" +
				"hallmark-attest:  exited with status 127; step b not attested\n"},
		{"not executable", []string{notExec}, 127, "",
			"hallmark-attest: fork/exec " + notExec + ": permission denied\n" +
				"hallmark-attest: " + notExec + " exited with status 127; step b not attested\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, _, stderr := asCommand(t, tc.command...)
			var stdout bytes.Buffer
			cmd.Stdin, cmd.Stdout = strings.NewReader("in\n"), &stdout
			require.NoError(t, cmd.Start())
			require.Equal(t, tc.code, exitCode(t, cmd), "stderr: %s", stderr)
			require.Equal(t, tc.stderr, stderr.String())
			require.Equal(t, tc.stdout, stdout.String())
		})
	}
}

// Must show: the bundle's file holds what it held before or the whole
// bundle, never part of one (internal/wholefile). A write cut short (here
// by RLIMIT_FSIZE, as a full disk would) leaves the previous bundle as it
// was and nothing beside it, and the step fails naming the invocation and
// where to find the bundle: in the log.
func TestBundleWrittenWholeOrNotAtAll(t *testing.T) {
	const digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	bundle := bytes.Repeat([]byte("bundle "), 10_000) // 70 kB
	agent := &bundleAgent{attested: &agentv1.AttestStepResponse{
		Bundle: bundle, InvocationId: "inv", Logged: true,
		Subjects: []*agentv1.Subject{{Name: "p", Sha256: digest}},
	}}
	socket := serveUnix(t, func(s *grpc.Server) { agentv1.RegisterWorkloadServiceServer(s, agent) })
	attest := func(t *testing.T, dir string, fsize int, out string) (code int, stderr string) {
		t.Helper()
		args := []string{os.Args[0], "--step", "b", "--product", "p", "--socket", socket, "--out", out, "--", "true"}
		var errOut bytes.Buffer
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir, cmd.Stderr = dir, &errOut
		cmd.Env = append(os.Environ(), commandHelperEnv+"=1", fsizeEnv+"="+strconv.Itoa(fsize))
		require.NoError(t, cmd.Start())
		return exitCode(t, cmd), errOut.String()
	}
	for _, tc := range []struct {
		name       string
		fsize      int // RLIMIT_FSIZE, if not 0
		wantCode   int
		wantStderr []string
		want       []byte
	}{
		{name: "replaced whole", want: bundle},
		{name: "cut short", fsize: 4096, wantCode: 1, wantStderr: []string{
			"hallmark-attest: attested (invocation inv, logged) but the bundle was not written: ",
			"file too large",
			"; `hallmark search --digest sha256:" + digest + "` fetches it from the log, with any other attestation of p\n",
		}, want: []byte("old")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "b.hallmark.json")
			require.NoError(t, os.WriteFile(out, []byte("old"), 0o600))
			code, stderr := attest(t, dir, tc.fsize, out)
			require.Equal(t, tc.wantCode, code, "stderr: %s", stderr)
			for _, w := range tc.wantStderr {
				require.Contains(t, stderr, w)
			}
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			fi, err := os.Stat(out)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the mode it had")
			beside, err := filepath.Glob(filepath.Join(dir, ".*"))
			require.NoError(t, err)
			require.Empty(t, beside, "nothing left beside it")
		})
	}
}

// Must show, as an attacker would try it: a program planted in the
// workspace does not run in place of the one PATH names, even where PATH
// has a relative entry (os/exec's ErrDot).
func TestCommandNotFoundInCurrentDirectory(t *testing.T) {
	cmd, dir, stderr := asCommand(t, "hallmark-planted")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hallmark-planted"), []byte("#!/bin/sh\necho > ran\n"), 0o755))
	cmd.Env = append(cmd.Env, "PATH=.:"+os.Getenv("PATH"))
	require.NoError(t, cmd.Start())
	require.Equal(t, 127, exitCode(t, cmd), "stderr: %s", stderr)
	require.Contains(t, stderr.String(), `hallmark-attest: exec: "hallmark-planted": cannot run executable found relative to current directory`)
	require.NoFileExists(t, filepath.Join(dir, "ran"))
}

// Must show: a build step's command (stdio are files) starts with a pidfd
// from clone(CLONE_PIDFD), not through os/exec, whose first start in a
// process forks a throwaway child; os/exec starts what needs it.
func TestStartPidfd(t *testing.T) {
	if _, err := unix.PidfdOpen(os.Getpid(), 0); errors.Is(err, unix.ENOSYS) {
		t.Skip("a kernel without pidfds (before 5.3)")
	}
	files := Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	buffered := files
	buffered.Stdout = new(bytes.Buffer)
	noStdin := files
	noStdin.Stdin = nil
	for _, tc := range []struct {
		name    string
		env     Env
		command string
		pidfd   bool
	}{
		{"stdio files", files, "true", true},
		{"stdout a buffer", buffered, "true", false},
		{"no stdin", noStdin, "true", false},
		{"not in PATH", files, "hallmark-no-such-command", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := startPidfd(command(tc.env, []string{tc.command}))
			require.Equal(t, tc.pidfd, ok)
			if !ok {
				return
			}
			require.GreaterOrEqual(t, c.(*pidfdChild).pidfd, 0)
			ws, err := c.wait()
			c.release()
			require.NoError(t, err)
			require.True(t, ws.Exited())
			require.Zero(t, ws.ExitStatus())
		})
	}
}

// reuseHelperEnv makes TestCommandSignalMissesReusedPid run its check, in
// a pid namespace of its own.
const reuseHelperEnv = "HALLMARK_ATTESTCMD_TEST_PID_REUSE"

// Must show, as an attacker would try it: where signals go by pid (a
// kernel before 5.2 or a sandbox that refuses pidfd_send_signal), one
// forwarded as the command exits does not reach a process that took its
// pid. Forwarding can send it after wait returned (it stops a moment
// later); the pid is handed on at once through ns_last_pid, in a pid
// namespace where nothing else starts.
func TestCommandSignalMissesReusedPid(t *testing.T) {
	if os.Getenv(reuseHelperEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCommandSignalMissesReusedPid$", "-test.v")
		cmd.Env = append(os.Environ(), reuseHelperEnv+"=1")
		// A user namespace too, whose root may set ns_last_pid, for a
		// user other than root.
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Skipf("no user and pid namespace here: %v", err)
		}
		require.NoError(t, cmd.Wait(), "%s", &out)
		require.Contains(t, out.String(), "--- PASS: TestCommandSignalMissesReusedPid")
		return
	}
	// os/exec's pidfd probe forks once per process: done before pids count.
	require.NoError(t, exec.Command("true").Run())
	c, ok := startPidfd(command(Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}, []string{"true"}))
	require.True(t, ok)
	p := c.(*pidfdChild)
	c.release()
	p.pidfd = -1 // signals by pid
	_, err := c.wait()
	require.NoError(t, err)

	// A thread the runtime starts may take the pid first: try again.
	var victim *exec.Cmd
	for try := 0; victim == nil; try++ {
		require.Less(t, try, 20, "pid %d was not handed on", p.pid)
		require.NoError(t, os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(p.pid-1)), 0))
		cmd := exec.Command("sleep", "30")
		require.NoError(t, cmd.Start())
		if cmd.Process.Pid == p.pid {
			victim = cmd
		} else {
			cmd.Process.Kill() //nolint:errcheck // reaped below
			cmd.Wait()         //nolint:errcheck // killed
		}
	}
	c.signal(syscall.SIGTERM)
	require.NoError(t, victim.Process.Kill())
	require.Error(t, victim.Wait())
	ws := victim.ProcessState.Sys().(syscall.WaitStatus)
	require.Equal(t, syscall.SIGKILL, ws.Signal(), "the process that took the command's pid got its signal")
}

// Must show: where a sandbox refuses clone(CLONE_PIDFD) or
// pidfd_send_signal (a seccomp filter older than pidfds, as container
// runtimes have installed), the command still starts and still gets the
// signals.
func TestCommandSandboxRefusesPidfd(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("refuse reads clone's flags as amd64 and arm64 pass them")
	}
	for _, what := range []string{"clone_pidfd", "pidfd_send_signal"} {
		t.Run(what, func(t *testing.T) {
			cmd, dir, stderr := startAsCommand(t, `trap 'echo got > got; exit 7' TERM; echo > ready; while :; do sleep 0.01; done`, refuseEnv+"="+what)
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			require.Equal(t, 7, exitCode(t, cmd), "stderr: %s", stderr)
			_, err := os.ReadFile(filepath.Join(dir, "got"))
			require.NoError(t, err, "the command never saw SIGTERM")
		})
	}
}

// refuse installs a seccomp filter on this process and what it starts
// that fails with EPERM either clone with CLONE_PIDFD ("clone_pidfd") or
// pidfd_send_signal.
func refuse(what string) error {
	const eperm = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	load := func(off uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}
	}
	ret := func(v uint32) unix.SockFilter { return unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: v} }
	// Offsets in struct seccomp_data: nr at 0, the low half of args[0] at
	// 16 (little-endian).
	filter := map[string][]unix.SockFilter{
		"clone_pidfd": {
			load(0),
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_CLONE, Jf: 3},
			load(16),
			{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, K: unix.CLONE_PIDFD, Jf: 1},
			ret(eperm),
			ret(unix.SECCOMP_RET_ALLOW),
		},
		"pidfd_send_signal": {
			load(0),
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_PIDFD_SEND_SIGNAL, Jf: 1},
			ret(eperm),
			ret(unix.SECCOMP_RET_ALLOW),
		},
	}[what]
	if filter == nil {
		return fmt.Errorf("refuse: unknown %q", what)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("refuse: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	// TSYNC: every thread of the process, whichever forks the command.
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("refuse: seccomp: %w", errno)
	}
	return nil
}

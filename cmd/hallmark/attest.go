package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/internal/limits"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

const defaultSocket = "/run/hallmark/agent.sock"

// exitError carries a wrapped command's exit code out of cobra.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("command exited with status %d", e.code) }

func socketFlag(cmd *cobra.Command, socket *string) {
	def := os.Getenv("HALLMARK_AGENT_SOCKET")
	if def == "" {
		def = defaultSocket
	}
	cmd.Flags().StringVar(socket, "socket", def, "the agent's local API socket (env HALLMARK_AGENT_SOCKET)")
}

func dialAgent(socket string) (agentv1.WorkloadServiceClient, func(), error) {
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, nil, fmt.Errorf("no agent at %s: is hallmark-agent running? (set --socket or HALLMARK_AGENT_SOCKET)", socket)
	}
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// An answer holds a bundle (at most limits.MaxBundleBytes) and
		// the list of its subjects, about as large again.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4*limits.MaxBundleBytes)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return dialAgentSocket(ctx, socket)
		}))
	if err != nil {
		return nil, nil, err
	}
	return agentv1.NewWorkloadServiceClient(conn), func() { conn.Close() }, nil
}

// dialAgentSocket connects to socket, retrying for up to 10 s while the agent's
// queue of connections to accept is full (EAGAIN): a burst of other
// connections, which the agent closes at once when over their uid's limit,
// must not fail a step.
func dialAgentSocket(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	deadline := time.Now().Add(10 * time.Second)
	for wait := time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		c, err := d.DialContext(ctx, "unix", socket)
		if err == nil || !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			return c, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// explain turns an agent error into what the user should know.
func explain(socket string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.PermissionDenied:
		return fmt.Errorf("refused: %s (run `hallmark whoami` to see how the agent identifies you)", st.Message())
	case codes.Unavailable:
		// gRPC's own failure to reach the socket, not the agent's
		// answer (which may quote a failure to reach the server).
		if strings.HasPrefix(st.Message(), "connection error") {
			return fmt.Errorf("no agent at %s: is hallmark-agent running? (%s)", socket, st.Message())
		}
		return fmt.Errorf("agent unavailable: %s", st.Message())
	case codes.ResourceExhausted:
		return fmt.Errorf("request too large: %s", st.Message())
	default:
		return fmt.Errorf("%s: %s", strings.ToLower(st.Code().String()), st.Message())
	}
}

func attestCmd() *cobra.Command {
	var (
		socket, step, out, workspace string
		products, materials, claims  []string
		waitLog                      bool
		waitTimeout                  time.Duration
		progress                     = progressAuto
	)
	cmd := &cobra.Command{
		Use:   "attest --step NAME [--material PATH]... [--product PATH]... [--out FILE] [-- CMD ARGS...]",
		Short: "Have the local agent attest a build step",
		Long: `With a command, run it (stdio passed through, signals forwarded) and, when
it succeeds, have the agent attest the step; the exit code is the command's.
Without one, attest the given products now. The agent measures the files
itself; paths are relative to the workspace (default: the current directory).
When the workspace, or a product or material directory, is a git work tree,
the agent reads the repository itself and records the commit, its tree,
whether the tree is clean, the branch and the remote URL. CI context (GitHub
Actions, GitLab CI) and --claim values are recorded as your claim.

While the agent hashes large products, a line on stderr shows how far it
got: with --progress auto (the default) only when stderr is a terminal and
hashing takes more than half a second; "always" shows it from the start, as
plain lines when stderr is not a terminal; "never" shows nothing.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if step == "" {
				return errors.New("--step is required")
			}
			if len(products) == 0 {
				return errors.New("at least one --product is required")
			}
			callerClaims, err := callerClaims(os.LookupEnv, claims)
			if err != nil {
				return err
			}
			if workspace == "" {
				wd, err := os.Getwd()
				if err != nil {
					return err
				}
				workspace = wd
			}
			ws, err := filepath.Abs(workspace)
			if err != nil {
				return err
			}
			// The agent resolves no symbolic link in the workspace: send
			// the directory's real path, as this process sees it.
			if ws, err = filepath.EvalSymlinks(ws); err != nil {
				return fmt.Errorf("--workspace: %w", err)
			}
			client, closeConn, err := dialAgent(socket)
			if err != nil {
				return err
			}
			defer closeConn()
			started := time.Now()
			if len(args) > 0 {
				if code := runCommand(args); code != 0 {
					fmt.Fprintf(os.Stderr, "hallmark: %s exited with status %d; step %s not attested\n", args[0], code, step)
					return &exitError{code: code}
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			stderr := cmd.ErrOrStderr()
			display := newProgressDisplay(stderr, isTerminal(stderr), progress, time.Now)
			resp, err := attestStep(ctx, client, &agentv1.AttestStepRequest{
				Step: step, Workspace: ws, Products: products, Materials: materials,
				StartedOn: timestamppb.New(started), Command: args, CallerClaims: callerClaims,
			}, display)
			if err != nil {
				return explain(socket, err)
			}
			bundle, logged := resp.GetBundle(), resp.GetLogged()
			if waitLog && !logged {
				wctx, wcancel := context.WithTimeout(cmd.Context(), waitTimeout)
				defer wcancel()
				got, err := client.GetBundle(wctx, &agentv1.GetBundleRequest{InvocationId: resp.GetInvocationId(), Wait: true})
				if err != nil {
					return fmt.Errorf("attested (invocation %s) but not logged: %w", resp.GetInvocationId(), explain(socket, err))
				}
				bundle, logged = got.GetBundle(), got.GetLogged()
			}
			if out == "" {
				out = step + ".hallmark.json"
			}
			if out == "-" {
				_, err = cmd.OutOrStdout().Write(append(bundle, '\n'))
				return err
			}
			if err := os.WriteFile(out, bundle, 0o644); err != nil {
				return err
			}
			state := "logged"
			if !logged {
				state = "queued for the log; `--wait-log` waits for it"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "hallmark: attested step %s (%d products, invocation %s, %s) -> %s\n",
				step, len(resp.GetSubjects()), resp.GetInvocationId(), state, out)
			return nil
		},
	}
	socketFlag(cmd, &socket)
	cmd.Flags().StringVar(&step, "step", "", "the step's name, as policy grants it")
	cmd.Flags().StringArrayVar(&products, "product", nil, "a file or directory the step produced (repeatable)")
	cmd.Flags().StringArrayVar(&materials, "material", nil, "a file or directory the step consumed (repeatable)")
	cmd.Flags().StringArrayVar(&claims, "claim", nil, "CI context to record as your claim, KEY=VALUE (repeatable; GitHub Actions and GitLab CI context is added from the environment)")
	cmd.Flags().StringVar(&out, "out", "", `where to write the bundle (default STEP.hallmark.json; "-" for stdout)`)
	cmd.Flags().StringVar(&workspace, "workspace", "", "the directory paths are relative to (default: current directory)")
	cmd.Flags().BoolVar(&waitLog, "wait-log", false, "wait until the attestation is in the transparency log and write the complete bundle")
	cmd.Flags().DurationVar(&waitTimeout, "wait-log-timeout", 2*time.Minute, "how long --wait-log waits")
	cmd.Flags().Var(&progress, "progress", "show hashing progress on stderr: auto (on a terminal, when slow), always or never")
	return cmd
}

// runCommand runs args with stdio passed through and SIGINT/SIGTERM/SIGHUP
// forwarded, and returns its exit code (128+signal when killed).
func runCommand(args []string) int {
	c := exec.Command(args[0], args[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := c.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "hallmark: %v\n", err)
		return 127
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				c.Process.Signal(s) //nolint:errcheck // it may have exited
			case <-done:
				return
			}
		}
	}()
	err := c.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

func whoamiCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show how the local agent identifies you and what policy allows you",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, closeConn, err := dialAgent(socket)
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			resp, err := client.WhoAmI(ctx, &agentv1.WhoAmIRequest{})
			if err != nil {
				return explain(socket, err)
			}
			printWhoAmI(cmd.OutOrStdout(), resp)
			return nil
		},
	}
	socketFlag(cmd, &socket)
	return cmd
}

func printWhoAmI(w io.Writer, r *agentv1.WhoAmIResponse) {
	wl := r.GetWorkload()
	fmt.Fprintf(w, "agent:       %s\n", r.GetAgentSpiffeId())
	fmt.Fprintf(w, "you:         pid %d, uid %d, gid %d\n", wl.GetPid(), wl.GetUid(), wl.GetGid())
	ids := "(none: no SPIRE registration matches you)"
	if len(wl.GetSpiffeIds()) > 0 {
		ids = strings.Join(wl.GetSpiffeIds(), ", ")
	}
	fmt.Fprintf(w, "SPIFFE IDs:  %s\n", ids)
	fmt.Fprintf(w, "selectors:   %s\n", strings.Join(wl.GetSelectors(), ", "))
	if len(r.GetGrants()) == 0 {
		fmt.Fprintln(w, "allowed:     nothing (no policy rule matches you)")
		return
	}
	for _, g := range r.GetGrants() {
		fmt.Fprintf(w, "rule %q:  steps %s in %s\n", g.GetRule(), strings.Join(g.GetSteps(), ", "), strings.Join(g.GetWorkspaceRoots(), ", "))
	}
}

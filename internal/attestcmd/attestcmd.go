// Package attestcmd is the command a build step runs to have the local
// agent attest it: `hallmark attest` and the light `hallmark-attest`,
// which share it flag for flag. It runs the step's command, meanwhile
// having the agent identify it (early.go), then asks the agent over its
// socket (internal/agentclient) to attest the step, and writes the bundle.
//
// It links nothing heavy (no grpc-go, no cobra, no verification code): a
// build step starts it once per step, and its start-up is most of what
// the step pays for Hallmark (make bench, figure "fresh").
package attestcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	"github.com/hallmark-dev/hallmark/internal/wholefile"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/hallmark/agent.sock"

// Usage is the command's synopsis, after the command ("hallmark attest",
// "hallmark-attest").
const Usage = "--step NAME [--material PATH]... [--product PATH]... [--out FILE] [-- CMD ARGS...]"

// Help is what the command does, for its help text.
const Help = `With a command, run it (stdio passed through, signals forwarded) and, when
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
plain lines when stderr is not a terminal; "never" shows nothing.`

// Env is what the command reads and writes besides its arguments.
type Env struct {
	Stdin          *os.File
	Stdout, Stderr io.Writer
	LookupEnv      func(string) (string, bool)
	// Signals delivers the forwarded signals the process receives
	// (Forwardable(Forwarded...)), registered by the caller, for one Run;
	// nil has Run register them while it runs. Either way, while the
	// step's command runs each goes to it, and SIGINT and SIGTERM also end
	// the step; at any other time each ends the step (stepSignals).
	Signals <-chan os.Signal
}

// OSEnv is the process's own.
func OSEnv() Env {
	return Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, LookupEnv: os.LookupEnv}
}

// Main is hallmark-attest's main: it runs the step that the process's
// arguments name and returns the exit code, as Run does, with the
// forwarded signals (Forwardable) registered once, for the life of the
// process (Env.Signals).
//
// os/signal turns a signal on and off by a round trip to a thread of its
// own. Registering them for the command's run and again for the rest, and
// ending the registrations before exit, cost 0.05 to 0.13 ms of CPU a step
// more than this does: 1 to 3% of hallmark-attest's with `-- true`, on a
// 2-core KVM guest, in three sets of 5 to 7 alternating runs of 300 steps
// each (medians).
func Main(command string) int {
	env := OSEnv()
	env.Signals = NotifyForwardable() // never stopped: it ends with the process
	return Run(context.Background(), command, os.Args[1:], env)
}

// Run runs the command with args (those after the command) and returns
// the process's exit code: the step command's own when it failed, 2 for
// a usage error, 1 when the attestation failed, 0 when it is written
// (and for --help, which writes the help to stdout). command is how the
// command is invoked ("hallmark attest", "hallmark-attest"); its first
// word prefixes messages.
func Run(ctx context.Context, command string, args []string, env Env) int {
	name, _, _ := strings.Cut(command, " ")
	cfg, err := parse(command, args, env)
	if errors.Is(err, flag.ErrHelp) {
		WriteHelp(env.Stdout, command, env)
		return 0
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
		return 2
	}
	cfg.name = name
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	in := env.Signals
	if in == nil {
		if own := NotifyForwardable(); own != nil {
			defer signal.Stop(own)
			in = own
		}
	}
	sigs, stopSignals := newStepSignals(in, cancel)
	code, err := cfg.run(ctx, env, sigs)
	stopSignals()
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
	}
	return code
}

// WriteHelp writes the command's help to w: its synopsis, what it does
// and its flags.
func WriteHelp(w io.Writer, command string, env Env) {
	fmt.Fprintf(w, "Usage: %s %s\n\n%s\n\nFlags:\n", command, Usage, Help)
	fs := flags(command, env, &config{progress: progressAuto}, new(repeated), new(repeated), new(repeated))
	fs.SetOutput(w)
	fs.PrintDefaults()
}

type config struct {
	name, socket, step, out, workspace string
	products, materials                []string
	claims                             map[string]string
	waitLog                            bool
	waitTimeout                        time.Duration
	progress                           progressMode
	command                            []string
}

// repeated is a flag that may be given more than once.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func parse(command string, args []string, env Env) (*config, error) {
	cfg := &config{progress: progressAuto}
	var products, materials, claimFlags repeated
	fs := flags(command, env, cfg, &products, &materials, &claimFlags)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (see %s --help)", err, command)
	}
	cfg.products, cfg.materials, cfg.command = products, materials, fs.Args()
	if cfg.step == "" {
		return nil, errors.New("--step is required")
	}
	if len(cfg.products) == 0 {
		return nil, errors.New("at least one --product is required")
	}
	var err error
	if cfg.claims, err = callerClaims(env.LookupEnv, claimFlags); err != nil {
		return nil, err
	}
	return cfg, nil
}

// flags declares the command's flags, which set cfg and the lists given.
// The flag set writes nothing: Run reports its errors, once, and
// WriteHelp its help.
func flags(command string, env Env, cfg *config, products, materials, claimFlags *repeated) *flag.FlagSet {
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	def, ok := env.LookupEnv("HALLMARK_AGENT_SOCKET")
	if !ok || def == "" {
		def = DefaultSocket
	}
	fs.StringVar(&cfg.socket, "socket", def, "the agent's local API `socket` (env HALLMARK_AGENT_SOCKET)")
	fs.StringVar(&cfg.step, "step", "", "the step's `name`, as policy grants it")
	fs.Var(products, "product", "a file or directory the step produced (repeatable)")
	fs.Var(materials, "material", "a file or directory the step consumed (repeatable)")
	fs.Var(claimFlags, "claim", "CI context to record as your claim, `KEY=VALUE` (repeatable; GitHub Actions and GitLab CI context is added from the environment)")
	fs.StringVar(&cfg.out, "out", "", `where to write the bundle (default STEP.hallmark.json; "-" for stdout)`)
	fs.StringVar(&cfg.workspace, "workspace", "", "the `directory` paths are relative to (default: current directory)")
	fs.BoolVar(&cfg.waitLog, "wait-log", false, "wait until the attestation is in the transparency log and write the complete bundle")
	fs.DurationVar(&cfg.waitTimeout, "wait-log-timeout", 2*time.Minute, "how long --wait-log waits")
	fs.Var(&cfg.progress, "progress", "show hashing progress on stderr: auto (on a terminal, when slow), always or never")
	return fs
}

func (cfg *config) run(ctx context.Context, env Env, sigs *stepSignals) (int, error) {
	ws := cfg.workspace
	if ws == "" {
		wd, err := os.Getwd()
		if err != nil {
			return 1, err
		}
		ws = wd
	}
	ws, err := filepath.Abs(ws)
	if err != nil {
		return 1, err
	}
	// The agent resolves no symbolic link in the workspace: send the
	// directory's real path, as this process sees it.
	if ws, err = filepath.EvalSymlinks(ws); err != nil {
		return 1, fmt.Errorf("--workspace: %w", err)
	}
	if !agentclient.IsSocket(cfg.socket) {
		return 1, fmt.Errorf("no agent at %s: is hallmark-agent running? (set --socket or HALLMARK_AGENT_SOCKET)", cfg.socket)
	}
	started := time.Now()
	var pre *early
	if len(cfg.command) > 0 {
		// The agent identifies this process while the command runs, on a
		// connection kept for at most EarlyKeep (early.go).
		pre = identifyEarly(ctx, cfg.socket, EarlyKeep)
		defer pre.close()
		code, err := runCommand(ctx, env, cfg.command, sigs)
		switch {
		case err != nil && ctx.Err() != nil:
			return 1, cfg.notAttested(ctx, err) // a signal before the command started
		case err != nil:
			fmt.Fprintf(env.Stderr, "%s: %v\n", cfg.name, err)
		}
		if code != 0 {
			fmt.Fprintf(env.Stderr, "%s: %s exited with status %d; step %s not attested\n", cfg.name, cfg.command[0], code, cfg.step)
			return code, nil
		}
	}
	// Otherwise connected once the command is done: the agent closes idle
	// connections, and a step's command may run for hours.
	var client *agentclient.Client
	if pre != nil {
		client = pre.take(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	display := newProgressDisplay(env.Stderr, isTerminal(env.Stderr), cfg.progress, time.Now)
	req := &agentclient.AttestStepRequest{
		Step: cfg.step, Workspace: ws, Products: cfg.products, Materials: cfg.materials,
		StartedOn: started, Command: cfg.command, CallerClaims: cfg.claims,
	}
	var resp *agentclient.AttestStepResponse
	if client != nil {
		resp, err = attestStep(actx, client, req, display)
		if watchLost(err) {
			// Refused for the early connection alone (the exec watch
			// lost events while it was open): refused at identify or
			// confirm, before sign (agent/localapi.go attestStep), so
			// nothing was signed; a new connection is identified afresh.
			client.Close()
			client = nil
		}
	}
	if client == nil {
		client, resp, err = attestOnNewConnection(actx, cfg.socket, req, display)
	}
	if client != nil {
		defer client.Close()
	}
	if err != nil {
		return 1, cfg.notAttested(ctx, err)
	}
	bundle, logged := resp.Bundle, resp.Logged
	if cfg.waitLog && !logged {
		wctx, wcancel := context.WithTimeout(ctx, cfg.waitTimeout)
		defer wcancel()
		got, err := waitForLog(wctx, client, cfg.socket, resp.InvocationID)
		if err != nil {
			return 1, fmt.Errorf("attested (invocation %s) but not logged: %w", resp.InvocationID, cfg.reason(ctx, err))
		}
		bundle, logged = got.Bundle, got.Logged
	}
	out := cfg.out
	if out == "" {
		out = cfg.step + ".hallmark.json"
	}
	if out == "-" {
		if _, err := env.Stdout.Write(append(bundle, '\n')); err != nil {
			return 1, err
		}
		return 0, nil
	}
	if err := wholefile.Write(out, bundle); err != nil {
		return 1, bundleNotWritten(resp, logged, err)
	}
	state := logState(logged)
	if !logged {
		state += "; `--wait-log` waits for it"
	}
	fmt.Fprintf(env.Stderr, "%s: attested step %s (%d products, invocation %s, %s) -> %s\n",
		cfg.name, cfg.step, len(resp.Subjects), resp.InvocationID, state, out)
	return 0, nil
}

// bundleNotWritten says that the step was attested but its bundle not
// written (err), and where to find it: in the log, by a product's digest.
func bundleNotWritten(resp *agentclient.AttestStepResponse, logged bool, err error) error {
	hint := ""
	if len(resp.Subjects) > 0 {
		hint = fmt.Sprintf("; `hallmark search --digest sha256:%s` fetches it from the log, with any other attestation of %s",
			resp.Subjects[0].SHA256, resp.Subjects[0].Name)
		if !logged {
			hint += ", once it is logged"
		}
	}
	return fmt.Errorf("attested (invocation %s, %s) but the bundle was not written: %w%s", resp.InvocationID, logState(logged), err, hint)
}

// logState is where an attestation stands with the log.
func logState(logged bool) string {
	if logged {
		return "logged"
	}
	return "queued for the log"
}

// reason is why a call failed: what ended ctx when it ended the call (the
// signal received), else err as the user should read it.
func (cfg *config) reason(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return Explain(cfg.socket, err)
}

// notAttested is reason, saying that the step was not attested when a
// signal ended it.
func (cfg *config) notAttested(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w; step %s not attested", cfg.reason(ctx, err), cfg.step)
	}
	return cfg.reason(ctx, err)
}

// waitForLog asks the agent for invocation id's bundle once it is
// logged. GetBundle only reads, so when the connection ends under it
// (the agent closes idle connections with GOAWAY, and all of them when it
// restarts) it is asked once more, on a new connection.
func waitForLog(ctx context.Context, c *agentclient.Client, socket, id string) (*agentclient.GetBundleResponse, error) {
	got, err := c.GetBundle(ctx, id, true)
	if !agentclient.ConnectionLost(err) || ctx.Err() != nil {
		return got, err
	}
	again, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer again.Close()
	return again.GetBundle(ctx, id, true)
}

// retryUnanswered is how long attestOnNewConnection tries again while the
// agent closes its connections unanswered, as DialSocket waits out a full
// queue of connections to accept.
const retryUnanswered = 10 * time.Second

// attestOnNewConnection dials the agent and asks it to attest req. While
// the agent closes the connection before greeting it, or refuses it at
// accept, nothing was sent but this client's own greeting (open waits for
// the agent's before it writes a request, and opens nothing after a
// GOAWAY), so nothing was processed (agentclient.Unserved), and it tries
// again; it starts no try after retryUnanswered (one under way may take
// longer: DialSocket's wait, the greeting's). The agent refuses a
// connection at accept when the uid is at max_connections_per_uid (other
// steps' early identifications, attestations and --wait-log waits) or all
// uids at max_connections, or when identifying the peer failed; a refusal
// that no try mends (the peer's pid not visible to the agent) is not
// Unserved. The client it returns, if any, is the caller's to close.
func attestOnNewConnection(ctx context.Context, socket string, req *agentclient.AttestStepRequest, d *progressDisplay) (*agentclient.Client, *agentclient.AttestStepResponse, error) {
	deadline := time.Now().Add(retryUnanswered)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		client, err := agentclient.Dial(ctx, socket)
		var resp *agentclient.AttestStepResponse
		if err == nil {
			resp, err = attestStep(ctx, client, req, d)
		}
		if !agentclient.Unserved(err) || time.Now().After(deadline) {
			return client, resp, err
		}
		if client != nil {
			client.Close()
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, nil, err
		}
	}
}

// watchLost reports whether err is the agent's refusal of a call because
// it can no longer vouch that the connection's process did not exec
// since it connected: its exec watch lost events (peercred), which taints
// every connection open then, whatever their processes did.
func watchLost(err error) bool {
	var e *agentclient.Error
	return errors.As(err, &e) && e.Code == agentclient.PermissionDenied && strings.Contains(e.Message, "dropped process events")
}

// attestStep asks the agent to attest req, showing its progress on d; a
// nil d makes the plain unary call. An agent without AttestStepStream
// (older than this CLI) is asked with AttestStep instead: a stream it
// does not know signs nothing.
func attestStep(ctx context.Context, c *agentclient.Client, req *agentclient.AttestStepRequest, d *progressDisplay) (*agentclient.AttestStepResponse, error) {
	if d == nil {
		return c.AttestStep(ctx, req)
	}
	defer d.finish()
	resp, err := c.AttestStepStream(ctx, req, d.update)
	if agentclient.CodeOf(err) == agentclient.Unimplemented {
		d.finish()
		return c.AttestStep(ctx, req)
	}
	return resp, err
}

// Explain turns an agent's error into what the user should know.
func Explain(socket string, err error) error {
	var e *agentclient.Error
	if !errors.As(err, &e) {
		return err
	}
	if why, ok := agentclient.Refused(err); ok {
		return fmt.Errorf("the agent at %s kept refusing the connection: %s", socket, why)
	}
	if agentclient.Unserved(err) {
		return fmt.Errorf("the agent at %s kept closing the connection before answering: it is stopping, or it is older than this client and your uid or all uids are at its connection limits (max_connections_per_uid, max_connections) or it cannot identify this process; its metric hallmark_agent_local_connections_refused_total says which (%s)", socket, e.Message)
	}
	switch e.Code {
	case agentclient.Unauthenticated:
		return fmt.Errorf("refused by the agent at %s: %s", socket, e.Message)
	case agentclient.PermissionDenied:
		return fmt.Errorf("refused: %s (run `hallmark whoami` to see how the agent identifies you)", e.Message)
	case agentclient.Unavailable:
		// A failure to reach the socket, not the agent's answer (which
		// may quote a failure to reach the server).
		if strings.HasPrefix(e.Message, "connection error") {
			return fmt.Errorf("no agent at %s: is hallmark-agent running? (%s)", socket, e.Message)
		}
		return fmt.Errorf("agent unavailable: %s", e.Message)
	case agentclient.ResourceExhausted:
		return fmt.Errorf("request too large: %s", e.Message)
	default:
		return fmt.Errorf("%s: %s", strings.ToLower(e.Code.String()), e.Message)
	}
}

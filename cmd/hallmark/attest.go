package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	"github.com/hallmark-dev/hallmark/internal/attestcmd"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

const defaultSocket = attestcmd.DefaultSocket

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

// agentConn is a grpc-go connection to the agent's local API.
type agentConn struct {
	agentv1.WorkloadServiceClient
	socket  string
	conn    *grpc.ClientConn
	refused atomic.Pointer[string] // why the agent refused a connection at accept, the last time
}

func dialAgent(socket string) (*agentConn, error) {
	if !agentclient.IsSocket(socket) {
		return nil, fmt.Errorf("no agent at %s: is hallmark-agent running? (set --socket or HALLMARK_AGENT_SOCKET)", socket)
	}
	a := &agentConn{socket: socket}
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(agentclient.MaxMessageBytes)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			f, err := agentclient.DialSocket(ctx, socket)
			if err != nil {
				return nil, err
			}
			defer f.Close() // FileConn holds its own descriptor
			nc, err := net.FileConn(f)
			if err != nil {
				return nil, err
			}
			gc, why, err := readGreeting(ctx, nc)
			if why != "" {
				a.refused.Store(&why)
			}
			return gc, err
		}))
	if err != nil {
		return nil, err
	}
	a.WorkloadServiceClient, a.conn = agentv1.NewWorkloadServiceClient(conn), conn
	return a, nil
}

func (a *agentConn) Close() error { return a.conn.Close() }

// explain turns the error of a call to the agent into what the user should
// know: why the agent refused the connection, when it did.
func (a *agentConn) explain(err error) error {
	if why := a.refused.Load(); why != nil && status.Code(err) == codes.Unavailable {
		return fmt.Errorf("the agent at %s refused the connection: %s", a.socket, *why)
	}
	return explain(a.socket, err)
}

// readGreeting reads the first frame the agent sends on nc, its greeting
// or its refusal (a GOAWAY, agent/refusal.go), before grpc-go does: grpc-go
// would only say that the first frame was not SETTINGS. The agent greets
// first, before it reads anything. A refusal fails the dial, returning
// why; a greeting is given back to grpc-go first. ctx's end, or its
// deadline, ends the wait (without a deadline, agentclient.GreetingTimeout).
func readGreeting(ctx context.Context, nc net.Conn) (net.Conn, string, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(agentclient.GreetingTimeout)
	}
	nc.SetReadDeadline(deadline)                                                   //nolint:errcheck // the read fails then
	stop := context.AfterFunc(ctx, func() { nc.SetReadDeadline(time.Unix(1, 0)) }) //nolint:errcheck // as above
	first, err := agentclient.ReadFirstFrame(nc)
	if !stop() {
		err = ctx.Err() // ended the read, or would fail the dial anyway
	}
	if err != nil {
		nc.Close()
		return nil, "", err
	}
	if why, _, ok := agentclient.ParseRefusal(first); ok {
		nc.Close()
		return nil, why, errors.New("the agent refused the connection: " + why)
	}
	nc.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
	return &greetedConn{Conn: nc, first: first}, "", nil
}

// greetedConn is the agent's connection with its first frame read
// already, given back before the rest.
type greetedConn struct {
	net.Conn
	first []byte
}

func (c *greetedConn) Read(b []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(b, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// explain turns an agent error into what the user should know.
func explain(socket string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return attestcmd.Explain(socket, &agentclient.Error{Code: agentclient.Code(st.Code()), Message: st.Message()})
}

// attestCmd is internal/attestcmd, flag for flag the light hallmark-attest.
func attestCmd(signals <-chan os.Signal) *cobra.Command {
	cmd := &cobra.Command{
		Use:                "attest " + attestcmd.Usage,
		Short:              "Have the local agent attest a build step",
		Long:               attestcmd.Help,
		DisableFlagParsing: true, // attestcmd parses them
		RunE: func(cmd *cobra.Command, args []string) error {
			// The forwarded signals come on the channel main registered
			// before cobra parsed anything (newCLI); without one, Run
			// registers them itself.
			env := attestcmd.OSEnv()
			env.Signals = signals
			if code := attestcmd.Run(cmd.Context(), "hallmark attest", args, env); code != 0 {
				return &exitError{code: code} // already reported
			}
			return nil
		},
	}
	// `hallmark help attest` shows attestcmd's flags, which cobra does
	// not know.
	cmd.SetHelpFunc(func(cmd *cobra.Command, _ []string) {
		attestcmd.WriteHelp(cmd.OutOrStdout(), "hallmark attest", attestcmd.OSEnv())
	})
	return cmd
}

func whoamiCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show how the local agent identifies you and what policy allows you",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			agent, err := dialAgent(socket)
			if err != nil {
				return err
			}
			defer agent.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			resp, err := agent.WhoAmI(ctx, &agentv1.WhoAmIRequest{})
			if err != nil {
				return agent.explain(err)
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

// Command hallmark is the CLI for build steps, security teams and consumers.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/agent/agentstatus"
	"github.com/hallmark-dev/hallmark/internal/attestcmd"
)

func main() {
	c := newCLI(os.Args[1:])
	defer c.stop()
	if err := c.root.ExecuteContext(c.ctx); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code) // the wrapped command's status, already reported
		}
		fmt.Fprintln(os.Stderr, "hallmark:", err)
		os.Exit(1)
	}
}

// cli is the hallmark command and the context to run it in, with the
// signals it handles registered; stop ends the registrations.
type cli struct {
	ctx           context.Context
	root          *cobra.Command
	attestSignals chan os.Signal // for `hallmark attest`, else nil
	stop          func()
}

// newCLI sets the command up for args (the process's arguments after its
// name).
//
// `hallmark attest` takes the forwarded signals on one channel registered
// here, before cobra parses the command line, as hallmark-attest does
// (attestcmd.NotifyForwardable): a signal that comes before the step's
// Run ends the step all the same, before its command starts or, if the
// command has started, by going to it (TestAttestSignalBeforeRun). Every
// other command's context is cancelled on SIGINT and SIGTERM.
func newCLI(args []string) cli {
	if cmd, _, err := rootCmd(nil).Find(args); err == nil && cmd.Name() == "attest" {
		// Never nil: Go's runtime does not keep SIGTERM ignored (Forwardable).
		sigs := attestcmd.NotifyForwardable()
		return cli{ctx: context.Background(), root: rootCmd(sigs), attestSignals: sigs, stop: func() { signal.Stop(sigs) }}
	}
	ctx, stop := signalContext(context.Background())
	return cli{ctx: ctx, root: rootCmd(nil), stop: stop}
}

// signalContext is ctx, cancelled on SIGINT or SIGTERM. A signal this
// process was started ignoring stays ignored (attestcmd.Forwardable).
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	sigs := attestcmd.Forwardable(os.Interrupt, syscall.SIGTERM)
	if len(sigs) == 0 {
		return ctx, func() {}
	}
	return signal.NotifyContext(ctx, sigs...)
}

// rootCmd is the hallmark command; attestSignals is what `hallmark
// attest` takes the forwarded signals from (nil: it registers them).
func rootCmd(attestSignals <-chan os.Signal) *cobra.Command {
	root := &cobra.Command{Use: "hallmark", Short: "Attest build steps and verify what they produced", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(statusCmd(), attestCmd(attestSignals), whoamiCmd(), verifyCmd(), searchCmd(), doctorCmd(), adminCmd())
	return root
}

func statusCmd() *cobra.Command {
	var addr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the local agent's identity and signing certificate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := fetchStatus(cmd.Context(), addr)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	def := os.Getenv("HALLMARK_AGENT_HEALTH_ADDR")
	if def == "" {
		def = "127.0.0.1:8081"
	}
	cmd.Flags().StringVar(&addr, "agent-health-addr", def, "the agent's health_address (env HALLMARK_AGENT_HEALTH_ADDR)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func fetchStatus(ctx context.Context, addr string) (agentstatus.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return agentstatus.Status{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return agentstatus.Status{}, fmt.Errorf("no agent status at %s: is hallmark-agent running with health_address set? (%w)", addr, err)
	}
	defer resp.Body.Close()
	var st agentstatus.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return agentstatus.Status{}, fmt.Errorf("agent status: %w", err)
	}
	return st, nil
}

func printStatus(w io.Writer, st agentstatus.Status) {
	fmt.Fprintf(w, "agent SPIFFE ID:   %s\n", st.SPIFFEID)
	if st.SVIDNotAfter != nil {
		fmt.Fprintf(w, "X509-SVID:         serial %s, expires %s\n", st.SVIDSerial, st.SVIDNotAfter.Format(time.RFC3339))
	}
	reach := "reachable"
	if !st.Server.Reachable {
		reach = "NOT reachable"
	}
	fmt.Fprintf(w, "server:            %s (%s), %s\n", st.Server.Address, st.Server.SPIFFEID, reach)
	if st.Server.LastError != "" {
		fmt.Fprintf(w, "last server error: %s\n", st.Server.LastError)
	}
	printOutbox(w, st.Outbox)
	c := st.SigningCertificate
	if c == nil {
		fmt.Fprintln(w, "signing cert:      none held: attestation is unavailable")
		return
	}
	fmt.Fprintf(w, "signing cert:      serial %s\n", c.Serial)
	fmt.Fprintf(w, "  issuer:          %s\n", c.Issuer)
	fmt.Fprintf(w, "  URI SAN:         %s\n", strings.Join(c.URISANs, ", "))
	fmt.Fprintf(w, "  valid:           %s .. %s (TTL %s)\n", c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339), c.NotAfter.Sub(c.NotBefore))
	fmt.Fprintf(w, "  renews at:       %s\n", c.RenewAt.Format(time.RFC3339))
	fmt.Fprintf(w, "renewals so far:   %d (%d failed)\n", st.Renewals, st.RenewalFailures)
	rules := "none: every attestation is denied"
	if len(st.Policy.Rules) > 0 {
		rules = strings.Join(st.Policy.Rules, ", ")
	}
	rev := ""
	if st.Policy.Revision != "" {
		rev = ", revision " + st.Policy.Revision
	}
	fmt.Fprintf(w, "policy:            from %s%s; rules: %s\n", st.Policy.Source, rev, rules)
}

// printOutbox prints the agent's queue to the log: what waits, what the log
// refused for good and why, and damaged records moved aside.
func printOutbox(w io.Writer, ob *agentstatus.OutboxStatus) {
	if ob == nil {
		return
	}
	fmt.Fprintf(w, "outbox:            %d queued for the log, %d refused by it\n", ob.Queued, ob.Refused)
	for _, r := range ob.RecentRefusals {
		fmt.Fprintf(w, "  REFUSED %s at %s: %s\n", r.InvocationID, r.At.Format(time.RFC3339), r.Reason)
	}
	if ob.Damaged > 0 {
		fmt.Fprintf(w, "  DAMAGED: %d damaged outbox records moved aside, kept in %s (inspect, then remove)\n", ob.Damaged, ob.DamagedDir)
	}
	if ob.RefusingWrites != "" {
		fmt.Fprintf(w, "  REFUSING WRITES, so every attestation: %s (restart hallmark-agent once its data_dir is writable)\n", ob.RefusingWrites)
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/internal/spireadmin"
)

// spireSocketEnv overrides the default of --spire-socket.
const spireSocketEnv = "HALLMARK_SPIRE_SOCKET"

func spireSocketDefault() string {
	if s := os.Getenv(spireSocketEnv); s != "" {
		return s
	}
	return spireadmin.DefaultSocket
}

const spireSocketUsage = "the SPIRE server's API socket (spire-server's socket_path; env " + spireSocketEnv + ")"

// serverAddressEnv is the default of --server-address.
const serverAddressEnv = "HALLMARK_SERVER_ADDRESS"

const serverAddressUsage = "hallmark-server's listen address (host:port): also show which authority signed its SVID (env " + serverAddressEnv + ")"

// spireStep is one step of `hallmark admin rotate spire`.
type spireStep struct {
	use, short, long string
	done             string // "prepared", ... for the first output line
	takesID          bool   // --authority-id
	run              func(ctx context.Context, c *spireadmin.Client, id string, force bool) (*spireadmin.Authority, error)
}

var spireSteps = []spireStep{
	{
		use: "prepare", done: "prepared",
		short: "Create a new X.509 authority and publish it in the bundle; it signs nothing yet",
		long: `Create a new X.509 authority (a new CA key and certificate) and add it to
the trust bundle. It signs nothing until activated: this step only makes
every SPIRE agent, workload and federated trust domain trust it in advance.
Refuses when an authority is already prepared, or when the old authority is
tainted but not yet revoked (--force prepares anyway).`,
		run: func(ctx context.Context, c *spireadmin.Client, _ string, force bool) (*spireadmin.Authority, error) {
			return c.Prepare(ctx, spireadmin.PrepareOptions{Replace: force})
		},
	},
	{
		use: "activate", done: "activated", takesID: true,
		short: "Make the prepared authority sign every new X509-SVID; the active one becomes old",
		long: `Make the prepared authority the active one: SPIRE signs every new X509-SVID
with it from now on. SVIDs already issued stay valid and are replaced at
their normal rotation (or at once, after taint). Run it only when every
holder of the bundle has the prepared authority.`,
		run: func(ctx context.Context, c *spireadmin.Client, id string, _ bool) (*spireadmin.Authority, error) {
			return c.Activate(ctx, id)
		},
	},
	{
		use: "taint", done: "tainted", takesID: true,
		short: "Mark the old authority tainted: SPIRE agents re-issue every SVID it signed, now",
		long: `Mark the old authority tainted in the bundle. It is still trusted, but every
SPIRE agent re-issues, at once, its own SVID and every workload SVID the old
authority signed; hallmark-server and hallmark-agent pick the new SVIDs up
without a restart.`,
		run: func(ctx context.Context, c *spireadmin.Client, id string, _ bool) (*spireadmin.Authority, error) {
			return c.Taint(ctx, id)
		},
	},
	{
		use: "revoke", done: "revoked", takesID: true,
		short: "Remove the tainted old authority from the bundle: nothing it signed is trusted",
		long: `Remove the tainted old authority from the trust bundle: from then on nothing
it signed is trusted anywhere the bundle reaches. Run it once every agent
and workload holds an SVID from the active authority (see docs/rotation.md).`,
		run: func(ctx context.Context, c *spireadmin.Client, id string, _ bool) (*spireadmin.Authority, error) {
			return c.Revoke(ctx, id)
		},
	},
}

func rotateSPIRECmd() *cobra.Command {
	var socket, serverAddr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "spire",
		Short: "Rotate the SPIRE server's X.509 authority (prepare, activate, taint, revoke)",
		Long: `Rotate the SPIRE server's X.509 authority through its LocalAuthority API on
the server's API socket, without restarting anything. Steps, in order:
prepare, activate, taint, revoke. Each picks the authority it acts on
(activate: the prepared one; taint and revoke: the old one) unless given
--authority-id, and prints the authorities and the bundle it leaves.`,
		Args: cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVar(&socket, "spire-socket", spireSocketDefault(), spireSocketUsage)
	cmd.PersistentFlags().StringVar(&serverAddr, "server-address", os.Getenv(serverAddressEnv), serverAddressUsage)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	for _, s := range spireSteps {
		var id string
		var force bool
		sub := &cobra.Command{
			Use: s.use, Short: s.short, Long: s.long, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return runSPIREStep(cmd.Context(), cmd.OutOrStdout(), socket, serverAddr, s, id, force, asJSON)
			},
		}
		if s.takesID {
			sub.Flags().StringVar(&id, "authority-id", "", "the authority to act on (default: the one the state calls for)")
		} else {
			sub.Flags().BoolVar(&force, "force", false, "prepare even over a prepared authority or a tainted, unrevoked old one")
		}
		cmd.AddCommand(sub)
	}
	return cmd
}

func runSPIREStep(ctx context.Context, w io.Writer, socket, serverAddr string, s spireStep, id string, force, asJSON bool) error {
	c, err := spireadmin.Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	a, err := s.run(ctx, c, id, force)
	if err != nil {
		return err
	}
	st, err := c.State(ctx)
	if err != nil {
		return fmt.Errorf("%s done, but reading the state after it: %w", s.use, err)
	}
	rep := newSPIREReport(ctx, socket, serverAddr, st)
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Step      string                `json:"step"`
			Authority *spireadmin.Authority `json:"authority"`
			State     *spireReport          `json:"state"`
		}{s.use, a, rep})
	}
	fmt.Fprintf(w, "%s X.509 authority %s%s\n\n", s.done, a.ID, expires(a.ExpiresAt))
	rep.Print(w)
	return nil
}

// spireReport is the SPIRE section of `hallmark admin status` and what
// each rotation step prints.
type spireReport struct {
	Socket string `json:"socket"`
	*spireadmin.State
	Phase string `json:"phase"`
	Next  string `json:"next"`
	// Server is hallmark-server's SVID, with --server-address.
	Server *spireadmin.Holder `json:"server_svid,omitempty"`
}

func newSPIREReport(ctx context.Context, socket, serverAddr string, st *spireadmin.State) *spireReport {
	phase, next := st.Phase()
	r := &spireReport{Socket: socket, State: st, Phase: phase, Next: next}
	if serverAddr != "" {
		if chain, err := spireadmin.PeerSVID(ctx, serverAddr); err != nil {
			r.Server = &spireadmin.Holder{Address: serverAddr, Error: err.Error()}
		} else {
			h := st.Holder(serverAddr, chain)
			r.Server = &h
		}
	}
	return r
}

func bindSPIREStatus(cmd *cobra.Command) func(context.Context) (statusReport, error) {
	var socket, serverAddr string
	cmd.Flags().StringVar(&socket, "spire-socket", spireSocketDefault(), spireSocketUsage)
	cmd.Flags().StringVar(&serverAddr, "server-address", os.Getenv(serverAddressEnv), serverAddressUsage)
	return func(ctx context.Context) (statusReport, error) {
		c, err := spireadmin.Dial(socket)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		st, err := c.State(ctx)
		if err != nil {
			return nil, err
		}
		return newSPIREReport(ctx, socket, serverAddr, st), nil
	}
}

// Print writes the authorities, the bundle and the next step.
func (r *spireReport) Print(w io.Writer) {
	fmt.Fprintf(w, "SPIRE X.509 authorities (trust domain %s, server socket %s)\n", r.TrustDomain, r.Socket)
	slot := func(name string, a *spireadmin.Authority, note func(string) string) {
		if a == nil {
			fmt.Fprintf(w, "  %-9s -\n", name)
			return
		}
		fmt.Fprintf(w, "  %-9s %s%s%s\n", name, a.ID, expires(a.ExpiresAt), note(a.ID))
	}
	plain := func(string) string { return "" }
	slot("active", r.Active, plain)
	slot("prepared", r.Prepared, plain)
	slot("old", r.Old, func(id string) string {
		b, in := r.InBundle(id)
		switch {
		case !in:
			return ", revoked (not in the bundle)"
		case b.Tainted:
			return ", TAINTED"
		}
		return ", still trusted"
	})
	fmt.Fprintf(w, "  bundle (sequence %d): %d X.509 authorities\n", r.BundleSequence, len(r.Bundle))
	for _, b := range r.Bundle {
		role := b.Role
		if role == spireadmin.RoleOther {
			role = "other"
		}
		if b.Tainted {
			role += ", TAINTED"
		}
		fmt.Fprintf(w, "    %s  %-17s not after %s\n", b.ID, role, b.NotAfter.Format(time.RFC3339))
	}
	if h := r.Server; h != nil {
		if h.Error != "" {
			fmt.Fprintf(w, "  hallmark-server %s: cannot read its SVID: %s\n", h.Address, h.Error)
		} else {
			role := h.Role
			if role == spireadmin.RoleOther {
				role = "in no slot"
			}
			trust := "trusted by the bundle"
			if !h.Trusted {
				trust = "NOT trusted by the current bundle"
			}
			fmt.Fprintf(w, "  hallmark-server %s: SVID %s serial %s%s, signed by %s (%s), %s\n",
				h.Address, h.SPIFFEID, h.Serial, expires(h.NotAfter), h.SignedBy, role, trust)
		}
	}
	fmt.Fprintf(w, "  phase:    %s\n  next:     %s\n", r.Phase, r.Next)
}

func expires(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return ", expires " + t.Format(time.RFC3339)
}

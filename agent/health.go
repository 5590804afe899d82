package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/hallmark-dev/hallmark/agent/agentstatus"
)

// Status is what /status reports (see package agentstatus, which the
// hallmark CLI reads it with).
type (
	Status       = agentstatus.Status
	ServerStatus = agentstatus.ServerStatus
	CertStatus   = agentstatus.CertStatus
	PolicyStatus = agentstatus.PolicyStatus
)

// Status reports the agent's identity, server link and signing certificate.
func (a *Agent) Status() Status {
	a.mu.Lock()
	st := Status{
		Server: ServerStatus{
			Address: strings.Join(a.cfg.servers(), ", "), Addresses: a.cfg.servers(),
			SPIFFEID:  a.cfg.ServerID.String(),
			Reachable: a.reachable, LastError: a.lastErr,
		},
		Renewals: a.renewals, RenewalFailures: a.failures, RenewalError: a.renewErr, SVIDRotations: a.rotations,
		Policy:                PolicyStatus{Source: a.policySource, Revision: a.policyRevision},
		ExeSelectorsForgeable: a.exeForgeable,
	}
	if !a.id.IsZero() {
		st.SPIFFEID = a.id.String()
	}
	if a.svid != nil {
		st.SVIDSerial = a.svid.SerialNumber.Text(16)
		st.SVIDNotAfter = &a.svid.NotAfter
	}
	a.mu.Unlock()
	for _, r := range a.policy().Rules() {
		st.Policy.Rules = append(st.Policy.Rules, r.Name)
	}
	st.Outbox = a.outboxStatus()
	if c, ok := a.keys.current(a.cfg.Now()); ok {
		leaf := c.leaf()
		cs := &CertStatus{
			Serial: leaf.SerialNumber.Text(16), Issuer: leaf.Issuer.String(),
			NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, RenewAt: renewAt(c),
		}
		if fp, ok := issuerSHA256(c); ok {
			cs.IssuerSHA256 = hex.EncodeToString(fp[:])
		}
		for _, u := range leaf.URIs {
			cs.URISANs = append(cs.URISANs, u.String())
		}
		for _, cert := range c.chain {
			cs.ChainPEM += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
		}
		st.SigningCertificate = cs
	}
	return st
}

// maxHealthConns bounds the health listener's open connections.
const maxHealthConns = 64

func (a *Agent) serveHealth(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if _, ok := a.keys.current(a.cfg.Now()); !ok {
			http.Error(w, "not ready: no valid signing certificate", http.StatusServiceUnavailable)
			return
		}
		if ob := a.outbox; ob != nil {
			if err := ob.Broken(); err != nil {
				http.Error(w, "not ready: "+err.Error()+" (restart hallmark-agent once its data_dir is writable)", http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status()) //nolint:errcheck // the client went away
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}))

	// A listener of its own, with its own bound on connections and their
	// time: abuse of the local API's socket, which holds at most
	// LocalLimits.Connections, cannot starve it, and it cannot starve the
	// local API.
	ln = netutil.LimitListener(ln, maxHealthConns)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx) //nolint:errcheck // best effort on the way out
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent: health: %w", err)
	}
	return nil
}

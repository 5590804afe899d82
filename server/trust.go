package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// trustState is the trust state (package attest/trust) the server's
// records make: every recorded signing CA chain, trusted as trust.SigningCA
// rules from its issuer's taint and revocation; the log; and the log's
// timestamp authority. The log admits entries against it and exports it
// as the trusted root, so the two cannot disagree.
func trustState(cas []store.SigningCA, states []store.IssuerState, pub ed25519.PublicKey, keyCreated time.Time, origin string, ts *tsa.Signer) (trust.State, error) {
	byIssuer := index(states)
	l := trust.Log{Origin: origin, Key: pub, ValidFor: trust.Range{Start: keyCreated}}
	tsaChain := ts.Chain()
	st := trust.State{
		Logs: []trust.Log{l},
		TSAs: []trust.TSA{{Chain: tsaChain, URI: l.BaseURL(), ValidFor: trust.Range{Start: tsaChain[0].NotBefore}}},
	}
	for _, rec := range cas {
		chain, err := x509.ParseCertificates(rec.DER)
		if err != nil || len(chain) == 0 {
			return trust.State{}, fmt.Errorf("trust state: stored signing CA %x does not parse: %v", rec.ID, err)
		}
		is := byIssuer[fingerprintOf(chain[0])]
		ca, err := trust.SigningCA(chain, is.TaintedAt, is.RevokedAt)
		if err != nil {
			return trust.State{}, fmt.Errorf("trust state: stored signing CA %x: %w", rec.ID, err)
		}
		st.CAs = append(st.CAs, ca)
	}
	return st, nil
}

// caBundlePEM is every certificate of every signing CA chain, each once,
// as PEM.
func caBundlePEM(cas []store.SigningCA) ([]byte, error) {
	var buf bytes.Buffer
	seen := make(map[[sha256.Size]byte]bool)
	for _, ca := range cas {
		chain, err := x509.ParseCertificates(ca.DER)
		if err != nil {
			return nil, fmt.Errorf("trust bundle: stored signing CA %x does not parse: %w", ca.ID, err)
		}
		for _, c := range chain {
			sum := sha256.Sum256(c.Raw)
			if seen[sum] {
				continue
			}
			seen[sum] = true
			if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
				return nil, err
			}
		}
	}
	return buf.Bytes(), nil
}

// TrustedRootJSON is the trusted root as served: the trust state as the
// store holds it now.
func (l *TransparencyLog) TrustedRootJSON(ctx context.Context) ([]byte, error) {
	cas, err := l.store.SigningCAs(ctx)
	if err != nil {
		return nil, err
	}
	states, err := l.store.IssuerStates(ctx)
	if err != nil {
		return nil, err
	}
	st, err := trustState(cas, states, l.pub, l.created, l.origin, l.tsa)
	if err != nil {
		return nil, err
	}
	return st.MarshalJSON()
}

// ExportTrustedRoot reads the store and the log key named by cfg, without
// a running server and without creating or changing anything, and returns
// the trusted root JSON (what GET /trust/trusted_root.json serves).
func ExportTrustedRoot(ctx context.Context, cfg Config) ([]byte, error) {
	cfg.setLogDefaults()
	key, err := loadLogKey(logKeyPath(cfg.DataDir), false, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	st, err := cfg.Store.open(ctx, storeOptions{mustExist: true})
	if err != nil {
		return nil, fmt.Errorf("trust export: store %s: %w", cfg.Store.Name, err)
	}
	defer st.Close()
	ts, err := loadTSA(tsaKeyPath(cfg.DataDir), cfg.LogOrigin, false, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	cp, err := st.LatestCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	if _, err := tlog.OpenCheckpoint(cp.Note, cfg.LogOrigin, key.public()); err != nil {
		return nil, fmt.Errorf("trust export: the store's latest checkpoint does not verify with the log key and origin %q: %w", cfg.LogOrigin, err)
	}
	cas, err := st.SigningCAs(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	states, err := st.IssuerStates(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	ts2, err := trustState(cas, states, key.public(), key.created, cfg.LogOrigin, ts)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	return ts2.MarshalJSON()
}

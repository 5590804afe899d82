package verify

import (
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/tsa"
)

// TrustedRoot is the verifier's trust material, prepared once from a
// trust state (package attest/trust, which holds the rules of what is
// trusted when) and safe for concurrent use: the certificate authorities
// that may have issued agents' signing certificates, each with the time
// range it is trusted for, the transparency logs whose checkpoints are
// accepted, and the timestamp authorities whose RFC 3161 timestamps say
// when a signature existed.
type TrustedRoot struct {
	state trust.State
	cas   []*certificateAuthority
	logs  map[string]*transparencyLog // by string(log ID)
	// legacyLogs are the same logs by the log ID of bundles written
	// before Hallmark logs moved to hashedrekord (tlog.LegacyLogID).
	legacyLogs map[string]*transparencyLog
	tsas       []*timestampAuthority

	// chains caches verified signing-certificate chains (verifyChain).
	chains     sync.Map // [sha256.Size]byte -> *verifiedChain
	chainCount atomic.Int64
}

// timestampAuthority is one timestamp authority: its chain's first
// certificate signs timestamps, the last is the trust anchor.
type timestampAuthority struct {
	leaf      *x509.Certificate
	authority *tsa.Authority // the chain, checked once
	validFor  trust.Range
}

// certificateAuthority is one certificate authority: the last certificate
// of its chain is the trust anchor, the others are intermediates.
type certificateAuthority struct {
	roots         *x509.CertPool
	intermediates *x509.CertPool
	anchor        *x509.Certificate
	issuer        *x509.Certificate // the first of the chain
	validFor      trust.Range
}

// transparencyLog is one log with an Ed25519 key.
type transparencyLog struct {
	id       []byte
	key      ed25519.PublicKey
	origin   string
	validFor trust.Range
}

// ParseTrustedRoot decodes a protobuf-specs trustroot/v1 TrustedRoot in its
// JSON form (as the Hallmark server exports it) and prepares it with
// [NewTrustedRoot]. Unknown fields are refused.
func ParseTrustedRoot(data []byte) (*TrustedRoot, error) {
	s, err := trust.ParseTrustedRoot(data)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	return NewTrustedRootFromState(s)
}

// NewTrustedRoot reads a TrustedRoot message (trust.FromTrustedRoot) and
// prepares it with [NewTrustedRootFromState].
func NewTrustedRoot(pb *trustrootpb.TrustedRoot) (*TrustedRoot, error) {
	s, err := trust.FromTrustedRoot(pb)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	return NewTrustedRootFromState(s)
}

// Option changes how NewTrustedRootFromState prepares a trusted root.
type Option func(*options)

type options struct {
	issuer *tsa.Signer
}

// SkipTimestampSignatureCheckIfIssuedBy makes the timestamp authority
// whose leaf signer holds skip the signature check of a response signer
// produced, byte for byte (tsa.Authority.SkipSignatureCheckOfIssued);
// every other check of the timestamp still runs. It is for a
// transparency log admitting entries that its own authority timestamped
// moments before.
func SkipTimestampSignatureCheckIfIssuedBy(signer *tsa.Signer) Option {
	return func(o *options) { o.issuer = signer }
}

// NewTrustedRootFromState prepares a trust state for verification. It
// needs at least one certificate authority, one transparency log and one
// timestamp authority, and checks each timestamp authority's chain once
// (a timestamping leaf that chains to its root).
func NewTrustedRootFromState(s trust.State, opts ...Option) (*TrustedRoot, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	tr := &TrustedRoot{state: s, logs: map[string]*transparencyLog{}, legacyLogs: map[string]*transparencyLog{}}
	for _, c := range s.CAs {
		ca := &certificateAuthority{roots: x509.NewCertPool(), intermediates: x509.NewCertPool(), anchor: c.Anchor(), issuer: c.Issuer(), validFor: c.ValidFor}
		for i, cert := range c.Chain {
			// protobuf-specs: "The last certificate in the chain MUST be
			// the trust anchor."
			if i == len(c.Chain)-1 {
				ca.roots.AddCert(cert)
			} else {
				ca.intermediates.AddCert(cert)
			}
		}
		tr.cas = append(tr.cas, ca)
	}
	if len(tr.cas) == 0 {
		return nil, errors.New("verify: trusted root has no certificate authority")
	}

	for i, l := range s.Logs {
		tl := &transparencyLog{id: l.ID(), key: l.Key, origin: l.Origin, validFor: l.ValidFor}
		if _, dup := tr.logs[string(tl.id)]; dup {
			return nil, fmt.Errorf("verify: trusted root tlogs[%d]: duplicate log ID %x", i, tl.id)
		}
		tr.logs[string(tl.id)] = tl
		legacy, err := tlog.LegacyLogID(l.Key)
		if err != nil {
			return nil, fmt.Errorf("verify: trusted root tlogs[%d]: %w", i, err)
		}
		if _, dup := tr.legacyLogs[string(legacy)]; dup {
			// One key under two origins: a legacy entry names its log by
			// the key alone, so it could be checked against either.
			return nil, fmt.Errorf("verify: trusted root tlogs[%d]: its key is another log's too (legacy log ID %x)", i, legacy)
		}
		tr.legacyLogs[string(legacy)] = tl
	}
	if len(tr.logs) == 0 {
		return nil, errors.New("verify: trusted root has no transparency log with an Ed25519 key")
	}

	for i, ta := range s.TSAs {
		a, err := newTimestampAuthority(ta)
		if err != nil {
			return nil, fmt.Errorf("verify: trusted root timestampAuthorities[%d]: %w", i, err)
		}
		if o.issuer != nil {
			// Refused unless the signer holds this authority's leaf: then
			// the option is for another authority of the root.
			if skipping, err := a.authority.SkipSignatureCheckOfIssued(o.issuer); err == nil {
				a.authority = skipping
			}
		}
		tr.tsas = append(tr.tsas, a)
	}
	if len(tr.tsas) == 0 {
		return nil, errors.New("verify: trusted root has no timestamp authority")
	}
	return tr, nil
}

// State is the trust state tr was prepared from.
func (tr *TrustedRoot) State() trust.State { return tr.state }

// OpenCheckpoint verifies a signed checkpoint (a C2SP signed note, as
// GET /log/checkpoint serves it) of the trusted root's log with origin,
// signed by that log's key, and returns it.
func (tr *TrustedRoot) OpenCheckpoint(origin string, signed []byte) (Checkpoint, error) {
	for _, l := range tr.logs {
		if l.origin != origin {
			continue
		}
		return tlog.OpenCheckpoint(signed, l.origin, l.key)
	}
	return Checkpoint{}, fmt.Errorf("verify: the trusted root has no log %q", origin)
}

func newTimestampAuthority(ta trust.TSA) (*timestampAuthority, error) {
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	for i, cert := range ta.Chain {
		switch {
		case i == 0:
		case i == len(ta.Chain)-1:
			roots.AddCert(cert)
		default:
			intermediates.AddCert(cert)
		}
	}
	// RFC 3161 section 2.3 and RFC 5280 section 6, once: the leaf is for
	// timestamping and chains to the anchor; each timestamp is then
	// checked against the chain's validity window.
	a, err := tsa.NewAuthority(ta.Chain[0], roots, intermediates)
	if err != nil {
		return nil, err
	}
	return &timestampAuthority{leaf: ta.Chain[0], authority: a, validFor: ta.ValidFor}, nil
}

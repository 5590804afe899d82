// Package trust is Hallmark's trust state and the rules that say what is
// trusted when: which certificate authorities issue agents' signing
// certificates, which timestamp authorities say when a signature existed,
// and which transparency logs vouch for entries, each with the time range
// it is trusted for.
//
// It is the one home of those rules. The server keeps their inputs (the
// signing CAs it recorded, the decisions of rotation: taint and revoke)
// and turns them into a [State] with [SigningCA]; it exports the State as a
// Sigstore trusted root ([State.MarshalJSON]) and admits log entries by
// running the verifier's checks (package attest/verify) against the very
// same State. Verifiers read a trusted root back into a State
// ([ParseTrustedRoot]). So the log and every verifier apply one rule, and
// where Sigstore's clients read the same trusted root they apply it too:
// a time range is all they need to know.
//
// The rules, for a signature whose trusted time (its RFC 3161 timestamp)
// is t:
//
//   - A signing CA is trusted at t when t is within the validity of every
//     certificate of its chain, and before its revocation time and before
//     the end of the grace that follows its taint (TaintGrace), if it has
//     either. Revocation and taint end trust from that instant on: a
//     signature timestamped exactly at the revocation time is not trusted.
//   - A timestamp authority is trusted for timestamps within its validFor.
//   - A log key is trusted for entries whose signatures are timestamped
//     within its validFor.
//
// Time ranges are protobuf-specs TimeRanges: both ends inclusive, an
// absent end open. "Trusted before T" is written as an end one nanosecond
// before T.
//
// The package imports, of this repository, only attest/tlog (for log IDs).
package trust

import (
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/hallmark-dev/hallmark/attest/tlog"
)

// TaintGrace is how long after a taint a signing CA is still trusted:
// agents are told at once and renew within a second or two, and what they
// signed just before holds no lesser proof. From the end of the grace on,
// nothing signed under a tainted CA is trusted, by the log or by verifiers.
const TaintGrace = 10 * time.Second

// Range is a time range: both ends inclusive, a zero End open, as
// protobuf-specs common/v1 TimeRange.
type Range struct {
	Start, End time.Time
}

// Contains reports whether t is within r.
func (r Range) Contains(t time.Time) bool {
	return !t.Before(r.Start) && (r.End.IsZero() || !t.After(r.End))
}

func (r Range) String() string {
	end := "open"
	if !r.End.IsZero() {
		end = r.End.UTC().Format(time.RFC3339Nano)
	}
	return r.Start.UTC().Format(time.RFC3339Nano) + " .. " + end
}

// before is the inclusive end of a range that ends just before t.
func before(t time.Time) time.Time { return t.Add(-time.Nanosecond) }

// CA is a certificate authority that issues agents' signing certificates.
type CA struct {
	// Chain is the CA's certificates, issuing CA first, trust anchor
	// (root) last.
	Chain []*x509.Certificate
	// ValidFor is when signatures under it are trusted.
	ValidFor Range
}

// Issuer is the CA certificate that issues signing certificates: the
// first of the chain.
func (c CA) Issuer() *x509.Certificate { return c.Chain[0] }

// Anchor is the trust anchor: the last certificate of the chain.
func (c CA) Anchor() *x509.Certificate { return c.Chain[len(c.Chain)-1] }

// SigningCA applies the signing-CA rule: a chain (issuing CA first, root
// last) whose issuing CA was tainted at taintedAt and revoked from
// revokedAt (zero when not) is trusted from the latest NotBefore of its
// certificates to the earliest of their NotAfter, the instant before
// revokedAt's whole second and the instant before the end of the taint's
// grace.
func SigningCA(chain []*x509.Certificate, taintedAt, revokedAt time.Time) (CA, error) {
	if len(chain) == 0 {
		return CA{}, errors.New("trust: empty CA chain")
	}
	for i, c := range chain {
		if !c.IsCA {
			return CA{}, fmt.Errorf("trust: %s is not a CA certificate", c.Subject)
		}
		if i+1 < len(chain) {
			if err := c.CheckSignatureFrom(chain[i+1]); err != nil {
				return CA{}, fmt.Errorf("trust: %s is not signed by %s: %w", c.Subject, chain[i+1].Subject, err)
			}
		}
	}
	notBefore, notAfter := Window(chain)
	r := Range{Start: notBefore, End: notAfter}
	// A revocation takes effect from the whole second at or before
	// revokedAt: a timestamp's time may be rounded down (Hallmark's
	// authority writes whole seconds), so a signature made just
	// after a revocation between two whole seconds could carry a time
	// before it.
	if revokedAt = revokedAt.Truncate(time.Second); !revokedAt.IsZero() && before(revokedAt).Before(r.End) {
		r.End = before(revokedAt)
	}
	if !taintedAt.IsZero() {
		if end := before(taintedAt.Add(TaintGrace)); end.Before(r.End) {
			r.End = end
		}
	}
	// An end before the start (revoked from its first instant) is a
	// range that contains no time: trusted never.
	return CA{Chain: chain, ValidFor: r}, nil
}

// Window is the intersection of the validity of every certificate of
// chain: the latest NotBefore and the earliest NotAfter.
func Window(chain []*x509.Certificate) (notBefore, notAfter time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(notBefore) {
			notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notBefore, notAfter
}

// TSA is an RFC 3161 timestamp authority.
type TSA struct {
	// Chain is the timestamping certificate first, its root last.
	Chain []*x509.Certificate
	// URI names the authority (informational).
	URI string
	// ValidFor is when its timestamps are trusted.
	ValidFor Range
}

// Log is a transparency log: an RFC 6962 tree whose checkpoints its
// Ed25519 key signs as C2SP signed notes under its origin.
type Log struct {
	Origin string
	Key    ed25519.PublicKey
	// ValidFor is when the key vouches for entries.
	ValidFor Range
}

// ID is the log's ID: the C2SP signed-note key ID of its key (tlog.KeyID).
func (l Log) ID() []byte { return tlog.KeyID(l.Origin, l.Key) }

// BaseURL is the log's trusted-root baseUrl: "https://" and the origin,
// from which Sigstore clients take the checkpoint origin (see Origin).
func (l Log) BaseURL() string { return "https://" + l.Origin }

// State is the trust state: everything a verifier trusts, and when.
type State struct {
	CAs  []CA
	TSAs []TSA
	Logs []Log
}

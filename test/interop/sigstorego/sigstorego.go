// Package sigstorego verifies a bundle with sigstore-go alone: it imports
// no Hallmark package, so what it accepts is what any Sigstore client
// holding the exported trusted root would accept.
package sigstorego

import (
	"fmt"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
)

// Result is what sigstore-go established.
type Result struct {
	// SignedAt is the verified RFC 3161 timestamp.
	SignedAt time.Time
	// SAN is the signing certificate's subject alternative name.
	SAN string
}

// Verify checks bundleJSON against trustedRootJSON with sigstore-go: one
// transparency-log entry with its inclusion proof, one RFC 3161 signed
// timestamp as the time of signing, the artifact's SHA-256 among the
// statement's subjects, and the certificate's URI SAN equal to builderID.
func Verify(bundleJSON, trustedRootJSON, artifactSHA256 []byte, builderID string) (*Result, error) {
	tr, err := root.NewTrustedRootFromJSON(trustedRootJSON)
	if err != nil {
		return nil, fmt.Errorf("trusted root: %w", err)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	v, err := verify.NewVerifier(tr, verify.WithTransparencyLog(1), verify.WithSignedTimestamps(1))
	if err != nil {
		return nil, err
	}
	id, err := verify.NewShortCertificateIdentity("", ".*", builderID, "")
	if err != nil {
		return nil, err
	}
	res, err := v.Verify(&b, verify.NewPolicy(
		verify.WithArtifactDigest("sha256", artifactSHA256),
		verify.WithCertificateIdentity(id),
	))
	if err != nil {
		return nil, err
	}
	out := &Result{}
	if len(res.VerifiedTimestamps) > 0 {
		out.SignedAt = res.VerifiedTimestamps[0].Timestamp
	}
	if res.Signature != nil && res.Signature.Certificate != nil {
		out.SAN = res.Signature.Certificate.SubjectAlternativeName
	}
	return out, nil
}

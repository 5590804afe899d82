package pipeline

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	vsa1 "github.com/in-toto/attestation/go/predicates/vsa/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest"
)

// VSA constants (https://slsa.dev/spec/v1.0/verification_summary).
const (
	VSAPredicateType = "https://slsa.dev/verification_summary/v1"
	// DefaultVerifierID identifies `hallmark verify --policy` as the
	// verifier.
	DefaultVerifierID = "https://hallmark.dev/verifier/pipeline/v1"
	// VerifiedLevel is what a verified chain shows of the SLSA Build
	// track: provenance exists for every step, generated and signed by
	// the build platform (the agent's short-lived key, which build steps
	// never hold), and verified authentic (Build L2). Hallmark does not
	// attest that runs are isolated from one another, so not L3.
	VerifiedLevel = "SLSA_BUILD_LEVEL_2"
	// FailedLevel is verifiedLevels of a refused chain.
	FailedLevel = "FAILED"
)

// VSAOptions describe the verification for the summary.
type VSAOptions struct {
	// VerifierID is verifier.id; empty means DefaultVerifierID.
	VerifierID string
	// ResourceURI is resourceUri: the artifact verified (required).
	ResourceURI string
	// PolicyURI is policy.uri (optional; the digest is always given).
	PolicyURI string
	// Time is timeVerified (required).
	Time time.Time
}

// VSA returns an in-toto Statement v1 whose predicate is an SLSA
// Verification Summary v1 of the report: the artifact as subject, the
// policy's digest, every attestation of the chain (on a refusal, every
// one examined) as input attestations with the SHA-256 of its bundle,
// PASSED or FAILED, and the level verified. It carries only fields that
// in-toto's Go bindings (predicates/vsa/v1) know, so they decode it
// strictly. The JSON is what a DSSE envelope would carry (see SignVSA).
func (r *Report) VSA(o VSAOptions) ([]byte, error) {
	if o.ResourceURI == "" || o.Time.IsZero() {
		return nil, errors.New("pipeline: VSA: ResourceURI and Time are required")
	}
	id := o.VerifierID
	if id == "" {
		id = DefaultVerifierID
	}
	result, levels := "FAILED", []string{FailedLevel}
	if r.Verified {
		result, levels = "PASSED", []string{VerifiedLevel}
	}
	pred := &vsa1.VerificationSummary{
		Verifier:     &vsa1.VerificationSummary_Verifier{Id: id},
		TimeVerified: timestamppb.New(o.Time),
		ResourceUri:  o.ResourceURI,
		Policy: &vsa1.VerificationSummary_Policy{
			Uri:    o.PolicyURI,
			Digest: map[string]string{"sha256": r.PolicySHA256},
		},
		VerificationResult: result,
		VerifiedLevels:     levels,
		SlsaVersion:        "1.0",
	}
	for _, n := range r.Chain() {
		pred.InputAttestations = append(pred.InputAttestations, &vsa1.VerificationSummary_InputAttestation{
			Uri:    n.URI,
			Digest: map[string]string{"sha256": n.BundleSHA256},
		})
	}
	pj, err := protojson.Marshal(pred)
	if err != nil {
		return nil, fmt.Errorf("pipeline: VSA: %w", err)
	}
	var ps structpb.Struct
	if err := protojson.Unmarshal(pj, &ps); err != nil {
		return nil, fmt.Errorf("pipeline: VSA: %w", err)
	}
	st := &ita1.Statement{
		Type: ita1.StatementTypeUri,
		Subject: []*ita1.ResourceDescriptor{{
			Name:   r.Artifact.Name,
			Digest: map[string]string{"sha256": r.Artifact.SHA256},
		}},
		PredicateType: VSAPredicateType,
		Predicate:     &ps,
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("pipeline: VSA: %w", err)
	}
	return attest.MarshalStatement(st)
}

// SignVSA wraps a VSA statement in a DSSE envelope (JSON, as DSSE and
// go-securesystemslib write it) signed by key, an ECDSA P-256 key. The
// signature's keyid is the hex SHA-256 of the key's PKIX public key.
func SignVSA(statement []byte, key crypto.Signer) ([]byte, error) {
	env, err := attest.SignEnvelope(statement, key)
	if err != nil {
		return nil, fmt.Errorf("pipeline: sign VSA: %w", err)
	}
	keyID, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	env.Signatures[0].Keyid = keyID
	return protojson.Marshal(env)
}

// KeyID is the keyid SignVSA gives a signature by pub.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("pipeline: key ID: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

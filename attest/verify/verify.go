package verify

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
)

// Names of the checks, in the order [Verify] runs them. They are stable:
// callers may branch on them and print them.
const (
	CheckBundle    = "bundle"
	CheckSignature = "signature"
	CheckTlog      = "tlog"
	CheckTimestamp = "timestamp"
	CheckValidity  = "validity"
	CheckChain     = "chain"
	CheckStatement = "statement"
	CheckSubject   = "subject"
	CheckPredicate = "predicate"
	CheckPolicy    = "policy"
)

// CheckError is why a bundle did not verify: the check that failed and its
// reason.
type CheckError struct {
	Check string
	Err   error
}

func (e *CheckError) Error() string { return "verify: " + e.Check + ": " + e.Err.Error() }

func (e *CheckError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotVerified) true for every *CheckError.
func (e *CheckError) Is(target error) bool { return target == ErrNotVerified }

// ErrNotVerified matches every [*CheckError] with errors.Is: the bundle
// was examined and refused, as opposed to Verify being misused (no trusted
// root, no artifact).
var ErrNotVerified = errors.New("verify: not verified")

func fail(check string, err error) *CheckError { return &CheckError{Check: check, Err: err} }

// Options is what Verify checks a bundle against. Build it once and share
// it: it is read-only.
type Options struct {
	// TrustedRoot is the trust material (required).
	TrustedRoot *TrustedRoot
	// Policy, if not nil, restricts builders, steps and workloads.
	Policy *Policy
	// Workers is how many bundles VerifyMany verifies at once; zero or
	// less means runtime.GOMAXPROCS(0). Verify ignores it.
	Workers int
}

// Result is what a verified bundle proves.
type Result struct {
	// BuilderID is the agent's SPIFFE ID: runDetails.builder.id, equal to
	// the signing certificate's URI SAN.
	BuilderID string `json:"builderId"`
	// Step is the step name (externalParameters.step).
	Step string `json:"step"`
	// Subjects are all the statement's subjects, in statement order.
	Subjects []Subject `json:"subjects"`
	// Artifacts are the subjects that the given artifacts matched, in the
	// order the artifacts were given.
	Artifacts []Subject `json:"artifacts"`
	// Workload is the caller's identity as the agent attested it
	// (internalParameters.workload).
	Workload Workload `json:"workload"`
	// SignedAt is when the signature existed, as the bundle's RFC 3161
	// timestamp grants it (the server timestamps what its log accepts);
	// every time-based check used it.
	SignedAt time.Time `json:"signedAt"`
	// LogIndex is the entry's index in the log, LogID the log's ID (hex).
	LogIndex int64  `json:"logIndex"`
	LogID    string `json:"logId"`
	// Checkpoint is the log's signed checkpoint the entry's inclusion
	// was proven under (its signature checked with the log's key).
	// Nothing here compares it with other checkpoints of the log: see
	// package logstate.
	Checkpoint Checkpoint `json:"checkpoint"`
	// Issuer is the subject of the trust anchor the certificate chained to.
	Issuer string `json:"issuer"`
}

// Checkpoint is a log checkpoint (C2SP tlog-checkpoint) whose signature
// was verified: the log's origin, its tree size and root hash.
type Checkpoint = tlog.Checkpoint

// Subject is a statement subject: a file name and its SHA-256 (lowercase
// hex).
type Subject struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// Workload is the identity of the process that asked for the attestation.
type Workload struct {
	SPIFFEIDs []string `json:"spiffeIds"`
	Selectors []string `json:"selectors"`
	PID       int64    `json:"pid"`
	UID       int64    `json:"uid"`
	GID       int64    `json:"gid"`
}

// Verify checks that bundleJSON is a Hallmark attestation, trusted under
// opts, of every artifact in artifacts (at least one). On success it
// returns what the attestation proves; otherwise the error is a
// [*CheckError] naming the first check that failed, or, if the call itself
// is wrong (no trusted root, no artifact), a plain error.
//
// The steps follow sigstore-go's Verifier.Verify, adapted to what a
// Hallmark bundle carries: a Rekor v2 shaped log entry, and the
// certificate's time of use from an RFC 3161 timestamp; the statement is
// read only once its signer is trusted.
func Verify(bundleJSON []byte, artifacts []Digest, opts Options) (*Result, error) {
	tr := opts.TrustedRoot
	if tr == nil {
		return nil, errors.New("verify: Options.TrustedRoot is required")
	}
	if len(artifacts) == 0 {
		return nil, errors.New("verify: no artifact digest: a bundle is verified against the artifacts it vouches for")
	}

	// 1. bundle. Sigstore bundle spec, v0.3
	// (protobuf-specs bundle/v1; docs/buildtypes/step-v1.md "Envelope"):
	// media type v0.3; verification material is the leaf certificate
	// alone, so a bundle carrying x509CertificateChain is refused and no
	// intermediate ever comes from the bundle; content is a DSSE envelope
	// of an in-toto payload. Decoding is strict (unknown fields refused).
	// A bundle wrong only in its number of signatures fails step 2.
	b, err := attest.ParseBundle(bundleJSON)
	if err != nil {
		if n, ok := wellFormedButSignatureCount(bundleJSON); ok {
			return nil, fail(CheckSignature, fmt.Errorf("envelope has %d signatures, want exactly 1", n))
		}
		return nil, fail(CheckBundle, err)
	}
	env := b.GetDsseEnvelope()
	certDER := b.GetVerificationMaterial().GetCertificate().GetRawBytes()
	leaf, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fail(CheckBundle, fmt.Errorf("leaf certificate: %w", err))
	}

	// 2. signature. DSSE v1 protocol: see checkSignature.
	payload, err := checkSignature(env, leaf)
	if err != nil {
		return nil, err
	}

	// 3. tlog. Sigstore bundle spec (verificationMaterial.tlogEntries),
	// RFC 6962 section 2.1.1 (inclusion proof), C2SP tlog-checkpoint and
	// signed-note (checkpoint): see verifyTlogEntry.
	entry, err := tr.verifyTlogEntry(b.GetVerificationMaterial().GetTlogEntries(), env, certDER)
	if err != nil {
		return nil, fail(CheckTlog, err)
	}

	// 4. timestamp. RFC 3161 (Sigstore bundle spec,
	// verificationMaterial.timestampVerificationData): exactly one
	// timestamp; the signature existed at t, by a timestamp authority of
	// the trusted root (see verifyTimestamp). The log key must have been
	// trusted at t too.
	stamp, err := bundleTimestamp(b.GetVerificationMaterial().GetTimestampVerificationData())
	if err != nil {
		return nil, fail(CheckTimestamp, err)
	}
	t, err := tr.verifyTimestamp(stamp, env.GetSignatures()[0].GetSig())
	if err != nil {
		return nil, fail(CheckTimestamp, err)
	}
	if err := entry.log.trustedAt(t); err != nil {
		return nil, fail(CheckTlog, err)
	}

	// 5-9: validity, chain, statement, predicate, as a log checks them
	// before it admits an entry: see checkSigned.
	signed, err := tr.checkSigned(leaf, t, payload)
	if err != nil {
		return nil, err
	}
	st, prov, ca := signed.st, signed.prov, signed.ca

	// 8. subject. in-toto Statement v1 "subject": an artifact is attested
	// only if its SHA-256 is a subject's sha256 digest. Names are not
	// compared: a file may be renamed, never altered.
	matched, err := st.match(artifacts)
	if err != nil {
		return nil, fail(CheckSubject, err)
	}

	// 10. policy. The consumer's own rules (Policy): allowed builders,
	// steps and workloads.
	if opts.Policy != nil {
		if err := opts.Policy.check(prov); err != nil {
			return nil, fail(CheckPolicy, err)
		}
	}

	return &Result{
		BuilderID:  prov.builderID,
		Step:       prov.step,
		Subjects:   st.subjects,
		Artifacts:  matched,
		Workload:   prov.workload,
		SignedAt:   t,
		LogIndex:   entry.index,
		LogID:      hex.EncodeToString(entry.log.id),
		Checkpoint: entry.checkpoint,
		Issuer:     ca.anchor.Subject.String(),
	}, nil
}

// checkSignature is step 2. DSSE v1 protocol
// (https://github.com/secure-systems-lab/dsse/blob/master/protocol.md):
// exactly one signature, ECDSA P-256 ASN.1 DER over
// SHA-256(PAE(payloadType, payload)), by the leaf certificate's key. The
// payload stays unread until the checks after it vouch for that key.
func checkSignature(env *dssepb.Envelope, leaf *x509.Certificate) ([]byte, error) {
	if n := len(env.GetSignatures()); n != 1 {
		return nil, fail(CheckSignature, fmt.Errorf("envelope has %d signatures, want exactly 1", n))
	}
	payload, err := attest.VerifyEnvelope(env, leaf.PublicKey)
	if err != nil {
		return nil, fail(CheckSignature, err)
	}
	return payload, nil
}

// signedChecks is what checkSigned establishes.
type signedChecks struct {
	st   *statement
	prov provenance
	ca   *certificateAuthority
}

// checkSigned runs the checks that follow the trusted time t, in order,
// on a signature already verified with leaf's key over payload: validity,
// chain, statement and predicate. Verify runs them after the log entry
// and the timestamp; a log runs them (Admit) before it integrates an
// entry, so that it never admits what a verifier would refuse here.
func (tr *TrustedRoot) checkSigned(leaf *x509.Certificate, t time.Time, payload []byte) (*signedChecks, error) {
	// 5. validity. RFC 5280 section 4.1.2.5: the short-lived leaf
	// certificate was valid at t, NotBefore <= t <= NotAfter (both
	// inclusive, as x509 path validation has them). Before the chain,
	// so that the chain check's own time checks concern the CA
	// certificates alone.
	if t.Before(leaf.NotBefore) || t.After(leaf.NotAfter) {
		return nil, fail(CheckValidity, fmt.Errorf("certificate (serial %s) is valid %s .. %s, the signature is timestamped %s",
			leaf.SerialNumber, fmtTime(leaf.NotBefore), fmtTime(leaf.NotAfter), fmtTime(t)))
	}

	// 6. chain. RFC 5280 section 6 path validation at t (x509 Verify,
	// CurrentTime = t) with the code-signing EKU, to a
	// certificateAuthority of the trusted root whose validFor (inclusive)
	// covers t (protobuf-specs trustroot/v1: "Clients MUST check
	// timestamps against both the valid_for time range and the entire
	// certificate chain"). Roots and intermediates come only from the
	// trusted root. A tainted or revoked signing CA's validFor ends where
	// package attest/trust's rules end it.
	ca, err := tr.verifyChain(leaf, t)
	if err != nil {
		return nil, fail(CheckChain, err)
	}

	// 7. statement. in-toto Statement v1
	// (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md),
	// strictly decoded and validated.
	st, err := parseStatement(payload)
	if err != nil {
		return nil, fail(CheckStatement, err)
	}

	// 9. predicate. SLSA Provenance v1 (https://slsa.dev/spec/v1.0/provenance)
	// with buildType https://hallmark.dev/buildtypes/step/v1
	// (docs/buildtypes/step-v1.md): builder.id is the agent's SPIFFE ID
	// and must be the certificate's URI SAN. (Verify checks the subjects,
	// step 8, in between; they concern the consumer's artifacts.)
	prov, err := st.provenance()
	if err != nil {
		return nil, fail(CheckPredicate, err)
	}
	if err := checkBuilderIdentity(prov.builderID, leaf); err != nil {
		return nil, fail(CheckPredicate, err)
	}
	return &signedChecks{st: st, prov: prov, ca: ca}, nil
}

// Request is one bundle for VerifyMany and the artifacts it should vouch
// for.
type Request struct {
	Bundle    []byte
	Artifacts []Digest
}

// Outcome is Verify's answer for one Request.
type Outcome struct {
	Result *Result
	Err    error
}

// VerifyMany verifies every request with Verify, on opts.Workers
// goroutines, sharing opts (and so the parsed trust material). Outcomes
// are in request order.
func VerifyMany(reqs []Request, opts Options) []Outcome {
	out := make([]Outcome, len(reqs))
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, len(reqs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(reqs) {
					return
				}
				res, err := Verify(reqs[i].Bundle, reqs[i].Artifacts, opts)
				out[i] = Outcome{Result: res, Err: err}
			}
		})
	}
	wg.Wait()
	return out
}

// wellFormedButSignatureCount reports whether a bundle that
// attest.ParseBundle refused would be well formed but for the number of
// signatures on its envelope, and that number. ParseBundle insists on one
// signature; this lets the signature check, whose rule that is, report it.
// It only names the failure: nothing it looks at is ever accepted.
func wellFormedButSignatureCount(data []byte) (int, bool) {
	var b bundlepb.Bundle
	if len(data) > attest.MaxBundleSize || protojson.Unmarshal(data, &b) != nil {
		return 0, false
	}
	env := b.GetDsseEnvelope()
	n := len(env.GetSignatures())
	if env == nil || n == 1 {
		return 0, false
	}
	env.Signatures = []*dssepb.Signature{{Sig: []byte{0}}}
	one, err := protojson.Marshal(&b)
	if err != nil {
		return 0, false
	}
	_, err = attest.ParseBundle(one)
	return n, err == nil
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

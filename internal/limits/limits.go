// Package limits is the one set of sizes hallmark-agent and hallmark-server
// agree on for the transparency log, so that the agent never signs what the
// log would refuse and never sends a call the server cannot take. The
// server enforces them on SubmitEntries; the agent refuses an attestation
// whose bundle would be too large before it signs anything, and sizes its
// submissions by count and by bytes under them. docs/log.md ("Limits")
// documents them.
package limits

import (
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tsa"
)

const (
	// MaxBundleBytes is the largest bundle verifiers read
	// (attest.MaxBundleSize, what `hallmark verify` accepts).
	MaxBundleBytes = attest.MaxBundleSize

	// LoggedMaterialReserve is room kept in a bundle for what logging
	// adds to it: the tlog entry (its body repeats the signature and the
	// certificate, base64 twice, and its inclusion proof holds up to 64
	// hashes and a signed checkpoint) and, for an entry signed without
	// one, the log's RFC 3161 timestamp.
	LoggedMaterialReserve = 128 << 10

	// MaxSignedBundleBytes is the largest bundle the agent signs: a
	// bundle this size, once logged, still fits MaxBundleBytes. The
	// agent refuses a larger attestation before signing it.
	MaxSignedBundleBytes = MaxBundleBytes - LoggedMaterialReserve

	// MaxEnvelopeBytes bounds one submitted envelope (its protojson):
	// the log refuses a larger one. Every envelope of a bundle the agent
	// signs is smaller, and the bundle a verifier rebuilds from a logged
	// envelope this size still fits MaxBundleBytes (at MaxBundleBytes,
	// the log took envelopes whose bundles no verifier reads).
	MaxEnvelopeBytes = MaxSignedBundleBytes

	// MaxCertificateBytes bounds one submitted signing certificate (DER).
	MaxCertificateBytes = 16 << 10

	// MaxTimestampBytes bounds one RFC 3161 timestamp response (DER).
	MaxTimestampBytes = tsa.MaxResponseSize

	// MaxEntriesPerCall bounds the entries of one SubmitEntries call.
	MaxEntriesPerCall = 500

	// MaxTimestampsPerCall bounds the signatures of one Timestamp call;
	// MaxSignatureBytes bounds each (an ASN.1 DER ECDSA P-256
	// signature is at most 72 bytes).
	MaxTimestampsPerCall = 500
	MaxSignatureBytes    = 256

	// MaxCallBytes bounds one gRPC request to the server's agent API
	// (its receive limit): a SubmitEntries request, all entries
	// included, is at most this large.
	MaxCallBytes = 32 << 20
)

// SubmissionBytes is how many bytes one entry of envelope, certificate and
// timestamp bytes adds to a SubmitEntries request: the protobuf encoding of
// a hallmark.server.v1.LogSubmission (fields 1, 2 and 3, bytes) as element
// of the request's repeated field 1. A request of entries weighs the sum.
func SubmissionBytes(envelope, certificate, timestamp int) int {
	n := 0
	for _, b := range []int{envelope, certificate, timestamp} {
		if b > 0 {
			n += protowire.SizeTag(1) + protowire.SizeBytes(b) // fields 1..3 have one-byte tags
		}
	}
	return protowire.SizeTag(1) + protowire.SizeBytes(n)
}

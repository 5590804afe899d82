// Package verify checks a Hallmark attestation offline, the way an
// admission controller or `hallmark verify` does: given a Sigstore bundle,
// the digests of the artifacts it should vouch for, and the trust material
// the Hallmark server publishes (a protobuf-specs TrustedRoot), [Verify]
// runs a fixed sequence of checks and either returns what was proven
// ([Result]) or a [*CheckError] naming the first check that failed.
//
// The checks, in order, each named by a constant:
//
//	bundle     Sigstore bundle v0.3, strictly decoded (attest.ParseBundle)
//	signature  the one DSSE signature verifies with the leaf certificate's key
//	tlog       one transparency-log entry, a Rekor v2 hashedrekord entry
//	           (or the dsse entry of logs written before): it commits to
//	           this envelope and certificate, is included in the log
//	           (RFC 6962 proof) under a checkpoint signed by a log the
//	           trusted root lists, which its log ID (the C2SP key ID of
//	           the log's key) names
//	timestamp  one RFC 3161 timestamp over the signature, by a timestamp
//	           authority of the trusted root; its time is the time every
//	           later check uses (and the log key must be trusted then)
//	validity   the leaf certificate was valid at the timestamp
//	chain      the leaf chains, for code signing, to a certificate authority
//	           of the trusted root that was trusted at the timestamp
//	           (package attest/trust: a revoked signing CA is trusted only
//	           until its revocation, a tainted one until its grace ends)
//	statement  the payload is an in-toto Statement v1
//	subject    every given artifact digest is a subject of the statement
//	predicate  SLSA Provenance v1 of build type step/v2 (or v1), whose builder.id
//	           is the certificate's SPIFFE ID
//	policy     optional: builder, step and workload are ones the policy allows
//
// Nothing is fetched: no network, no clock (the only time is the
// timestamp's), no files. Parse the trust material once ([ParseTrustedRoot],
// [ParsePolicy]) and reuse it; [VerifyMany] verifies a batch on all cores.
//
// A transparency log runs the same checks, with the same code, before it
// integrates an entry ([TrustedRoot.Admit]).
//
// The package imports only packages attest, attest/tlog, attest/trust and
// attest/tsa of this repository, so consumers can depend on those alone.
package verify

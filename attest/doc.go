// Package attest turns one measured build step into signed provenance.
//
// The pipeline has four stages, each usable on its own:
//
//  1. [NewStatement] builds an in-toto Statement v1 whose subjects are the
//     step's products and whose predicate is SLSA Provenance v1 with build
//     type [BuildType] (documented in docs/buildtypes/step-v2.md).
//  2. [MarshalStatement] serializes it to the JSON payload that is signed.
//  3. [SignEnvelope] wraps the payload in a DSSE envelope signed with an
//     ECDSA P-256 key over SHA-256 of the DSSE pre-authentication encoding
//     ([PAE]).
//  4. [NewBundle] and [MarshalBundle] package the envelope and the signer's
//     leaf certificate as a Sigstore bundle v0.3.
//
// [Sign] does all four in one pass, writing the JSON itself rather than
// through protojson: its output is byte for byte what the four stages
// produce one after the other, several times faster. [ParseBundle] is the
// strict inverse of [MarshalBundle] for untrusted input; full verification
// (certificate chain, transparency log, policy) lives in package
// attest/verify.
//
// The package is offline and stateless: no I/O, no clocks, no globals.
// It imports nothing from the Hallmark repository, so consumers can depend
// on it alone.
package attest

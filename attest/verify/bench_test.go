package verify_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/hallmark-dev/hallmark/attest/verify"
)

// BenchmarkVerify is one bundle through every check, policy included.
func BenchmarkVerify(b *testing.B) {
	f := newFixture(b)
	data := marshal(b, f.bundle)
	opts := verify.Options{TrustedRoot: f.root, Policy: &verify.Policy{Steps: []string{"build"}}}
	artifacts := []verify.Digest{product()}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verify.Verify(data, artifacts, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawECDSAVerify is the floor: one P-256 signature verification.
func BenchmarkRawECDSAVerify(b *testing.B) {
	f := newFixture(b)
	digest := sha256.Sum256([]byte("hallmark"))
	sig, err := ecdsa.SignASN1(rand.Reader, f.agent.Key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !ecdsa.VerifyASN1(&f.agent.Key.PublicKey, digest[:], sig) {
			b.Fatal("does not verify")
		}
	}
}

// BenchmarkAdmit is what a log runs on one submission before it
// integrates it: signature, validity, chain, statement, predicate.
func BenchmarkAdmit(b *testing.B) {
	f := newFixture(b)
	e := verify.Entry{Envelope: f.bundle.GetDsseEnvelope(), Certificate: f.agent.Cert}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.root.Admit(e, t0); err != nil {
			b.Fatal(err)
		}
	}
}

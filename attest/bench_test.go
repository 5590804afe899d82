package attest_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/hallmark-dev/hallmark/attest"
)

func oneProductStep() attest.Step {
	s := testStep()
	s.Products = s.Products[:1]
	return s
}

// BenchmarkSign is the whole pipeline for a step with one product:
// statement, validation, JSON, DSSE signature, bundle JSON.
func BenchmarkSign(b *testing.B) {
	pki := newTestPKI(b)
	s := oneProductStep()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.Sign(s, pki.signer, pki.leaf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawECDSASign is the floor: one P-256 signature over a 32-byte
// digest.
func BenchmarkRawECDSASign(b *testing.B) {
	pki := newTestPKI(b)
	digest := sha256.Sum256([]byte("hallmark"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ecdsa.SignASN1(rand.Reader, pki.signer, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewStatement isolates the statement and its JSON, the part of
// Sign that is not the signature.
func BenchmarkNewStatement(b *testing.B) {
	s := oneProductStep()
	b.ReportAllocs()
	for b.Loop() {
		st, err := attest.NewStatement(s)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := attest.MarshalStatement(st); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseBundle(b *testing.B) {
	pki := newTestPKI(b)
	data, err := attest.Sign(oneProductStep(), pki.signer, pki.leaf)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := attest.ParseBundle(data); err != nil {
			b.Fatal(err)
		}
	}
}

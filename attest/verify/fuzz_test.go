package verify_test

import (
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"

	"github.com/hallmark-dev/hallmark/attest/verify"
)

// FuzzVerify feeds arbitrary bundle bytes to Verify: it must never panic,
// and must either verify or fail with a *CheckError.
//
// The seeds are whole bundles (kilobytes), which Go's fuzzer takes a long
// time to minimize; cap it to keep fuzzing:
//
//	go test -run XXX -fuzz FuzzVerify -fuzztime 20s -fuzzminimizetime 100x ./attest/verify/
func FuzzVerify(f *testing.F) {
	fx := newFixture(f)
	f.Add(marshal(f, fx.bundle))
	f.Add(fx.tampered(f, func(b *bundlepb.Bundle) { entryOf(b).InclusionProof.Hashes = nil }))
	f.Add(fx.tampered(f, func(b *bundlepb.Bundle) { entryOf(b).CanonicalizedBody = []byte(`{"kind":"hallmark-dsse"}`) }))
	f.Add(fx.tampered(f, func(b *bundlepb.Bundle) { b.VerificationMaterial.TlogEntries = nil }))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	opts := verify.Options{TrustedRoot: fx.root, Policy: &verify.Policy{Steps: []string{"build"}}}
	artifacts := []verify.Digest{product()}
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := verify.Verify(data, artifacts, opts)
		if err != nil {
			if _, ok := err.(*verify.CheckError); !ok {
				t.Fatalf("error is %T, want *verify.CheckError: %v", err, err)
			}
			if res != nil {
				t.Fatal("result with an error")
			}
			return
		}
		if res == nil || res.Step != "build" {
			t.Fatalf("verified without a result: %+v", res)
		}
	})
}

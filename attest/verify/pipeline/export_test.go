package pipeline

import "github.com/hallmark-dev/hallmark/attest/verify"

// Provenance is what readProvenance returns, for tests.
type Provenance struct {
	Materials []Material
	Sources   []GitSource
	Claims    map[string]string
}

// ReadProvenanceForTest exposes readProvenance to the external tests.
func ReadProvenanceForTest(bundleJSON []byte) (Provenance, error) {
	p, err := readProvenance(bundleJSON)
	return Provenance{Materials: p.materials, Sources: p.sources, Claims: p.claims}, err
}

// CountVerifications counts the calls the walk makes to verify.Verify
// until the test ends.
func CountVerifications(t interface{ Cleanup(func()) }) *int {
	n := new(int)
	t.Cleanup(func() { verifyBundle = verify.Verify })
	verifyBundle = func(b []byte, d []verify.Digest, o verify.Options) (*verify.Result, error) {
		*n++
		return verify.Verify(b, d, o)
	}
	return n
}

package pipeline

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

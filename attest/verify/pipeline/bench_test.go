package pipeline_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// BenchmarkWalkWideFanIn walks a package step with 20000 materials, each
// a product of 20 attestations of build (runs of a reproducible build):
// finding a material's producer is a look-up by digest. Reported: the
// walk's time per material (bundles parsed and verified included).
// Measured on a shared 2-core machine: scanning every subject of every
// attestation per material took 97 s per walk (4.9 ms/material); the
// look-up 3.8 s (0.19 ms/material), mostly parsing the bundles.
func BenchmarkWalkWideFanIn(b *testing.B) {
	f := newFixture(b)
	r := newRun("1")
	const materials, runs = 20000, 20
	var cands []pipeline.Candidate
	for k := range runs {
		s := r.step("build", buildID, nil, []string{"src/main.c", "src/Makefile"})
		s.Workload.Selectors = r.build.Workload.Selectors
		s.InvocationID = fmt.Sprint("run-", k)
		for i := range materials {
			s.Products = append(s.Products, artifact(fmt.Sprintf("lib/obj-%d.o", i), fmt.Sprint("object ", i)))
		}
		r.packag.Materials = s.Products
		cands = append(cands, pipeline.Candidate{Bundle: f.bundle(b, s), Origin: fmt.Sprintf("build-%d.hallmark.json", k)})
	}
	set := pipeline.NewBundleSet(append(slices.Clone(cands), f.bundles(b, r.checkout, r.packag)...))
	p := mustPolicy(b, testPolicy)
	b.ResetTimer()
	for b.Loop() {
		rep, err := f.verifyArtifact(p, "w", r.files["widget-1.0.tar.gz"], set)
		require.NoError(b, err)
		require.Len(b, rep.Chain()[0].Inputs[0].Materials, materials)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/materials, "ns/material")
}

package attest

// Attacker's tests of StepOfStatement (security review of the fast
// statement reader): every Step the scanner could produce, agent-like or
// not, must encode with statementJSON exactly as protojson does, read back
// through StepOfStatement to the same Step, and protojson must read the
// same bytes back to NewStatement(s).

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// fuzzBytes hands out pieces of a fuzzer's input.
type fuzzBytes struct{ b []byte }

func (f *fuzzBytes) byte() byte {
	if len(f.b) == 0 {
		return 0
	}
	c := f.b[0]
	f.b = f.b[1:]
	return c
}

func (f *fuzzBytes) u32() uint32 {
	var x [4]byte
	for i := range x {
		x[i] = f.byte()
	}
	return binary.LittleEndian.Uint32(x[:])
}

func (f *fuzzBytes) str() string {
	n := int(f.byte() % 24)
	n = min(n, len(f.b))
	s := string(f.b[:n])
	f.b = f.b[n:]
	return s
}

func (f *fuzzBytes) strs() []string {
	n := f.byte() % 4
	if n == 3 {
		return nil
	}
	out := make([]string, 0, n)
	for range n {
		out = append(out, f.str())
	}
	return out
}

// digest is a valid digest of s most of the time, and otherwise whatever
// the input says (upper case, short, empty).
func (f *fuzzBytes) digest(n int) string {
	switch f.byte() % 8 {
	case 0:
		return f.str()
	case 1:
		return strings.ToUpper(hexSum(f.str()))[:n]
	default:
		return hexSum(f.str())[:n]
	}
}

func (f *fuzzBytes) time() time.Time {
	switch f.byte() % 4 {
	case 0:
		return time.Time{}
	case 1:
		return time.Unix(int64(int32(f.u32()))*64, int64(f.u32()%1e9)).In(time.FixedZone("z", int(int16(f.u32()))*60))
	case 2:
		// near the range of a Timestamp
		secs := []int64{minTimestampSeconds, minTimestampSeconds - 1, maxTimestampSeconds, maxTimestampSeconds + 1}[f.byte()%4]
		return time.Unix(secs, int64(f.u32()%1e9))
	default:
		ns := []int64{0, 1, 1e3, 1e6, 12e7, 999999999}[f.byte()%6]
		return time.Unix(int64(f.u32()), ns).UTC()
	}
}

// seedWriter writes what fuzzBytes reads.
type seedWriter struct{ b []byte }

func (w *seedWriter) n(c byte) *seedWriter { w.b = append(w.b, c); return w }
func (w *seedWriter) u32(x uint32) *seedWriter {
	w.b = binary.LittleEndian.AppendUint32(w.b, x)
	return w
}
func (w *seedWriter) s(v string) *seedWriter { w.b = append(append(w.b, byte(len(v))), v...); return w }
func (w *seedWriter) ss(vs ...string) *seedWriter {
	w.n(byte(len(vs)))
	for _, v := range vs {
		w.s(v)
	}
	return w
}

// fuzzSeeds are valid Steps for stepFromFuzz: one full, one with the
// escapes and specials protojson and appendString must agree on.
func fuzzSeeds() [][]byte {
	full := (&seedWriter{}).s("build").s("/ws").ss("make", "-j4").ss("/bin/sh").
		n(2).s("out").n(2).s("o").s("bin/x").n(2).s("x").
		n(1).s("go.sum").n(2).s("g").
		n(1).s("src").n(2).s("c").n(2).s("t").n(0).n(0).s("heads/main").n(0).s("h/o/r").
		n(3).s("job").n(1).s("7").s("run").n(1).s("8").
		ss("spiffe://td/w").ss("unix:uid:1").u32(4242).u32(1001).u32(1001).
		n(0).s("agent").s("inv").
		n(3).n(3).u32(1741064767).n(3).n(0).u32(1741064800)
	odd := (&seedWriter{}).s("\x00\"\\\u2028").s("\x7f\ufffd").ss("\b\f\n\r\t", "\U0001F600").ss().
		n(1).s("\u2028/\U0001F600").n(2).s("e").
		n(0).
		n(1).s(".").n(2).s("c").n(2).s("t").n(1).n(1).s("refs/\"").n(1).s("mailto:x").
		n(2).s("k").n(1).s("\x00\x01").
		ss().ss("").u32(1 << 31).u32(1<<32 - 1).u32(0).
		n(1).s("urn:x\U0001F600").s("").
		n(2).n(0).u32(0).n(2).n(2).u32(999999999)
	return [][]byte{full.b, odd.b}
}

func stepFromFuzz(data []byte) Step {
	f := &fuzzBytes{b: data}
	var s Step
	s.Name = f.str()
	s.Workspace = f.str()
	s.Command = f.strs()
	s.CallerCmdline = f.strs()
	for range f.byte() % 4 {
		s.Products = append(s.Products, Artifact{Name: f.str(), SHA256: f.digest(64)})
	}
	for range f.byte() % 4 {
		s.Materials = append(s.Materials, Artifact{Name: f.str(), SHA256: f.digest(64)})
	}
	for range f.byte() % 3 {
		g := GitSource{Path: f.str(), Commit: f.digest(40), Tree: f.digest(40), Clean: f.byte()%2 == 0}
		switch f.byte() % 3 {
		case 0:
			g.Ref = "refs/" + f.str()
		case 1:
			g.Ref = f.str()
		}
		switch f.byte() % 3 {
		case 0:
			g.RemoteURL = "https://" + f.str()
		case 1:
			g.RemoteURL = f.str()
		}
		s.Sources = append(s.Sources, g)
	}
	if n := f.byte() % 5; n > 0 {
		s.CallerClaims = map[string]string{}
		for range n - 1 {
			k := f.str()
			if f.byte()%4 != 0 {
				k = "k" + strings.Map(func(r rune) rune {
					if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
						return r
					}
					return '_'
				}, k)
			}
			s.CallerClaims[k] = f.str()
		}
	}
	s.Workload = Workload{SPIFFEIDs: f.strs(), Selectors: f.strs(), PID: int32(f.u32()), UID: f.u32(), GID: f.u32()}
	switch f.byte() % 3 {
	case 0:
		s.BuilderID = "spiffe://example.org/" + f.str()
	default:
		s.BuilderID = f.str()
	}
	s.InvocationID = f.str()
	s.StartedOn = f.time()
	s.FinishedOn = f.time()
	return s
}

// checkReadBack requires what the review asks of every Step: statementJSON
// is protojson's encoding (checkSameAsReference), protojson reads those
// bytes back to NewStatement(s), and StepOfStatement reads them back to a
// Step with the same statement and the same products, name, builder and
// workload.
func checkReadBack(t *testing.T, s Step) {
	t.Helper()
	// As checkSameAsReference, without comparing error texts: with two
	// bad claim keys, which one an error names depends on map order.
	ref, refErr := referenceStatement(s)
	b, err := statementJSON(s)
	want, stErr := NewStatement(s)
	require.Equal(t, refErr != nil, err != nil, "reference: %v, statementJSON: %v", refErr, err)
	require.Equal(t, refErr != nil, stErr != nil, "reference: %v, NewStatement: %v", refErr, stErr)
	if err != nil {
		return
	}
	refJSON, err := MarshalStatement(ref)
	require.NoError(t, err)
	require.Equal(t, string(refJSON), string(b))
	require.True(t, proto.Equal(ref, want), "NewStatement differs from the reference")
	var back ita1.Statement
	require.NoError(t, protojson.Unmarshal(b, &back), "protojson refuses statementJSON's %q", b)
	require.NoError(t, back.Validate())
	require.True(t, proto.Equal(want, &back), "protojson reads back another statement from %q", b)

	got, ok := StepOfStatement(b)
	require.True(t, ok, "StepOfStatement refuses statementJSON's %q", b)
	again, err := statementJSON(got)
	require.NoError(t, err)
	require.Equal(t, string(b), string(again))
	products := slices.Clone(s.Products)
	slices.SortFunc(products, func(a, b Artifact) int { return strings.Compare(a.Name, b.Name) })
	require.Equal(t, products, got.Products)
	require.Equal(t, s.Name, got.Name)
	require.Equal(t, s.BuilderID, got.BuilderID)
	norm := func(w Workload) Workload {
		if len(w.SPIFFEIDs) == 0 {
			w.SPIFFEIDs = nil
		}
		if len(w.Selectors) == 0 {
			w.Selectors = nil
		}
		return w
	}
	require.Equal(t, norm(s.Workload), norm(got.Workload))
	require.True(t, s.StartedOn.Equal(got.StartedOn) && s.FinishedOn.Equal(got.FinishedOn))
}

// FuzzStepOfStatementReadBack builds Steps of any shape the scanner can
// produce (several products, materials, sources and claims; odd claim
// keys, refs, remote URLs, digests, zones and nanoseconds).
//
//	go test -run XXX -fuzz FuzzStepOfStatementReadBack -fuzztime 5m ./attest/
func FuzzStepOfStatementReadBack(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkReadBack(t, stepFromFuzz(data))
	})
}

// TestStepOfStatementReadBackEdges: Steps the agent never writes.
func TestStepOfStatementReadBackEdges(t *testing.T) {
	c40, t40 := strings.Repeat("c", 40), strings.Repeat("d", 40)
	for _, tc := range []struct {
		name   string
		mutate func(*Step)
	}{
		{"unsorted products", func(s *Step) {
			s.Products = []Artifact{{Name: "z", SHA256: hexSum("z")}, {Name: "a", SHA256: hexSum("a")}, {Name: "m/n", SHA256: hexSum("m")}}
		}},
		{"empty strings everywhere", func(s *Step) {
			s.Workspace, s.InvocationID = "", ""
			s.Command, s.CallerCmdline = []string{"", ""}, []string{""}
			s.Workload = Workload{SPIFFEIDs: []string{""}, Selectors: []string{}}
			s.CallerClaims = map[string]string{"a": ""}
		}},
		{"empty claims map", func(s *Step) { s.CallerClaims = map[string]string{} }},
		{"max claims", func(s *Step) {
			s.CallerClaims = map[string]string{}
			for i := range MaxCallerClaims {
				s.CallerClaims["k"+strings.Repeat("z", i)] = strings.Repeat("\x00", MaxCallerClaimBytes)
			}
		}},
		{"odd sources", func(s *Step) {
			s.Sources = []GitSource{
				{Path: "a b/c", Commit: c40, Tree: t40, Ref: "refs/", RemoteURL: "https://user@h/o/r?q=1#f"},
				{Path: ".", Commit: c40, Tree: t40, RemoteURL: "mailto:x@y"},
				{Path: "\u2028", Commit: c40, Tree: t40, Ref: "refs/\"\\\n", RemoteURL: "git+ssh://h:22/\x00"},
				{Path: "u", Commit: c40, Tree: t40, RemoteURL: "%zz"},
				{Path: "v", Commit: c40, Tree: t40, Ref: "refs/x", RemoteURL: "HTTPS://H/"},
			}
		}},
		{"material named like a source", func(s *Step) {
			s.Materials = []Artifact{{Name: "src", SHA256: hexSum("m")}}
			s.Sources = []GitSource{{Path: "src", Commit: c40, Tree: t40}}
		}},
		{"surrogates and specials", func(s *Step) {
			s.Name = "\U0001F600\u2028\u2029\ufeff\ufffd\x7f"
			s.Products = []Artifact{{Name: "\U0001F600/\u2028", SHA256: hexSum("e")}}
			s.BuilderID = "spiffe://td/\U0001F600"
		}},
		{"nanos and zones", func(s *Step) {
			z := time.FixedZone("", 14*3600)
			s.StartedOn = time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)
			s.FinishedOn = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC).In(z)
		}},
		{"zero instant in a zone", func(s *Step) {
			s.StartedOn = time.Time{}.In(time.FixedZone("", 3600))
			s.FinishedOn = time.Time{}
		}},
		{"finished before started", func(s *Step) { s.FinishedOn = s.StartedOn.Add(-1) }},
		{"opaque builder", func(s *Step) { s.BuilderID = "urn:x" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fullStep()
			tc.mutate(&s)
			checkReadBack(t, s)
		})
	}
}

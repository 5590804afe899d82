package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

func hexSum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func fullStep() Step {
	return Step{
		Name:          "build",
		Workspace:     "/builds/acme/widget",
		Command:       []string{"make", "-j4", "dist"},
		CallerCmdline: []string{"/usr/bin/hallmark", "attest", "--step", "build", "--", "make", "-j4", "dist"},
		Products: []Artifact{
			{Name: "dist/widget.tar.gz", SHA256: hexSum("tarball")},
			{Name: "bin/widget", SHA256: hexSum("binary")},
		},
		Materials: []Artifact{
			{Name: "go.sum", SHA256: hexSum("go.sum")},
			{Name: "Makefile", SHA256: hexSum("makefile")},
		},
		Workload: Workload{
			SPIFFEIDs: []string{"spiffe://example.org/ci/runner/widget"},
			Selectors: []string{"unix:uid:1001", "unix:gid:1001"},
			PID:       4242, UID: 1001, GID: 1001,
		},
		BuilderID:    "spiffe://example.org/hallmark/agent/node-1",
		InvocationID: "0b6f6f7e8f0b4b8e9a3c6f2f5d1c2a11",
		StartedOn:    time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC),
		FinishedOn:   time.Date(2025, 3, 4, 5, 7, 8, 0, time.UTC),
	}
}

// checkSameAsReference requires statementJSON and NewStatement to agree
// with referenceStatement on s: the same bytes, or both an error.
func checkSameAsReference(t *testing.T, s Step) {
	t.Helper()
	ref, refErr := referenceStatement(s)
	got, err := statementJSON(s)
	st, stErr := NewStatement(s)
	if refErr != nil {
		require.Error(t, err, "reference failed with %v", refErr)
		require.Error(t, stErr)
		require.Equal(t, stErr.Error(), err.Error())
		return
	}
	require.NoError(t, err)
	require.NoError(t, stErr)
	want, err := MarshalStatement(ref)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))
	require.True(t, proto.Equal(ref, st), "NewStatement differs from the reference")
	viaStruct, err := MarshalStatement(st)
	require.NoError(t, err)
	require.Equal(t, string(want), string(viaStruct))
}

func TestStatementJSONMatchesProtojson(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Step)
	}{
		{"full", func(*Step) {}},
		{"minimal", func(s *Step) {
			*s = Step{Name: "x", BuilderID: "spiffe://td/a", Products: []Artifact{{Name: "a", SHA256: hexSum("a")}}}
		}},
		{"no metadata", func(s *Step) { s.InvocationID, s.StartedOn, s.FinishedOn = "", time.Time{}, time.Time{} }},
		{"only invocation", func(s *Step) { s.StartedOn, s.FinishedOn = time.Time{}, time.Time{} }},
		{"only startedOn", func(s *Step) { s.InvocationID, s.FinishedOn = "", time.Time{} }},
		{"millis", func(s *Step) { s.StartedOn = time.Date(2025, 1, 1, 0, 0, 0, 120_000_000, time.UTC) }},
		{"micros", func(s *Step) { s.StartedOn = time.Date(2025, 1, 1, 0, 0, 0, 123_400_000+500, time.UTC) }},
		{"nanos", func(s *Step) { s.StartedOn = time.Date(2025, 1, 1, 0, 0, 0, 1, time.UTC) }},
		{"zone and monotonic", func(s *Step) {
			now := time.Now()
			s.StartedOn, s.FinishedOn = now.In(time.FixedZone("X", -7*3600)), now.Add(time.Millisecond)
		}},
		{"earliest and latest", func(s *Step) {
			s.StartedOn = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
			s.FinishedOn = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
		}},
		{"out of range", func(s *Step) { s.StartedOn, s.FinishedOn = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Time{} }},
		{"before year 1", func(s *Step) { s.StartedOn = time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC) }},
		{"extreme ids", func(s *Step) {
			s.Workload.PID, s.Workload.UID, s.Workload.GID = math.MinInt32, math.MaxUint32, 0
		}},
		{"big pid", func(s *Step) { s.Workload.PID = math.MaxInt32 }},
		{"nil lists", func(s *Step) { s.Command, s.CallerCmdline, s.Workload = nil, nil, Workload{} }},
		{"escapes", func(s *Step) {
			s.Command = []string{"a\"b\\c", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "<html>&amp;</html>", "\u2028\u2029", "\uFFFD", "日本語", "😀"}
			s.Workspace = "/ws/\"quoted\"\n"
			s.Workload.Selectors = []string{"unix:path:/a b/c\td"}
		}},
		{"invalid UTF-8", func(s *Step) { s.Command = []string{"\xff"} }},
		{"bad digest", func(s *Step) { s.Products[0].SHA256 = "abc" }},
		{"duplicate", func(s *Step) { s.Materials[1].Name = s.Materials[0].Name }},
		{"no products", func(s *Step) { s.Products = nil }},
		{"claims and sources", func(s *Step) {
			s.CallerClaims = map[string]string{"run_id": "7", "job": "b\"q\n", "ci": "日本"}
			s.Sources = []GitSource{
				{Path: "z", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("b", 40), RemoteURL: "git@h:o/r.git"},
				{Path: ".", Commit: strings.Repeat("c", 40), Tree: strings.Repeat("d", 40), Clean: true, Ref: "refs/tags/v1", RemoteURL: "https://h/o/r"},
			}
		}},
		{"sources without materials", func(s *Step) {
			s.Materials = nil
			s.Sources = []GitSource{{Path: "src", Commit: strings.Repeat("e", 40), Tree: strings.Repeat("f", 40), RemoteURL: "file:///srv/git/r"}}
		}},
		{"bad source", func(s *Step) {
			s.Sources = []GitSource{{Path: "/abs", Commit: strings.Repeat("e", 40), Tree: strings.Repeat("f", 40)}}
		}},
		{"bad claim", func(s *Step) { s.CallerClaims = map[string]string{"": "x"} }},
		{"many artifacts", func(s *Step) {
			for i := range 40 {
				n := strings.Repeat("d/", i%5) + "f" + string(rune('a'+i%26)) + string(rune('a'+i/26))
				s.Products = append(s.Products, Artifact{Name: n, SHA256: hexSum(n)})
				s.Materials = append(s.Materials, Artifact{Name: "m/" + n, SHA256: hexSum("m" + n)})
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fullStep()
			tc.mutate(&s)
			checkSameAsReference(t, s)
		})
	}
}

func FuzzStatementJSON(f *testing.F) {
	f.Add("build", "/ws", "make\x00-j4", "unix:uid:1", int32(4242), uint32(1001), int64(1741064767), int64(0), uint32(123456789), "id", "out", "in")
	f.Add("s", "", "", "", int32(-1), uint32(math.MaxUint32), int64(-62135596800), int64(253402300799), uint32(999999999), "", "a/b", "")
	f.Add("\x00", "\"\\", "\u2028\x1f", "😀", int32(0), uint32(0), int64(1), int64(253402300800), uint32(1000), "\xff", "..", "x")
	f.Fuzz(func(t *testing.T, name, ws, cmd, sel string, pid int32, uid uint32, start, finish int64, nanos uint32, inv, product, material string) {
		// The fuzzed strings also become a claim, a ref and a remote URL.
		s := Step{
			Name:          name,
			Workspace:     ws,
			Command:       strings.Split(cmd, "\x00"),
			CallerCmdline: []string{cmd},
			Products:      []Artifact{{Name: product, SHA256: hexSum(product)}},
			Workload:      Workload{Selectors: []string{sel}, PID: pid, UID: uid, GID: uid / 2},
			BuilderID:     "spiffe://example.org/agent",
			InvocationID:  inv,
		}
		if material != "" {
			s.Materials = []Artifact{{Name: material, SHA256: hexSum(material)}}
			s.CallerClaims = map[string]string{"job": inv, "ref": sel}
			s.Sources = []GitSource{{Path: material, Commit: hexSum(material)[:40], Tree: hexSum(inv)[:40], Ref: "refs/" + sel, RemoteURL: ws, Clean: pid%2 == 0}}
		}
		if start != 0 {
			s.StartedOn = time.Unix(start, int64(nanos%1e9))
		}
		if finish != 0 {
			s.FinishedOn = time.Unix(finish, int64(nanos%1e9))
		}
		checkSameAsReference(t, s)
	})
}

func TestSignMatchesProtojsonBundle(t *testing.T) {
	key, leaf := testKey(t)
	s := fullStep()
	got, err := Sign(s, key, leaf)
	require.NoError(t, err)
	b, err := ParseBundle(got)
	require.NoError(t, err)
	// The signature is random; rebuild the bundle around the same one.
	want, err := NewBundle(b.GetDsseEnvelope(), leaf)
	require.NoError(t, err)
	wantJSON, err := MarshalBundle(want)
	require.NoError(t, err)
	require.Equal(t, string(wantJSON), string(got))

	payload, err := VerifyEnvelope(b.GetDsseEnvelope(), key.Public())
	require.NoError(t, err)
	ref, err := referenceStatement(s)
	require.NoError(t, err)
	refJSON, err := MarshalStatement(ref)
	require.NoError(t, err)
	require.Equal(t, string(refJSON), string(payload))
}

func TestPAEDigest(t *testing.T) {
	for _, tc := range []struct{ typ, payload string }{
		{PayloadType, `{"_type":"x"}`},
		{"", ""},
		{"a b", "c d\x00"},
		{strings.Repeat("t", 100), strings.Repeat("p", 10000)},
	} {
		require.Equal(t, sha256.Sum256(PAE(tc.typ, []byte(tc.payload))), paeDigest(tc.typ, []byte(tc.payload)))
	}
}

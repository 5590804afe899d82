package verify

// Tests of parseStatementFast against the general parser: whatever the
// fast path accepts, protojson must accept with the same subjects and
// provenance, and every statement the agent writes must take it.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
)

func fastTestSum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func fastTestStep() attest.Step {
	return attest.Step{
		Name:          "build",
		Workspace:     "/builds/acme/widget",
		Command:       []string{"make", "-j4", "dist"},
		CallerCmdline: []string{"/usr/bin/hallmark", "attest", "--step", "build", "--", "make", "-j4", "dist"},
		Products: []attest.Artifact{
			{Name: "dist/widget.tar.gz", SHA256: fastTestSum("tarball")},
			{Name: "bin/widget", SHA256: fastTestSum("binary")},
		},
		Materials: []attest.Artifact{
			{Name: "go.sum", SHA256: fastTestSum("go.sum")},
			{Name: "Makefile", SHA256: fastTestSum("makefile")},
		},
		CallerClaims: map[string]string{"run_id": "7", "job": "b\"q\n", "ci": "日本"},
		Sources: []attest.GitSource{
			{Path: "z", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("b", 40), RemoteURL: "git@h:o/r.git"},
			{Path: ".", Commit: strings.Repeat("c", 40), Tree: strings.Repeat("d", 40), Clean: true, Ref: "refs/tags/v1", RemoteURL: "https://h/o/r"},
		},
		Workload: attest.Workload{
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

// agentPayload is the statement the agent signs for s (MarshalStatement
// of NewStatement: attest's tests show statementJSON writes these bytes).
func agentPayload(tb testing.TB, s attest.Step) []byte {
	tb.Helper()
	st, err := attest.NewStatement(s)
	require.NoError(tb, err)
	b, err := attest.MarshalStatement(st)
	require.NoError(tb, err)
	return b
}

// requireFastAgrees fails if the fast path accepts payload and the
// general parser does not, or reads different subjects or provenance.
// It reports whether the fast path accepted.
func requireFastAgrees(t *testing.T, payload []byte) bool {
	t.Helper()
	fast, ok := parseStatementFast(payload)
	if !ok {
		return false
	}
	slow, err := parseStatementProtojson(payload)
	require.NoError(t, err, "fast path accepted what protojson refuses: %q", payload)
	require.Equal(t, slow.subjects, fast.subjects)
	want, err := slow.provenance()
	require.NoError(t, err, "fast path accepted a predicate provenance() refuses: %q", payload)
	got, err := fast.provenance()
	require.NoError(t, err)
	require.Equal(t, want, got)
	return true
}

func TestStatementFastAgrees(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*attest.Step)
	}{
		{"full", func(*attest.Step) {}},
		{"minimal", func(s *attest.Step) {
			*s = attest.Step{Name: "x", BuilderID: "spiffe://td/a", Products: []attest.Artifact{{Name: "a", SHA256: fastTestSum("a")}}}
		}},
		{"no metadata", func(s *attest.Step) { s.InvocationID, s.StartedOn, s.FinishedOn = "", time.Time{}, time.Time{} }},
		{"only startedOn", func(s *attest.Step) { s.InvocationID, s.FinishedOn = "", time.Time{} }},
		{"millis", func(s *attest.Step) { s.StartedOn = time.Date(2025, 1, 1, 0, 0, 0, 120_000_000, time.UTC) }},
		{"micros", func(s *attest.Step) { s.StartedOn = time.Date(2025, 1, 1, 0, 0, 0, 123_400_000+500, time.UTC) }},
		{"zone", func(s *attest.Step) {
			now := time.Now()
			s.StartedOn, s.FinishedOn = now.In(time.FixedZone("X", -7*3600)), now.Add(time.Millisecond)
		}},
		{"earliest and latest", func(s *attest.Step) {
			s.StartedOn = time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)
			s.FinishedOn = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
		}},
		{"extreme ids", func(s *attest.Step) {
			s.Workload.PID, s.Workload.UID, s.Workload.GID = math.MinInt32, math.MaxUint32, 0
		}},
		{"nil lists", func(s *attest.Step) { s.Command, s.CallerCmdline, s.Workload = nil, nil, attest.Workload{} }},
		{"escapes", func(s *attest.Step) {
			s.Name = "st\"ep\u2028"
			s.Command = []string{"a\"b\\c", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "<html>&amp;</html>", "\u2028\u2029", "\uFFFD", "日本語", "😀"}
			s.Workspace = "/ws/\"quoted\"\n"
			s.Workload.Selectors = []string{"unix:path:/a b/c\td"}
			s.Products = append(s.Products, attest.Artifact{Name: "日本/\"x\"", SHA256: fastTestSum("x")})
		}},
		{"sources only", func(s *attest.Step) { s.Materials = nil }},
		{"many artifacts", func(s *attest.Step) {
			for i := range 40 {
				n := strings.Repeat("d/", i%5) + "f" + string(rune('a'+i%26)) + string(rune('a'+i/26))
				s.Products = append(s.Products, attest.Artifact{Name: n, SHA256: fastTestSum(n)})
				s.Materials = append(s.Materials, attest.Artifact{Name: "m/" + n, SHA256: fastTestSum("m" + n)})
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fastTestStep()
			tc.mutate(&s)
			payload := agentPayload(t, s)
			require.True(t, requireFastAgrees(t, payload), "fast path refused an agent statement: %s", payload)
		})
	}
}

// TestStatementFastFallsBack: statements that are not the agent's exact
// bytes, valid or not, are left to protojson.
func TestStatementFastFallsBack(t *testing.T) {
	payload := agentPayload(t, fastTestStep())
	var indented bytes.Buffer
	require.NoError(t, json.Indent(&indented, payload, "", " "))
	for _, tc := range []struct {
		name    string
		payload []byte
		valid   bool // protojson and provenance accept it
	}{
		{"whitespace", indented.Bytes(), true},
		{"trailing newline", append(bytes.Clone(payload), '\n'), true},
		{"escaped letter", bytes.Replace(payload, []byte(`"build"`), []byte(`"\u0062uild"`), 1), true},
		{"escaped slash", bytes.Replace(payload, []byte(`spiffe://`), []byte(`spiffe:\/\/`), 1), true},
		{"pid as float", bytes.Replace(payload, []byte(`"pid":4242`), []byte(`"pid":4242.0`), 1), true},
		{"pid as exponent", bytes.Replace(payload, []byte(`"pid":4242`), []byte(`"pid":4.242e3`), 1), true},
		{"step v1", bytes.Replace(payload, []byte(attest.BuildType), []byte(attest.BuildTypeV1), 1), true},
		{"extra predicate key", bytes.Replace(payload, []byte(`"runDetails":{`), []byte(`"runDetails":{"x":1,`), 1), true},
		{"unknown statement field", bytes.Replace(payload, []byte(`{"_type"`), []byte(`{"x":1,"_type"`), 1), false},
		{"duplicate key", bytes.Replace(payload, []byte(`"step":"build"`), []byte(`"step":"evil","step":"build"`), 1), false},
		{"upper-case key", bytes.Replace(payload, []byte(`"step":"build"`), []byte(`"Step":"build"`), 1), false},
		{"invalid UTF-8", bytes.Replace(payload, []byte(`"build"`), []byte("\"bu\xffld\""), 1), false},
		{"upper-case digest", bytes.Replace(payload, []byte(fastTestSum("tarball")), []byte(strings.ToUpper(fastTestSum("tarball"))), 1), true},
		{"other predicate type", bytes.Replace(payload, []byte(attest.PredicateType), []byte("https://slsa.dev/provenance/v0.2"), 1), false},
		{"not JSON", []byte(`{`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NotEqual(t, string(payload), string(tc.payload), "the case changes nothing")
			require.False(t, requireFastAgrees(t, tc.payload), "fast path accepted %s", tc.payload)
			st, err := parseStatement(tc.payload)
			if err == nil {
				_, err = st.provenance()
			}
			if tc.valid {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}

// FuzzStatementFastAgrees mutates agent statements and the hostile
// near-misses: whenever the fast path accepts, protojson must accept with
// the same subjects and provenance.
//
//	go test -run XXX -fuzz FuzzStatementFastAgrees -fuzztime 3m ./attest/verify/
func FuzzStatementFastAgrees(f *testing.F) {
	full := fastTestStep()
	minimal := attest.Step{Name: "x", BuilderID: "spiffe://td/a", Products: []attest.Artifact{{Name: "a", SHA256: fastTestSum("a")}}}
	ids := fastTestStep()
	ids.Workload.PID, ids.Workload.UID = -1, math.MaxUint32
	for _, s := range []attest.Step{full, minimal, ids, hostileStep()} {
		f.Add(agentPayload(f, s))
	}
	for _, p := range hostilePayloads(f) {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		requireFastAgrees(t, payload)
	})
}

func BenchmarkParseStatement(b *testing.B) {
	payload := agentPayload(b, fastTestStep())
	for _, bc := range []struct {
		name  string
		parse func([]byte) (*statement, error)
	}{
		{"fast", parseStatement},
		{"protojson", parseStatementProtojson},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				st, err := bc.parse(payload)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := st.provenance(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzStatementFastAgent builds agent statements from fuzzed fields:
// every statement the agent can write must take the fast path, with what
// protojson reads from it.
//
//	go test -run XXX -fuzz FuzzStatementFastAgent -fuzztime 2m ./attest/verify/
func FuzzStatementFastAgent(f *testing.F) {
	f.Add("build", "/ws", "make\x00-j4", "unix:uid:1", int32(4242), uint32(1001), int64(1741064767), uint32(123456789), "id", "out", "in")
	f.Add("\x00", "\"\\", "\u2028\x1f", "😀", int32(-1), uint32(math.MaxUint32), int64(-62135596800), uint32(1000), "\\u0041", "a/b", "")
	f.Fuzz(func(t *testing.T, name, ws, cmd, sel string, pid int32, uid uint32, start int64, nanos uint32, inv, product, material string) {
		s := attest.Step{
			Name:          name,
			Workspace:     ws,
			Command:       strings.Split(cmd, "\x00"),
			CallerCmdline: []string{cmd},
			Products:      []attest.Artifact{{Name: product, SHA256: fastTestSum(product)}, {Name: "z" + product, SHA256: fastTestSum(name)}},
			Workload:      attest.Workload{SPIFFEIDs: []string{sel + name}, Selectors: []string{sel}, PID: pid, UID: uid, GID: uid / 2},
			BuilderID:     "spiffe://example.org/" + url.PathEscape(name),
			InvocationID:  inv,
		}
		if material != "" {
			s.Materials = []attest.Artifact{{Name: material, SHA256: fastTestSum(material)}}
			s.CallerClaims = map[string]string{"job": inv, "ref": sel}
			s.Sources = []attest.GitSource{{Path: material, Commit: fastTestSum(material)[:40], Tree: fastTestSum(inv)[:40], Ref: "refs/" + sel, RemoteURL: ws, Clean: pid%2 == 0}}
		}
		if start != 0 {
			s.StartedOn = time.Unix(start, int64(nanos%1e9))
			s.FinishedOn = s.StartedOn.Add(time.Duration(nanos))
		}
		st, err := attest.NewStatement(s)
		if err != nil {
			return
		}
		payload, err := attest.MarshalStatement(st)
		require.NoError(t, err)
		require.True(t, requireFastAgrees(t, payload), "fast path refused an agent statement: %q", payload)
	})
}

// TestStatementFastTakesTheSameChecks: provenance applies its predicate
// checks to what the fast path read too, so a check is never skipped for
// agent statements (today statementJSON writes values that pass them).
func TestStatementFastTakesTheSameChecks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*fastPredicate)
		wantErr string
	}{
		{"as read", func(*fastPredicate) {}, ""},
		{"step/v1 build type", func(f *fastPredicate) { f.buildType = attest.BuildTypeV1 }, ""},
		{"predicate type", func(f *fastPredicate) { f.predicateType = "https://slsa.dev/provenance/v0.2" }, "predicateType is"},
		{"build type", func(f *fastPredicate) { f.buildType = "https://example.com/other" }, "is not one this verifier knows"},
		{"step", func(f *fastPredicate) { f.prov.step = "" }, "externalParameters.step is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ok := parseStatementFast(agentPayload(t, fastTestStep()))
			require.True(t, ok)
			tc.mutate(st.fast)
			_, err := st.provenance()
			if tc.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.wantErr)
			}
		})
	}
}

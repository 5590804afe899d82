package verify

// Attacker's tests of the fast statement path (security review): payloads
// a signer could craft near the agent's exact bytes. The fast path must
// refuse each (leaving it to protojson), or read exactly what protojson
// reads.

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
)

// hostileStep has everything the agent may write: claims, sources with
// and without uri, escapes, a non-BMP rune, U+2028, NUL.
func hostileStep() attest.Step {
	s := fastTestStep()
	s.Name = "bu\u2028ild😀"
	s.Command = append(s.Command, "\x00\x1f\x7f", "\\/")
	s.Products = append(s.Products, attest.Artifact{Name: "e/😀", SHA256: fastTestSum("emoji")})
	return s
}

// hostilePayloads are agent payloads with one change each; every one
// differs from what statementJSON writes for any Step.
func hostilePayloads(tb testing.TB) map[string][]byte {
	p := agentPayload(tb, hostileStep())
	rep := func(old, new string) []byte {
		require.True(tb, bytes.Contains(p, []byte(old)), "payload lacks %q", old)
		return bytes.Replace(p, []byte(old), []byte(new), 1)
	}
	sumT := fastTestSum("tarball")
	out := map[string][]byte{
		"surrogate pair escape":   rep("😀\"", `\ud83d\ude00"`),
		"lone surrogate":          rep("😀\"", `\ud800"`),
		"escaped U+2028":          rep("\u2028", `\u2028`),
		"upper-case \\u001F":      rep(`\u001f`, `\u001F`),
		"escaped slash":           rep(`\\/`, `\\\/`),
		"escaped DEL":             rep("\x7f", `\u007f`),
		"raw control":             rep(`\u001f`, "\x1f"),
		"raw newline":             rep(`b\"q\n`, "b\\\"q\n"),
		"invalid UTF-8":           rep("😀\"", "\xf0\x9f\x98\"}"),
		"overlong NUL":            rep(`\u0000`, "\xc0\x80"),
		"pid -0":                  rep(`"pid":4242`, `"pid":-0`),
		"pid leading zero":        rep(`"pid":4242`, `"pid":04242`),
		"pid plus":                rep(`"pid":4242`, `"pid":+4242`),
		"pid float":               rep(`"pid":4242`, `"pid":4242.0`),
		"pid exponent":            rep(`"pid":4242`, `"pid":4.242e3`),
		"pid too big":             rep(`"pid":4242`, `"pid":2147483648`),
		"uid 2^32":                rep(`"uid":1001`, `"uid":4294967296`),
		"gid negative":            rep(`"gid":1001`, `"gid":-1`),
		"uid string":              rep(`"uid":1001`, `"uid":"1001"`),
		"upper-case digest":       rep(sumT, strings.ToUpper(sumT)),
		"digest with md5 too":     rep(`"sha256":"`+sumT+`"}`, `"sha256":"`+sumT+`","md5":"00"}`),
		"subject without sha256":  rep(`{"sha256":"`+sumT+`"}`, `{"sha512":"`+sumT+sumT+`"}`),
		"products unsorted":       swapFirstProducts(tb, p),
		"duplicate product":       rep(`],"predicateType"`, `,{"name":"e/😀","digest":{"sha256":"`+fastTestSum("emoji")+`"}}],"predicateType"`),
		"duplicate step":          rep(`"step":`, `"step":"evil","step":`),
		"duplicate claim":         rep(`"ci":"日本",`, `"ci":"x","ci":"日本",`),
		"claims unsorted":         rep(`"ci":"日本","job":"b\"q\n"`, `"job":"b\"q\n","ci":"日本"`),
		"claim key upper":         rep(`"ci":`, `"CI":`),
		"metadata reordered":      reorderMetadata(tb, p),
		"metadata duplicate":      rep(`"invocationId":`, `"invocationId":"x","invocationId":`),
		"empty invocationId":      rep(`"invocationId":"0b6f6f7e8f0b4b8e9a3c6f2f5d1c2a11"`, `"invocationId":""`),
		"time +00:00":             rep(`05:07:08Z`, `05:07:08+00:00`),
		"time lower z":            rep(`05:07:08Z`, `05:07:08z`),
		"time .0":                 rep(`05:07:08Z`, `05:07:08.0Z`),
		"time .000":               rep(`05:07:08Z`, `05:07:08.000Z`),
		"time comma":              rep(`05:06:07.123456789Z`, `05:06:07,123456789Z`),
		"time leap second":        rep(`05:07:08Z`, `23:59:60Z`),
		"time year 0":             rep(`2025-03-04T05:06:07`, `0000-03-04T05:06:07`),
		"time zero":               rep(`2025-03-04T05:06:07.123456789Z`, `0001-01-01T00:00:00Z`),
		"finished before started": rep(`2025-03-04T05:07:08Z`, `2025-03-04T05:06:07Z`),
		"clean as string":         rep(`"clean":true`, `"clean":"true"`),
		"uri dropped":             rep(`,"uri":"git+https://h/o/r@refs/tags/v1"`, ``),
		"uri changed":             rep(`"uri":"git+https://h/o/r@refs/tags/v1"`, `"uri":"git+https://evil/o/r@refs/tags/v1"`),
		"uri added":               rep(`"name":"z"}`, `"name":"z","uri":"git+git@h:o/r.git"}`),
		"source ref not refs/":    rep(`"ref":"refs/tags/v1"`, `"ref":"tags/v1"`),
		"source commit upper":     rep(`"gitCommit":"cccc`, `"gitCommit":"CCCC`),
		"materials after sources": materialsLast(tb, p),
		"build type v1":           rep(attest.BuildType, attest.BuildTypeV1),
		"build type other":        rep(attest.BuildType, "https://evil/step/v2"),
		"predicate type other":    rep(attest.PredicateType, "https://slsa.dev/provenance/v0.2"),
		"statement v0.1":          rep(`Statement/v1`, `Statement/v0.1`),
		"builder id relative":     rep(`"id":"spiffe://example.org/hallmark/agent/node-1"`, `"id":"node-1"`),
		"builder id empty":        rep(`"id":"spiffe://example.org/hallmark/agent/node-1"`, `"id":""`),
		"step empty":              rep(`"step":"bu`, `"step":"","x":"bu`),
		"unknown predicate key":   rep(`"runDetails":{`, `"runDetails":{"byproducts":[],`),
		"BOM":                     append([]byte("\ufeff"), p...),
		"trailing space":          append(bytes.Clone(p), ' '),
		"trailing object":         append(bytes.Clone(p), "{}"...),
		"truncated":               p[:len(p)-1],
		"deep nesting":            []byte(strings.Repeat("[", 100000)),
		"empty":                   {},
	}
	return out
}

// swapFirstProducts exchanges the first two subjects.
func swapFirstProducts(tb testing.TB, p []byte) []byte {
	start := bytes.Index(p, []byte(`"subject":[`)) + len(`"subject":[`)
	end := bytes.Index(p, []byte(`],"predicateType"`))
	parts := strings.SplitAfter(string(p[start:end]), "}},")
	require.GreaterOrEqual(tb, len(parts), 2)
	a, b := strings.TrimSuffix(parts[0], ","), strings.TrimSuffix(parts[1], ",")
	swapped := b + "," + a
	if len(parts) > 2 {
		swapped += "," + strings.Join(parts[2:], "")
	}
	return []byte(string(p[:start]) + swapped + string(p[end:]))
}

// reorderMetadata puts startedOn first.
func reorderMetadata(tb testing.TB, p []byte) []byte {
	const fin = `"finishedOn":"2025-03-04T05:07:08Z",`
	const inv = `"invocationId":"0b6f6f7e8f0b4b8e9a3c6f2f5d1c2a11",`
	const st = `"startedOn":"2025-03-04T05:06:07.123456789Z"`
	old := fin + inv + st
	require.True(tb, bytes.Contains(p, []byte(old)))
	return bytes.Replace(p, []byte(old), []byte(st+","+fin+strings.TrimSuffix(inv, ",")), 1)
}

// materialsLast moves the first material after the last source.
func materialsLast(tb testing.TB, p []byte) []byte {
	m := `{"digest":{"sha256":"` + fastTestSum("makefile") + `"},"name":"Makefile"},`
	require.True(tb, bytes.Contains(p, []byte(m)))
	q := bytes.Replace(p, []byte(m), nil, 1)
	return bytes.Replace(q, []byte(`]},"runDetails"`), []byte(","+strings.TrimSuffix(m, ",")+`]},"runDetails"`), 1)
}

// TestStatementFastRefusesHostile: the fast path refuses each near-miss,
// so parseStatement leaves it to protojson.
func TestStatementFastRefusesHostile(t *testing.T) {
	good := agentPayload(t, hostileStep())
	require.True(t, requireFastAgrees(t, good), "fast path refused the agent's own statement %s", good)
	for name, p := range hostilePayloads(t) {
		t.Run(name, func(t *testing.T) {
			require.NotEqual(t, string(good), string(p))
			require.False(t, requireFastAgrees(t, p), "fast path accepted %q", p)
		})
	}
}

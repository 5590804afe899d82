package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// keyForms are the ways a P-256 private key could be written: its scalar
// raw, in hex, base64 and decimal (a logged big.Int or struct), and the
// SEC 1 and PKCS #8 DER that a PEM file or a JWK-less store would hold.
func keyForms(t *testing.T, key *ecdsa.PrivateKey) map[string][]byte {
	t.Helper()
	d := key.D.FillBytes(make([]byte, 32))
	sec1, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return map[string][]byte{
		"scalar":            d,
		"scalar, hex":       []byte(hex.EncodeToString(d)),
		"scalar, HEX":       []byte(strings.ToUpper(hex.EncodeToString(d))),
		"scalar, base64":    []byte(base64.RawStdEncoding.EncodeToString(d)),
		"scalar, base64url": []byte(base64.RawURLEncoding.EncodeToString(d)),
		"scalar, decimal":   []byte(key.D.String()),
		"SEC 1 DER":         sec1,
		"PKCS #8 DER":       pkcs8,
	}
}

// base64Run is a run of base64 (standard or URL alphabet) long enough to
// hold 32 bytes.
var base64Run = regexp.MustCompile(`[A-Za-z0-9+/_-]{43,}`)

// decodedRuns are b's base64 runs decoded, each from each of its first four
// characters (a key inside a longer encoded blob, as in a PEM body or a
// JSON field, starts at any offset). PEM's line breaks are taken out first.
func decodedRuns(b []byte) [][]byte {
	joined := strings.NewReplacer("\r\n", "", "\n", "", `\n`, "").Replace(string(b))
	var out [][]byte
	for _, run := range base64Run.FindAllString(joined, -1) {
		std := strings.NewReplacer("-", "+", "_", "/").Replace(run)
		for skip := 0; skip < 4; skip++ {
			s := std[skip:]
			if len(s)%4 == 1 {
				s = s[:len(s)-1] // no whole byte in it
			}
			if d, err := base64.RawStdEncoding.DecodeString(s); err == nil { // runs stop before any '='
				out = append(out, d)
			}
		}
	}
	return out
}

// findKey reports where in content, as written or inside its base64, a
// form of key appears, or "" when none does.
func findKey(content []byte, forms map[string][]byte) string {
	if bytes.Contains(content, []byte("PRIVATE KEY")) {
		return "a PEM private key block"
	}
	candidates := append([][]byte{content}, decodedRuns(content)...)
	for name, form := range forms {
		for i, c := range candidates {
			if bytes.Contains(c, form) {
				if i == 0 {
					return name
				}
				return name + ", base64-encoded"
			}
		}
	}
	return ""
}

// Must show (README: "the agent's signing key lives only in memory"): the
// keys the agent generates for its signing certificates reach neither its
// data directory nor any file under TMPDIR nor its logs at debug level, in
// any of the forms keyForms lists, raw or base64-encoded, through
// renewals, attestations over the local API, the outbox's submission to
// the log (settling records), and its rewrite of every record when it is
// opened again, as at the agent's start. The scan is shown to work: it finds each
// certificate, which the outbox holds base64-encoded in the bundles, and a
// key planted the way a careless change would write one.
func TestSigningKeyNeverWritten(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // the fixture, the data directory and anything the agent writes there
	fx := newLocalAPIFixture(t)
	dataDir := filepath.Join(tmp, "data")
	require.NoError(t, os.Mkdir(dataDir, 0o700))
	outboxDir := filepath.Join(dataDir, "outbox")
	ob, err := fx.a.openOutbox(outboxDir)
	require.NoError(t, err)
	log := newTestLog()
	ca := newTestCA(t)
	issuer := &fakeIssuer{}
	issuer.setAnswer(certifies(ca, agentID, time.Now, time.Hour))
	fx.write(t, "dist/app", 100)
	c := fx.client(t)

	var keys []*ecdsa.PrivateKey
	var certs [][]byte
	for i := 0; i < 3; i++ {
		require.NoError(t, fx.a.renew(context.Background(), issuer))
		held := fx.a.keys.cur.Load()
		keys = append(keys, held.key)
		certs = append(certs, held.leaf().Raw)
		for j := 0; j < 2; j++ {
			_, err := c.AttestStep(context.Background(), &agentv1.AttestStepRequest{Step: "build", Workspace: fx.ws, Products: []string{"dist"}})
			require.NoError(t, err)
		}
		if i < 2 {
			drain(t, fx.a, direct{log}, 10) // the outbox appends each record's settlement
		}
	}
	require.NoError(t, ob.Close())
	// Opening rewrites the file from every record it holds (outbox.Open),
	// as a compaction does.
	ob, err = fx.a.openOutbox(outboxDir)
	require.NoError(t, err)
	require.Equal(t, 2, ob.Len(), "the last two attestations, not yet logged, copied by the rewrite")
	require.NoError(t, ob.Close())

	// Everything written under TMPDIR, and the logs.
	written := map[string][]byte{"the agent's log": fx.debugLog.Bytes()}
	require.NoError(t, filepath.WalkDir(tmp, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		written[path] = b
		return err
	}))
	var outboxBytes int
	for path, b := range written {
		if strings.HasPrefix(path, dataDir) {
			outboxBytes += len(b)
		}
	}
	require.Positive(t, outboxBytes, "the outbox wrote nothing to scan")

	for i, key := range keys {
		forms := keyForms(t, key)
		for path, b := range written {
			require.Empty(t, findKey(b, forms), "signing key %d found in %s", i, path)
		}
		// The scan sees what the outbox holds: each certificate, in the
		// bundles it signed.
		found := false
		for path, b := range written {
			if strings.HasPrefix(path, dataDir) && findKey(b, map[string][]byte{"certificate": certs[i]}) != "" {
				found = true
			}
		}
		require.True(t, found, "certificate %d not seen in the data directory: the scan would miss a key too", i)
	}

	// And it finds a key written the way a careless change would.
	planted, err := x509.MarshalECPrivateKey(keys[0])
	require.NoError(t, err)
	for _, b := range [][]byte{
		planted,
		[]byte(`{"key":"` + base64.StdEncoding.EncodeToString(planted) + `"}`),
		[]byte(fmt.Sprintf(`{"level":"debug","key":{"D":%s}}`, keys[0].D)),
		[]byte(`{"k":"x` + base64.RawURLEncoding.EncodeToString(keys[0].D.FillBytes(make([]byte, 32))) + `"}`),
	} {
		require.NotEmpty(t, findKey(b, keyForms(t, keys[0])), "the scan misses %q", b)
	}
}

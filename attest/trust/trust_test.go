package trust

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest/tlog"
)

func TestCheckpointOrigin(t *testing.T) {
	tests := []struct{ baseURL, origin, err string }{
		{"https://hallmark.example.org", "hallmark.example.org", ""},
		{"https://hallmark.example.org/", "hallmark.example.org", ""},
		{"https://hallmark.example.org/log", "hallmark.example.org", ""}, // as sigstore-go: the host alone
		{"http://hallmark.example:8080", "hallmark.example", ""},
		{"hallmark.example/log", "", "not an absolute URL"},
		{"", "", "not an absolute URL"},
		{"https://", "", "not an absolute URL"},
		{"https://hallmark example/log", "", "invalid character"},
		{"1x://hallmark.example/log", "", "first path segment"},
	}
	for _, tc := range tests {
		t.Run(tc.baseURL, func(t *testing.T) {
			got, err := CheckpointOrigin(tc.baseURL)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.origin, got)
		})
	}
}

func mustCA(t *testing.T, notBefore, notAfter time.Time) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "signing CA"},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return []*x509.Certificate{c}
}

// The signing-CA rule, at its boundaries: trusted through NotAfter;
// revoked from T means not trusted at T; tainted at T means trusted until
// just before T+TaintGrace.
func TestSigningCA(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(24 * time.Hour)
	chain := mustCA(t, nb, na)
	at := nb.Add(time.Hour)
	tests := []struct {
		name             string
		tainted, revoked time.Time
		trusted, refused []time.Time
	}{
		{name: "untouched", trusted: []time.Time{nb, at, na}, refused: []time.Time{nb.Add(-time.Nanosecond), na.Add(time.Nanosecond)}},
		{name: "revoked", revoked: at, trusted: []time.Time{nb, at.Add(-time.Second), at.Add(-time.Nanosecond)}, refused: []time.Time{at, at.Add(time.Second), na}},
		{name: "tainted", tainted: at, trusted: []time.Time{at, at.Add(TaintGrace - time.Second)}, refused: []time.Time{at.Add(TaintGrace), na}},
		{name: "tainted, then revoked earlier", tainted: at, revoked: at.Add(-time.Minute), trusted: []time.Time{at.Add(-time.Minute - time.Second)}, refused: []time.Time{at.Add(-time.Minute), at}},
		{name: "revoked from its first instant", revoked: nb, refused: []time.Time{nb, at}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ca, err := SigningCA(chain, tc.tainted, tc.revoked)
			require.NoError(t, err)
			for _, tt := range tc.trusted {
				require.True(t, ca.ValidFor.Contains(tt), "trusted at %s (%s)", tt, ca.ValidFor)
			}
			for _, tt := range tc.refused {
				require.False(t, ca.ValidFor.Contains(tt), "refused at %s (%s)", tt, ca.ValidFor)
			}
			// The range survives the trip through the trusted root.
			st, err := ParseTrustedRoot(mustJSON(t, State{CAs: []CA{ca}}))
			require.NoError(t, err)
			require.True(t, st.CAs[0].ValidFor.Start.Equal(ca.ValidFor.Start))
			require.True(t, st.CAs[0].ValidFor.End.Equal(ca.ValidFor.End))
		})
	}
	_, err := SigningCA(nil, time.Time{}, time.Time{})
	require.Error(t, err)
}

func mustJSON(t *testing.T, s State) []byte {
	t.Helper()
	out, err := s.MarshalJSON()
	require.NoError(t, err)
	return out
}

// The trusted root's JSON has the members strict parsers require even
// when empty, and names the log by its C2SP key ID.
func TestTrustedRootJSON(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	ca, err := SigningCA(mustCA(t, nb, nb.Add(time.Hour)), time.Time{}, time.Time{})
	require.NoError(t, err)
	s := State{CAs: []CA{ca}, Logs: []Log{{Origin: "hallmark.example.org", Key: pub, ValidFor: Range{Start: nb}}}}
	out := mustJSON(t, s)
	var doc struct {
		Ctlogs                 []any `json:"ctlogs"`
		CertificateAuthorities []struct {
			Subject map[string]string `json:"subject"`
		} `json:"certificateAuthorities"`
		Tlogs []struct {
			BaseURL string `json:"baseUrl"`
			LogID   struct {
				KeyID []byte `json:"keyId"`
			} `json:"logId"`
		} `json:"tlogs"`
		TimestampAuthorities []any `json:"timestampAuthorities"`
	}
	require.NoError(t, json.Unmarshal(out, &doc))
	require.Contains(t, string(out), `"ctlogs": []`)
	require.NotNil(t, doc.TimestampAuthorities)
	require.Equal(t, map[string]string{"commonName": "signing CA", "organization": ""}, doc.CertificateAuthorities[0].Subject)
	require.Equal(t, "https://hallmark.example.org", doc.Tlogs[0].BaseURL)
	require.Equal(t, tlog.KeyID("hallmark.example.org", pub), doc.Tlogs[0].LogID.KeyID)

	back, err := ParseTrustedRoot(out)
	require.NoError(t, err)
	require.Equal(t, "hallmark.example.org", back.Logs[0].Origin)
	require.True(t, pub.Equal(back.Logs[0].Key))
}

// FuzzParseTrustedRoot: trusted roots come from files and over HTTP; what
// parses renders again and parses to the same logs.
func FuzzParseTrustedRoot(f *testing.F) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(f, err)
	chain := func() []*x509.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(f, err)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "CA"}, NotBefore: nb, NotAfter: nb.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		require.NoError(f, err)
		c, err := x509.ParseCertificate(der)
		require.NoError(f, err)
		return []*x509.Certificate{c}
	}()
	ca, err := SigningCA(chain, time.Time{}, nb.Add(30*time.Minute))
	require.NoError(f, err)
	seed, err := State{CAs: []CA{ca}, Logs: []Log{{Origin: "hallmark.example.org", Key: pub, ValidFor: Range{Start: nb}}}}.MarshalJSON()
	require.NoError(f, err)
	f.Add(seed)
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[{"baseUrl":"x","publicKey":{"keyDetails":"PKIX_ED25519"}}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseTrustedRoot(data)
		if err != nil {
			return
		}
		again, err := st.MarshalJSON()
		if err != nil {
			t.Fatalf("a parsed trusted root does not render: %v", err)
		}
		back, err := ParseTrustedRoot(again)
		if err != nil {
			t.Fatalf("a rendered trusted root does not parse: %v", err)
		}
		if len(back.Logs) != len(st.Logs) || len(back.CAs) != len(st.CAs) || len(back.TSAs) != len(st.TSAs) {
			t.Fatalf("round trip changed the state: %d/%d/%d logs/CAs/TSAs, then %d/%d/%d",
				len(st.Logs), len(st.CAs), len(st.TSAs), len(back.Logs), len(back.CAs), len(back.TSAs))
		}
	})
}

package server

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials"
)

// serverHandshake runs a TLS handshake of a client presenting leaf (its key
// key) against creds' server side, and returns the server's error.
func serverHandshake(t *testing.T, creds credentials.TransportCredentials, leaf *x509.Certificate, key *ecdsa.PrivateKey) error {
	t.Helper()
	serverConn, clientConn := net.Pipe()
	defer clientConn.Close()
	go func() {
		c := tls.Client(clientConn, &tls.Config{
			Certificates:       []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}},
			InsecureSkipVerify: true, // the server side is what is under test
			NextProtos:         []string{"h2"},
		})
		if c.Handshake() == nil {
			io.Copy(io.Discard, c) //nolint:errcheck // drains session tickets until the pipe closes
		}
	}()
	_, _, err := creds.ServerHandshake(serverConn)
	serverConn.Close()
	return err
}

// Must show: the server's handshake (serverCredentials, as Run builds
// them) admits a member of its trust domain and refuses, before any call
// is read: an SVID of another trust domain even when it chains to an
// authority the server holds for that domain (a federated bundle); an SVID
// naming the server's trust domain from an authority it does not hold;
// and an expired SVID.
func TestHandshakeAdmitsOnlyTheTrustDomain(t *testing.T) {
	ca, foreignCA := newTestCA(t, "spire"), newTestCA(t, "another spire")
	serverKey := newP256(t)
	srv := &x509svid.SVID{ID: serverID, Certificates: []*x509.Certificate{ca.issue(t, svidTemplate(serverID), serverKey.Public())}, PrivateKey: serverKey}
	bundles := x509bundle.NewSet(
		x509bundle.FromX509Authorities(exampleTD, []*x509.Certificate{ca.cert}),
		x509bundle.FromX509Authorities(otherTD, []*x509.Certificate{ca.cert}), // federated with other.org
	)
	creds := serverCredentials(svidSource{srv}, bundles, exampleTD)

	agent := spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-1")
	expired := svidTemplate(agent)
	expired.NotBefore, expired.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	for _, tc := range []struct {
		name    string
		ca      *testCA
		tmpl    *x509.Certificate
		wantErr string // "" to be admitted
	}{
		{"a member of the trust domain", ca, svidTemplate(agent), ""},
		{"the server's own trust domain, another path", ca, svidTemplate(spiffeid.RequireFromString("spiffe://example.org/ci/builder")), ""}, // the calls' policy decides (TestUnaryInterceptor)
		{"another trust domain, federated", ca, svidTemplate(spiffeid.RequireFromString("spiffe://other.org/hallmark/agent/runner-1")), `unexpected trust domain "other.org"`},
		{"an authority the server does not hold", foreignCA, svidTemplate(agent), "could not verify leaf certificate"},
		{"expired", ca, expired, "certificate has expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := newP256(t)
			err := serverHandshake(t, creds, tc.ca.issue(t, tc.tmpl, key.Public()), key)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

// TestClassify covers Vault answers the contract suite cannot provoke from
// a real OpenBao (a proxy's 502 and 504, rate limiting, an empty error
// list), with a hand-written stand-in answering pki/sign. Everything else
// about faults is shown against a real OpenBao in contract_test.go.
func TestClassify(t *testing.T) {
	cases := []struct {
		name   string
		status int
		errs   []string
		fault  error
		msg    string
	}{
		{"proxy bad gateway", http.StatusBadGateway, []string{"upstream connect error"}, ErrUnreachable, "HTTP 502: upstream connect error"},
		{"proxy timeout", http.StatusGatewayTimeout, nil, ErrUnreachable, "HTTP 504: Gateway Timeout"},
		{"standby without a leader", http.StatusServiceUnavailable, []string{"local node not active but active cluster node not found"}, ErrUnreachable, "HTTP 503"},
		{"sealed", http.StatusServiceUnavailable, []string{"Vault is sealed"}, ErrSealed, "HTTP 503: Vault is sealed"},
		{"rate limited", http.StatusTooManyRequests, []string{"request path \"pki/sign/r\": rate limit quota exceeded"}, ErrUnreachable, "HTTP 429"},
		{"refused", http.StatusForbidden, []string{"1 error occurred:\n\t* permission denied\n\n"}, ErrRefusedByPolicy, "HTTP 403: permission denied: vault refused by policy"},
		{"server error is a misconfiguration", http.StatusInternalServerError, []string{"2 errors occurred:\n\t* missing name in alias\n\t* other\n\n"}, ErrMisconfigured, "HTTP 500: missing name in alias; other: vault is misconfigured"},
		{"bad request", http.StatusBadRequest, []string{"unknown role: r"}, ErrMisconfigured, "HTTP 400: unknown role: r"},
		{"no such mount", http.StatusNotFound, []string{"no handler for route \"pki/sign/r\". route entry not found."}, ErrMisconfigured, "HTTP 404"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/auth/token/lookup-self") {
					json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"ttl": 0, "renewable": false}}) //nolint:errcheck,errchkjson
					return
				}
				w.WriteHeader(tc.status)
				json.NewEncoder(w).Encode(map[string]any{"errors": tc.errs}) //nolint:errcheck,errchkjson
			}))
			defer srv.Close()
			km, err := New(Config{Address: srv.URL, Role: "r", Auth: AuthConfig{Method: AuthDevToken}, Token: "t"}, Deps{})
			require.NoError(t, err)
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			require.NoError(t, err)
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			require.NoError(t, err)
			csr, err := x509.ParseCertificateRequest(der)
			require.NoError(t, err)
			_, err = km.SignCSR(context.Background(), csr, spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/a"), time.Minute)
			require.ErrorIs(t, err, tc.fault)
			require.ErrorContains(t, err, tc.msg)
			var e *Error
			require.True(t, errors.As(err, &e))
			require.Equal(t, tc.status, e.Status)
			require.Equal(t, tc.fault == ErrSealed || tc.fault == ErrUnreachable, e.Transient())
			require.NotEmpty(t, e.Fix())
		})
	}
}

// FuzzVaultMessage: whatever items Vault frames as a multierror, the
// message is one line, and the error built on it says something with a fix.
func FuzzVaultMessage(f *testing.F) {
	f.Add("permission denied")
	f.Add("missing name in alias\nother")
	f.Fuzz(func(t *testing.T, items string) {
		framed := "2 errors occurred:\n\t* " + strings.ReplaceAll(items, "\n", "\n\t* ") + "\n\n"
		msg := vaultMessage([]string{framed})
		require.NotContains(t, msg, "\n")
		e := &Error{Op: "write p", Status: 500, Message: msg, Fault: ErrMisconfigured}
		require.NotEmpty(t, e.Error())
		require.NotEmpty(t, e.Fix())
	})
}

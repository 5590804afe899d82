package vaultdev_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/vaultdev"
)

const mount = "pki"

func start(t *testing.T) (*vaultdev.Server, *api.Client) {
	t.Helper()
	dev, err := vaultdev.Start(vaultdev.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { dev.Close() })
	caFile, err := dev.WriteCACert(t.TempDir())
	require.NoError(t, err)
	cfg := api.DefaultConfig()
	cfg.Address = dev.URL()
	cfg.MaxRetries = 0
	require.NoError(t, cfg.ConfigureTLS(&api.TLSConfig{CACert: caFile}))
	client, err := api.NewClient(cfg)
	require.NoError(t, err)
	client.SetToken(dev.RootToken())
	return dev, client
}

// setupPKI mounts pki with one EC root named root-1 and the agent role.
func setupPKI(t *testing.T, c *api.Client) string {
	t.Helper()
	write(t, c, "sys/mounts/"+mount, map[string]any{"type": "pki"})
	s := write(t, c, mount+"/root/generate/internal", map[string]any{"common_name": "root 1", "key_type": "ec", "key_bits": 256, "ttl": "8760h", "issuer_name": "root-1"})
	write(t, c, mount+"/roles/agent", map[string]any{
		"allowed_uri_sans": "spiffe://example.org/*", "require_cn": false, "use_csr_sans": false,
		"use_csr_common_name": false, "max_ttl": "10m", "no_store": true,
	})
	return s.Data["issuer_id"].(string)
}

func write(t *testing.T, c *api.Client, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := c.Logical().Write(path, data)
	require.NoError(t, err, "write %s", path)
	return s
}

func read(t *testing.T, c *api.Client, path string) *api.Secret {
	t.Helper()
	s, err := c.Logical().Read(path)
	require.NoError(t, err, "read %s", path)
	require.NotNil(t, s, "read %s", path)
	return s
}

func rotate(t *testing.T, c *api.Client, name string) string {
	t.Helper()
	s := write(t, c, mount+"/root/rotate/internal", map[string]any{"common_name": strings.ReplaceAll(name, "-", " "), "key_type": "ec", "key_bits": 256, "ttl": "8760h", "issuer_name": name})
	for _, k := range []string{"certificate", "expiration", "issuer_id", "issuer_name", "issuing_ca", "key_id", "key_name", "serial_number"} {
		require.Contains(t, s.Data, k)
	}
	require.Equal(t, name, s.Data["issuer_name"])
	return s.Data["issuer_id"].(string)
}

func cert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	require.NotNil(t, b)
	c, err := x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	return c
}

// sign signs a fresh CSR with role agent and returns the leaf and issuing CA.
func sign(c *api.Client) (*x509.Certificate, *x509.Certificate, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	s, err := c.Logical().Write(mount+"/sign/agent", map[string]any{
		"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), "uri_sans": "spiffe://example.org/a", "ttl": "1m",
	})
	if err != nil {
		return nil, nil, err
	}
	parse := func(k string) *x509.Certificate {
		b, _ := pem.Decode([]byte(s.Data[k].(string)))
		c, _ := x509.ParseCertificate(b.Bytes)
		return c
	}
	return parse("certificate"), parse("issuing_ca"), nil
}

func defaultIssuer(t *testing.T, c *api.Client) string {
	t.Helper()
	s := read(t, c, mount+"/config/issuers")
	require.Equal(t, false, s.Data["default_follows_latest_issuer"])
	return s.Data["default"].(string)
}

func responseError(t *testing.T, err error) *api.ResponseError {
	t.Helper()
	var re *api.ResponseError
	require.True(t, errors.As(err, &re), "want a Vault response error, got %v", err)
	return re
}

func TestRotateKeepsDefaultAndListsIssuers(t *testing.T) {
	_, c := start(t)
	first := setupPKI(t, c)
	second := rotate(t, c, "root-2")
	require.NotEqual(t, first, second)
	require.Equal(t, first, defaultIssuer(t, c), "rotating does not move the default")

	// LIST pki/issuers needs no token and answers in storage (sorted) order.
	anon, err := c.Clone()
	require.NoError(t, err)
	anon.ClearToken()
	s, err := anon.Logical().List(mount + "/issuers")
	require.NoError(t, err)
	keys := []string{}
	for _, k := range s.Data["keys"].([]any) {
		keys = append(keys, k.(string))
	}
	want := []string{first, second}
	sort.Strings(want)
	require.Equal(t, want, keys)
	info := s.Data["key_info"].(map[string]any)
	for id, name := range map[string]string{first: "root-1", second: "root-2"} {
		entry := info[id].(map[string]any)
		require.Equal(t, name, entry["issuer_name"])
		require.Equal(t, id == first, entry["is_default"])
		require.NotEmpty(t, entry["key_id"])
		require.NotEmpty(t, entry["serial_number"])
	}

	// The role signs with the default issuer until the default moves.
	_, ca, err := sign(c)
	require.NoError(t, err)
	require.Equal(t, "root 1", ca.Subject.CommonName)
	s = write(t, c, mount+"/config/issuers", map[string]any{"default": "root-2"})
	require.Equal(t, second, s.Data["default"], "a name resolves to the ID")
	require.Equal(t, second, defaultIssuer(t, c))
	leaf, ca, err := sign(c)
	require.NoError(t, err)
	require.Equal(t, "root 2", ca.Subject.CommonName)
	require.NoError(t, leaf.CheckSignatureFrom(ca))

	// The unauthenticated default issuer follows too.
	r := anon.NewRequest(http.MethodGet, "/v1/"+mount+"/issuer/default/json")
	raw, err := anon.RawRequest(r) //nolint:staticcheck
	require.NoError(t, err)
	var body struct {
		Data struct {
			IssuerID   string   `json:"issuer_id"`
			IssuerName string   `json:"issuer_name"`
			CAChain    []string `json:"ca_chain"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(raw.Body).Decode(&body))
	raw.Body.Close()
	require.Equal(t, second, body.Data.IssuerID)
	require.Equal(t, "root-2", body.Data.IssuerName)
	require.Len(t, body.Data.CAChain, 1)
	raw, err = anon.RawRequest(anon.NewRequest(http.MethodGet, "/v1/"+mount+"/issuer/default/pem")) //nolint:staticcheck
	require.NoError(t, err)
	pemBytes, err := io.ReadAll(raw.Body)
	raw.Body.Close()
	require.NoError(t, err)
	require.Equal(t, "root 2", cert(t, string(pemBytes)).Subject.CommonName)
}

func TestReadIssuerByReference(t *testing.T) {
	_, c := start(t)
	first := setupPKI(t, c)
	for _, ref := range []string{first, "root-1", "default"} {
		t.Run(ref, func(t *testing.T) {
			s := read(t, c, mount+"/issuer/"+ref)
			require.Equal(t, first, s.Data["issuer_id"])
			require.Equal(t, "root-1", s.Data["issuer_name"])
			require.Equal(t, false, s.Data["revoked"])
			require.Equal(t, "crl-signing,issuing-certificates,ocsp-signing,read-only", s.Data["usage"])
			require.Equal(t, "err", s.Data["leaf_not_after_behavior"])
			require.Len(t, s.Data["ca_chain"], 1)
			require.Equal(t, cert(t, s.Data["certificate"].(string)).Raw, cert(t, s.Data["ca_chain"].([]any)[0].(string)).Raw)
			require.NotContains(t, s.Data, "revocation_time")
		})
	}
	_, err := c.Logical().Read(mount + "/issuer/nope")
	require.Equal(t, http.StatusBadRequest, responseError(t, err).StatusCode)
	require.ErrorContains(t, err, "unable to find PKI issuer for reference: nope")
}

func TestConfigIssuersRefusals(t *testing.T) {
	_, c := start(t)
	setupPKI(t, c)
	tests := []struct {
		name    string
		data    map[string]any
		wantMsg string
	}{
		{"empty default", map[string]any{"default": ""}, "Invalid issuer specification; must be non-empty and can't be 'default'."},
		{"default named default", map[string]any{"default": "default"}, "Invalid issuer specification"},
		{"unknown issuer", map[string]any{"default": "nope"}, "Error resolving issuer reference: unable to find PKI issuer for reference: nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Logical().Write(mount+"/config/issuers", tt.data)
			require.Equal(t, http.StatusBadRequest, responseError(t, err).StatusCode)
			require.ErrorContains(t, err, tt.wantMsg)
		})
	}
}

func TestDefaultFollowsLatestIssuer(t *testing.T) {
	_, c := start(t)
	first := setupPKI(t, c)
	s := write(t, c, mount+"/config/issuers", map[string]any{"default": first, "default_follows_latest_issuer": true})
	require.Equal(t, true, s.Data["default_follows_latest_issuer"])
	second := rotate(t, c, "root-2")
	s = read(t, c, mount+"/config/issuers")
	require.Equal(t, second, s.Data["default"])
	// Writing only the default leaves the flag as it is.
	s = write(t, c, mount+"/config/issuers", map[string]any{"default": first})
	require.Equal(t, true, s.Data["default_follows_latest_issuer"])
}

func TestRevokeIssuer(t *testing.T) {
	_, c := start(t)
	first := setupPKI(t, c)
	second := rotate(t, c, "root-2")

	t.Run("revoking a non-default issuer stops it signing, keeps it readable", func(t *testing.T) {
		s := write(t, c, mount+"/issuer/"+second+"/revoke", nil)
		require.Equal(t, true, s.Data["revoked"])
		require.Equal(t, "crl-signing,ocsp-signing,read-only", s.Data["usage"])
		require.Contains(t, s.Data, "revocation_time")
		require.Contains(t, s.Data, "revocation_time_rfc3339")
		require.Len(t, s.Warnings, 2, "self-signed, and no other parent in the mount")

		again := write(t, c, mount+"/issuer/root-2/revoke", nil)
		require.Equal(t, true, again.Data["revoked"])
		require.Empty(t, again.Warnings, "revoking twice answers the issuer as it is")
		require.Equal(t, s.Data["revocation_time"], again.Data["revocation_time"])

		require.Equal(t, true, read(t, c, mount+"/issuer/"+second).Data["revoked"])
		_, _, err := sign(c)
		require.NoError(t, err, "the default still signs")
	})

	t.Run("a revoked default issuer cannot sign", func(t *testing.T) {
		// Vault lets a revoked issuer become the default; issuance fails.
		write(t, c, mount+"/config/issuers", map[string]any{"default": second})
		_, _, err := sign(c)
		require.Equal(t, http.StatusInternalServerError, responseError(t, err).StatusCode)
		require.ErrorContains(t, err, fmt.Sprintf("requested usage issuing-certificates for issuer [id:%s / name:root-2] but only had usage crl-signing,ocsp-signing,read-only", second))
		write(t, c, mount+"/config/issuers", map[string]any{"default": first})
		_, _, err = sign(c)
		require.NoError(t, err)
	})

	t.Run("revoking the default warns", func(t *testing.T) {
		s := write(t, c, mount+"/issuer/default/revoke", nil)
		require.Equal(t, first, s.Data["issuer_id"])
		require.Contains(t, fmt.Sprint(s.Warnings), "currently configured as the default issuer")
		_, _, err := sign(c)
		require.ErrorContains(t, err, "requested usage issuing-certificates")
	})

	t.Run("unknown issuer", func(t *testing.T) {
		_, err := c.Logical().Write(mount+"/issuer/nope/revoke", nil)
		require.Equal(t, http.StatusBadRequest, responseError(t, err).StatusCode)
		require.ErrorContains(t, err, "unable to find PKI issuer for reference: nope")
	})

	t.Run("needs a token", func(t *testing.T) {
		anon, err := c.Clone()
		require.NoError(t, err)
		anon.ClearToken()
		_, err = anon.Logical().Write(mount+"/issuer/"+first+"/revoke", nil)
		require.Equal(t, http.StatusForbidden, responseError(t, err).StatusCode)
	})
}

func TestListIssuersEmptyMount(t *testing.T) {
	_, c := start(t)
	write(t, c, "sys/mounts/"+mount, map[string]any{"type": "pki"})
	s, err := c.Logical().List(mount + "/issuers")
	require.NoError(t, err, "the client turns Vault's 404 into no secret")
	require.Nil(t, s)
}

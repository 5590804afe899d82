package vault_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hallmark-dev/hallmark/plugins/keymanager"
	"github.com/hallmark-dev/hallmark/plugins/keymanager/vault"
	"github.com/hallmark-dev/hallmark/test/vaultdev"
)

// The contract suite runs against a real Vault when HALLMARK_TEST_VAULT_ADDR
// (with HALLMARK_TEST_VAULT_TOKEN, a root-capable token, and for https
// HALLMARK_TEST_VAULT_CACERT) is set, for example a `vault server -dev
// -dev-tls` or `bao server -dev -dev-tls`; otherwise against test/vaultdev.
// It configures its own PKI mount, role and auth mounts through the API, the
// same way for both.

var (
	agentID  = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/node-1")
	serverID = spiffeid.RequireFromString("spiffe://example.org/hallmark/server")
)

type target struct {
	name      string
	addr      string
	caFile    string
	rootToken string
	dev       *vaultdev.Server // nil against a real Vault
	admin     *api.Client
}

func newTarget(t *testing.T) *target {
	t.Helper()
	tg := &target{}
	if addr := os.Getenv("HALLMARK_TEST_VAULT_ADDR"); addr != "" {
		tg.name = "real Vault at " + addr
		tg.addr, tg.caFile, tg.rootToken = addr, os.Getenv("HALLMARK_TEST_VAULT_CACERT"), os.Getenv("HALLMARK_TEST_VAULT_TOKEN")
		require.NotEmpty(t, tg.rootToken, "HALLMARK_TEST_VAULT_TOKEN is required with HALLMARK_TEST_VAULT_ADDR")
	} else {
		dev, err := vaultdev.Start(vaultdev.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { dev.Close() })
		tg.name = "test/vaultdev (Vault-API-faithful dev server; set HALLMARK_TEST_VAULT_ADDR for a real Vault)"
		tg.dev, tg.addr, tg.rootToken = dev, dev.URL(), dev.RootToken()
		tg.caFile, err = dev.WriteCACert(t.TempDir())
		require.NoError(t, err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = tg.addr
	if tg.caFile != "" {
		require.NoError(t, cfg.ConfigureTLS(&api.TLSConfig{CACert: tg.caFile}))
	}
	admin, err := api.NewClient(cfg)
	require.NoError(t, err)
	admin.SetToken(tg.rootToken)
	tg.admin = admin
	return tg
}

// pki mounts a PKI engine with an EC root and the agent role Hallmark
// documents, and returns the mount path and the root certificate.
func (tg *target) pki(t *testing.T) (string, *x509.Certificate) {
	t.Helper()
	mount := fmt.Sprintf("pki-%d", time.Now().UnixNano())
	tg.write(t, "sys/mounts/"+mount, map[string]any{"type": "pki", "config": map[string]any{"max_lease_ttl": "87600h"}})
	tg.write(t, mount+"/root/generate/internal", map[string]any{"common_name": "Hallmark test signing CA", "key_type": "ec", "key_bits": 256, "ttl": "8760h", "issuer_name": "root-1"})
	tg.write(t, mount+"/roles/hallmark-agent", map[string]any{
		"allowed_uri_sans":    "spiffe://example.org/hallmark/agent/*",
		"max_ttl":             "10m",
		"ttl":                 "5m",
		"require_cn":          false,
		"use_csr_sans":        false,
		"use_csr_common_name": false,
		"server_flag":         false,
		"client_flag":         false,
		"code_signing_flag":   true,
		"no_store":            true,
	})
	client := http.DefaultClient
	if tg.caFile != "" {
		client = tg.httpClient(t)
	}
	resp, err := client.Get(tg.addr + "/v1/" + mount + "/issuer/default/pem") //nolint:noctx
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	block, _ := pem.Decode(body)
	require.NotNil(t, block, "issuer/default/pem returned no PEM")
	root, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return mount, root
}

func (tg *target) write(t *testing.T, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := tg.admin.Logical().Write(path, data)
	require.NoError(t, err, "setup: write %s", path)
	return s
}

func (tg *target) httpClient(t *testing.T) *http.Client {
	pemBytes, err := os.ReadFile(tg.caFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (tg *target) config(mount string, auth vault.AuthConfig, token string) vault.Config {
	return vault.Config{Address: tg.addr, CACertFile: tg.caFile, PKIMount: mount, Role: "hallmark-agent", Auth: auth, Token: token}
}

func newCSR(t *testing.T, uris ...*url.URL) (*x509.CertificateRequest, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris}, key)
	require.NoError(t, err)
	csr, err := x509.ParseCertificateRequest(der)
	require.NoError(t, err)
	return csr, key
}

func TestContract(t *testing.T) {
	tg := newTarget(t)
	t.Logf("vault contract suite runs against: %s", tg.name)
	mount, root := tg.pki(t)
	dev := vault.AuthConfig{Method: vault.AuthDevToken}

	t.Run("sign issues the requested identity and ttl, chained to the PKI root", func(t *testing.T) {
		km, err := vault.New(tg.config(mount, dev, tg.rootToken), vault.Deps{})
		require.NoError(t, err)
		csr, key := newCSR(t)
		start := time.Now()
		chain, err := km.SignCSR(context.Background(), csr, agentID, 5*time.Minute)
		require.NoError(t, err)
		leaf := chain[0]
		require.Len(t, leaf.URIs, 1)
		require.Equal(t, agentID.String(), leaf.URIs[0].String())
		require.Empty(t, leaf.DNSNames)
		require.WithinDuration(t, start.Add(5*time.Minute), leaf.NotAfter, 5*time.Second)
		require.True(t, leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()))
		require.Contains(t, leaf.ExtKeyUsage, x509.ExtKeyUsageCodeSigning)
		requireChainsTo(t, chain, root)
	})

	t.Run("a CSR naming another SPIFFE ID yields a certificate for the caller only", func(t *testing.T) {
		km, err := vault.New(tg.config(mount, dev, tg.rootToken), vault.Deps{})
		require.NoError(t, err)
		other := spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/victim")
		csr, _ := newCSR(t, other.URL())
		chain, err := km.SignCSR(context.Background(), csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Len(t, chain[0].URIs, 1)
		require.Equal(t, agentID.String(), chain[0].URIs[0].String())
	})

	t.Run("a ttl above the role's max_ttl is clamped and the warning logged", func(t *testing.T) {
		core, logs := observer.New(zap.WarnLevel)
		km, err := vault.New(tg.config(mount, dev, tg.rootToken), vault.Deps{Log: zap.New(core)})
		require.NoError(t, err)
		csr, _ := newCSR(t)
		start := time.Now()
		chain, err := km.SignCSR(context.Background(), csr, agentID, time.Hour)
		require.NoError(t, err)
		require.WithinDuration(t, start.Add(10*time.Minute), chain[0].NotAfter, 5*time.Second)
		warned := logs.FilterMessage("Vault answered with warnings").All()
		require.Len(t, warned, 1)
		require.Contains(t, fmt.Sprint(warned[0].ContextMap()["warnings"]), "maxTTL")
	})

	refusals := []struct {
		name    string
		cfg     vault.Config
		id      spiffeid.ID
		wantErr error
		wantMsg string
	}{
		{"an identity outside the role's allowed_uri_sans", tg.config(mount, dev, tg.rootToken), spiffeid.RequireFromString("spiffe://example.org/not-an-agent"), vault.ErrRefused, "not allowed by this role"},
		{"an unknown role", func() vault.Config { c := tg.config(mount, dev, tg.rootToken); c.Role = "nope"; return c }(), agentID, vault.ErrRefused, "unknown role"},
		{"a bad token", tg.config(mount, dev, "hvs.not-a-token"), agentID, vault.ErrRefused, "permission denied"},
		{"an unreachable Vault", func() vault.Config {
			c := tg.config(mount, dev, tg.rootToken)
			c.Address = "https://" + closedPort(t)
			return c
		}(), agentID, vault.ErrUnreachable, "unreachable"},
	}
	for _, tc := range refusals {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			km, err := vault.New(tc.cfg, vault.Deps{})
			require.NoError(t, err)
			csr, _ := newCSR(t)
			chain, err := km.SignCSR(context.Background(), csr, tc.id, time.Minute)
			require.ErrorIs(t, err, tc.wantErr)
			require.ErrorContains(t, err, tc.wantMsg)
			require.Nil(t, chain)
		})
	}

	t.Run("a sealed Vault is named as such, and signing resumes when unsealed", func(t *testing.T) {
		if tg.dev == nil {
			t.Skip("sealing needs unseal keys: runs against test/vaultdev only")
		}
		km, err := vault.New(tg.config(mount, dev, tg.rootToken), vault.Deps{})
		require.NoError(t, err)
		csr, _ := newCSR(t)
		tg.dev.Seal()
		_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
		require.ErrorIs(t, err, vault.ErrSealed)
		tg.dev.Unseal()
		_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
		require.NoError(t, err)
	})

	t.Run("a renewable dev token is renewed before it expires", func(t *testing.T) {
		secret := tg.write(t, "auth/token/create", map[string]any{"ttl": "3s", "policies": []string{"default"}})
		core, logs := observer.New(zap.InfoLevel)
		km, err := vault.New(tg.config(mount, dev, secret.Auth.ClientToken), vault.Deps{Log: zap.New(core)})
		require.NoError(t, err)
		csr, _ := newCSR(t)
		for range 4 { // 4 x 1.2s outlives the 3s token unless it is renewed
			_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
			require.NoError(t, err)
			time.Sleep(1200 * time.Millisecond)
		}
		require.GreaterOrEqual(t, logs.FilterMessage("Vault token ready").Len(), 2)
	})

	t.Run("cert auth", func(t *testing.T) {
		if !strings.HasPrefix(tg.addr, "https://") {
			t.Skip("cert auth needs Vault on TLS (set HALLMARK_TEST_VAULT_CACERT for a -dev-tls Vault)")
		}
		ca := newTestCA(t)
		certMount := fmt.Sprintf("cert-%d", time.Now().UnixNano())
		tg.write(t, "sys/auth/"+certMount, map[string]any{"type": "cert"})
		tg.write(t, "auth/"+certMount+"/certs/hallmark-server", map[string]any{
			"certificate": ca.pem, "allowed_uri_sans": serverID.String(), "token_policies": "default", "token_ttl": "2s",
		})
		auth := vault.AuthConfig{Method: vault.AuthCert, Mount: certMount, Role: "hallmark-server"}
		cases := []struct {
			name    string
			svid    *x509svid.SVID
			wantMsg string // empty: success
		}{
			{"logs in with the server's X509-SVID", ca.svid(t, serverID, "hallmark-server"), ""},
			{"refuses an SVID with another SPIFFE ID", ca.svid(t, agentID, "hallmark-agent"), "no chain matching all constraints"},
			{"refuses an SVID from another CA", newTestCA(t).svid(t, serverID, "hallmark-server"), "no chain matching all constraints"},
			{"refuses an SVID without a CN (Vault's alias needs one)", ca.svid(t, serverID, ""), "missing name in alias"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				src := &svidSource{svid: tc.svid}
				km, err := vault.New(tg.config(mount, auth, ""), vault.Deps{SVIDs: src})
				require.NoError(t, err)
				csr, _ := newCSR(t)
				_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
				if tc.wantMsg != "" {
					require.ErrorIs(t, err, vault.ErrRefused)
					require.ErrorContains(t, err, tc.wantMsg)
					return
				}
				require.NoError(t, err)
			})
		}
		t.Run("logs in again with the rotated SVID when the token ages", func(t *testing.T) {
			src := &svidSource{svid: ca.svid(t, serverID, "hallmark-server")}
			core, logs := observer.New(zap.InfoLevel)
			km, err := vault.New(tg.config(mount, auth, ""), vault.Deps{SVIDs: src, Log: zap.New(core)})
			require.NoError(t, err)
			csr, _ := newCSR(t)
			_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
			require.NoError(t, err)
			src.set(ca.svid(t, serverID, "hallmark-server")) // SPIRE rotated it
			time.Sleep(1100 * time.Millisecond)              // past half the 2s token TTL
			_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
			require.NoError(t, err)
			require.Equal(t, 2, logs.FilterMessage("Vault token ready").Len())
		})
	})

	t.Run("jwt auth", func(t *testing.T) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		pub, err := x509.MarshalPKIXPublicKey(key.Public())
		require.NoError(t, err)
		jwtMount := fmt.Sprintf("jwt-%d", time.Now().UnixNano())
		tg.write(t, "sys/auth/"+jwtMount, map[string]any{"type": "jwt"})
		tg.write(t, "auth/"+jwtMount+"/config", map[string]any{
			"jwt_validation_pubkeys": []string{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))},
		})
		tg.write(t, "auth/"+jwtMount+"/role/hallmark-server", map[string]any{
			"role_type": "jwt", "bound_audiences": "vault", "bound_subject": serverID.String(),
			"user_claim": "sub", "token_policies": "default", "token_ttl": "1m",
		})
		cases := []struct {
			name    string
			src     *jwtSource
			wantMsg string
		}{
			{"logs in with the server's JWT-SVID", &jwtSource{key: key, sub: serverID}, ""},
			{"refuses a JWT-SVID for another subject", &jwtSource{key: key, sub: agentID}, "sub claim does not match"},
			{"refuses a JWT-SVID signed by an unknown key", &jwtSource{key: must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)), sub: serverID}, "validat"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				auth := vault.AuthConfig{Method: vault.AuthJWT, Mount: jwtMount, Role: "hallmark-server"}
				km, err := vault.New(tg.config(mount, auth, ""), vault.Deps{JWTs: tc.src})
				require.NoError(t, err)
				csr, _ := newCSR(t)
				_, err = km.SignCSR(context.Background(), csr, agentID, time.Minute)
				if tc.wantMsg != "" {
					require.ErrorIs(t, err, vault.ErrRefused)
					require.ErrorContains(t, err, tc.wantMsg)
					return
				}
				require.NoError(t, err)
			})
		}
	})
}

// TestContractRotation drives one PKI mount through the rotation steps the
// server uses (prepare, activate, revoke), against the same target as
// TestContract.
func TestContractRotation(t *testing.T) {
	tg := newTarget(t)
	t.Logf("vault rotation contract runs against: %s", tg.name)
	mount, oldRoot := tg.pki(t)
	ctx := context.Background()
	newKM := func(t *testing.T) *vault.KeyManager {
		t.Helper()
		km, err := vault.New(tg.config(mount, vault.AuthConfig{Method: vault.AuthDevToken}, tg.rootToken), vault.Deps{})
		require.NoError(t, err)
		return km
	}
	km := newKM(t)
	list := func(t *testing.T, km *vault.KeyManager) ([]keymanager.Issuer, []string) {
		t.Helper()
		issuers, err := km.Issuers(ctx)
		require.NoError(t, err)
		var flags []string
		for _, iss := range issuers {
			switch {
			case iss.Active && iss.Revoked:
				flags = append(flags, "A+R")
			case iss.Active:
				flags = append(flags, "A")
			case iss.Revoked:
				flags = append(flags, "R")
			default:
				flags = append(flags, "-")
			}
		}
		return issuers, flags
	}
	signsWith := func(t *testing.T, km *vault.KeyManager, root, other *x509.Certificate) {
		t.Helper()
		csr, _ := newCSR(t)
		chain, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		requireChainsTo(t, chain, root)
		require.Error(t, chain[0].CheckSignatureFrom(other), "signed by the other issuer")
	}
	defaultIssuer := func(t *testing.T) string {
		t.Helper()
		s, err := tg.admin.Logical().Read(mount + "/config/issuers")
		require.NoError(t, err)
		return s.Data["default"].(string)
	}

	issuers, flags := list(t, km)
	require.Equal(t, []string{"A"}, flags)
	old := issuers[0]
	require.Equal(t, oldRoot.Raw, old.Chain[0].Raw)
	require.Equal(t, defaultIssuer(t), old.ID, "the ID is Vault's issuer_id")

	var next keymanager.Issuer
	t.Run("prepare creates an issuer that does not sign yet", func(t *testing.T) {
		var err error
		next, err = km.PrepareIssuer(ctx)
		require.NoError(t, err)
		require.NotEqual(t, old.ID, next.ID)
		require.False(t, next.Active)
		require.False(t, next.Revoked)
		require.NotEmpty(t, next.Chain)
		root := next.Chain[len(next.Chain)-1]
		require.True(t, root.IsCA)
		require.Equal(t, oldRoot.Subject.CommonName, root.Subject.CommonName)
		require.IsType(t, &ecdsa.PublicKey{}, root.PublicKey)
		require.Equal(t, elliptic.P256(), root.PublicKey.(*ecdsa.PublicKey).Curve)
		require.InDelta(t, oldRoot.NotAfter.Sub(oldRoot.NotBefore).Seconds(), root.NotAfter.Sub(root.NotBefore).Seconds(), 120, "same lifetime as the current issuer")
		issuers, flags := list(t, km)
		require.Equal(t, []string{"A", "-"}, flags, "oldest first")
		require.Equal(t, []string{old.ID, next.ID}, []string{issuers[0].ID, issuers[1].ID})
		require.Equal(t, old.ID, defaultIssuer(t), "rotating does not move Vault's default")
		signsWith(t, km, oldRoot, root)
	})

	t.Run("activate makes the role sign with it", func(t *testing.T) {
		require.NoError(t, km.ActivateIssuer(ctx, next.ID))
		_, flags := list(t, km)
		require.Equal(t, []string{"-", "A"}, flags)
		require.Equal(t, next.ID, defaultIssuer(t))
		signsWith(t, km, next.Chain[len(next.Chain)-1], oldRoot)
		require.NoError(t, km.ActivateIssuer(ctx, next.ID), "activating the active issuer again is harmless")
	})

	t.Run("revoke revokes the old issuer in Vault", func(t *testing.T) {
		require.NoError(t, km.RevokeIssuer(ctx, old.ID))
		_, flags := list(t, km)
		require.Equal(t, []string{"R", "A"}, flags)
		s, err := tg.admin.Logical().Read(mount + "/issuer/" + old.ID)
		require.NoError(t, err)
		require.Equal(t, true, s.Data["revoked"])
		signsWith(t, km, next.Chain[len(next.Chain)-1], oldRoot)
		require.NoError(t, km.RevokeIssuer(ctx, old.ID), "revoking twice is harmless")
	})

	t.Run("another key manager (a restarted server) sees the same", func(t *testing.T) {
		issuers, _ := list(t, km)
		again, flags := list(t, newKM(t))
		require.Equal(t, []string{"R", "A"}, flags)
		require.Equal(t, issuers, again)
	})

	refusals := []struct {
		name    string
		op      func() error
		wantIs  error
		wantMsg string
	}{
		{"activate an unknown issuer", func() error { return km.ActivateIssuer(ctx, "00000000-0000-0000-0000-000000000000") }, keymanager.ErrUnknownIssuer, "unknown issuer"},
		{"activate by reference rather than ID", func() error { return km.ActivateIssuer(ctx, "default") }, keymanager.ErrUnknownIssuer, "unknown issuer"},
		{"activate by name rather than ID", func() error { return km.ActivateIssuer(ctx, "root-1") }, keymanager.ErrUnknownIssuer, "unknown issuer"},
		{"revoke an unknown issuer", func() error { return km.RevokeIssuer(ctx, "") }, keymanager.ErrUnknownIssuer, "unknown issuer"},
		{"revoke the active issuer", func() error { return km.RevokeIssuer(ctx, next.ID) }, nil, "it is the active (default) issuer; activate another one first"},
		{"activate a revoked issuer", func() error { return km.ActivateIssuer(ctx, old.ID) }, nil, "it is revoked and can never sign again"},
	}
	for _, tc := range refusals {
		t.Run("refuses to "+tc.name, func(t *testing.T) {
			err := tc.op()
			require.ErrorContains(t, err, tc.wantMsg)
			if tc.wantIs != nil {
				require.ErrorIs(t, err, tc.wantIs)
			}
			_, flags := list(t, km)
			require.Equal(t, []string{"R", "A"}, flags, "nothing changed")
		})
	}

	t.Run("refuses to prepare when Vault's default follows the latest issuer", func(t *testing.T) {
		tg.write(t, mount+"/config/issuers", map[string]any{"default": next.ID, "default_follows_latest_issuer": true})
		defer tg.write(t, mount+"/config/issuers", map[string]any{"default": next.ID, "default_follows_latest_issuer": false})
		_, err := km.PrepareIssuer(ctx)
		require.ErrorContains(t, err, "default_follows_latest_issuer=true")
		_, flags := list(t, km)
		require.Equal(t, []string{"R", "A"}, flags)
	})

	t.Run("signing goes on while the active issuer changes", func(t *testing.T) {
		third, err := km.PrepareIssuer(ctx)
		require.NoError(t, err)
		roots := map[string]bool{string(next.Chain[len(next.Chain)-1].Raw): true, string(third.Chain[len(third.Chain)-1].Raw): true}
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		stop := make(chan struct{})
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				csr, _ := newCSR(t)
				for {
					select {
					case <-stop:
						return
					default:
					}
					chain, err := km.SignCSR(ctx, csr, agentID, time.Minute)
					if err == nil && !roots[string(chain[len(chain)-1].Raw)] {
						err = fmt.Errorf("chain ends in an unexpected root %s", chain[len(chain)-1].Subject)
					}
					if err == nil {
						err = chain[0].CheckSignatureFrom(chain[1])
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		for _, id := range []string{third.ID, next.ID, third.ID} {
			require.NoError(t, km.ActivateIssuer(ctx, id))
			time.Sleep(20 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		_, flags := list(t, km)
		require.Equal(t, []string{"R", "-", "A"}, flags)
	})
}

func requireChainsTo(t *testing.T, chain []*x509.Certificate, root *x509.Certificate) {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}})
	require.NoError(t, err)
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  string
}

func newTestCA(t *testing.T) *testCA {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test SPIRE CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{spiffeid.RequireTrustDomainFromString("example.org").ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert := must(x509.ParseCertificate(der))
	return &testCA{key: key, cert: cert, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// svid mints an X509-SVID as SPIRE does, with cn as subject CN when set.
func (ca *testCA) svid(t *testing.T, id spiffeid.ID, cn string) *x509svid.SVID {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	require.NoError(t, err)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{must(x509.ParseCertificate(der))}, PrivateKey: key}
}

type svidSource struct {
	mu   sync.Mutex
	svid *x509svid.SVID
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

func (s *svidSource) set(v *x509svid.SVID) { s.mu.Lock(); s.svid = v; s.mu.Unlock() }

// jwtSource mints JWT-SVIDs as the SPIRE Workload API would.
type jwtSource struct {
	key *ecdsa.PrivateKey
	sub spiffeid.ID
}

func (j *jwtSource) FetchJWTSVID(_ context.Context, p jwtsvid.Params) (*jwtsvid.SVID, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: j.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		return nil, err
	}
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject: j.sub.String(), Audience: jwt.Audience{p.Audience},
		Expiry: jwt.NewNumericDate(time.Now().Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now()),
	}).Serialize()
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseInsecure(token, []string{p.Audience})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

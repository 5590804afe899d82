package vault_test

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
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
	"github.com/hallmark-dev/hallmark/test/baotest"
)

// The contract suite runs against a real Vault-API server: the test
// binary's OpenBao dev server (test/baotest), or the server
// HALLMARK_TEST_VAULT_ADDR names (with HALLMARK_TEST_VAULT_TOKEN and
// HALLMARK_TEST_VAULT_CACERT), so that it can be rerun against one server.
// Each test sets Vault up by running setup.sh, the setup the README
// documents, on mounts of its own; the key manager then logs in as
// hallmark-server would (cert auth with an X509-SVID, or jwt auth), so
// every request is checked by the policies setup.sh writes.

func TestMain(m *testing.M) { os.Exit(baotest.Main(m)) }

var (
	agentID  = spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/node-1")
	serverID = spiffeid.RequireFromString("spiffe://example.org/hallmark/server")
)

// fixture is one run of setup.sh on a server, with the stand-in for SPIRE
// whose bundle (cert) or JWT key (jwt) it trusts.
type fixture struct {
	srv    *baotest.Server
	admin  *api.Client // root
	setup  baotest.Setup
	spire  *testCA           // issues the server's X509-SVIDs
	jwtKey *ecdsa.PrivateKey // signs the server's JWT-SVIDs
	root   *x509.Certificate // the PKI mount's root
}

func sharedServer(t *testing.T) *baotest.Server {
	t.Helper()
	srv, err := baotest.Shared(context.Background())
	require.NoError(t, err)
	t.Logf("against %s", srv)
	return srv
}

// newFixture runs setup.sh on srv with mounts of its own; edit may change
// the settings first.
func newFixture(t *testing.T, srv *baotest.Server, auth string, edit func(*baotest.Setup)) *fixture {
	t.Helper()
	f := &fixture{srv: srv, spire: newTestCA(t), jwtKey: must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "spire-bundle.pem")
	require.NoError(t, os.WriteFile(bundle, []byte(f.spire.pem), 0o600))
	keys := filepath.Join(dir, "jwt-keys.pem")
	pub := must(x509.MarshalPKIXPublicKey(f.jwtKey.Public()))
	require.NoError(t, os.WriteFile(keys, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600))
	f.setup = baotest.NewSetup("contract", auth)
	f.setup.MaxTTL = "10m"
	f.setup.SPIREBundle, f.setup.JWTKeys = bundle, keys
	if edit != nil {
		edit(&f.setup)
	}
	_, err := srv.Run(context.Background(), f.setup)
	require.NoError(t, err)
	f.admin = must(srv.Client())
	f.root = f.defaultIssuerCert(t)
	return f
}

func (f *fixture) defaultIssuerCert(t *testing.T) *x509.Certificate {
	t.Helper()
	hc := must(f.srv.HTTPClient())
	resp, err := hc.Get(f.srv.Addr + "/v1/" + f.setup.PKIMount + "/issuer/default/pem") //nolint:noctx
	require.NoError(t, err)
	defer resp.Body.Close()
	body := must(io.ReadAll(resp.Body))
	block, _ := pem.Decode(body)
	require.NotNil(t, block, "issuer/default/pem returned no PEM: %s", body)
	return must(x509.ParseCertificate(block.Bytes))
}

func (f *fixture) config(auth vault.AuthConfig) vault.Config {
	return vault.Config{Address: f.srv.Addr, CACertFile: f.srv.CACertFile, PKIMount: f.setup.PKIMount, Role: f.setup.Role, Auth: auth}
}

func (f *fixture) certAuth() vault.AuthConfig {
	return vault.AuthConfig{Method: vault.AuthCert, Mount: f.setup.AuthMount, Role: f.setup.AuthRole}
}

// serverKM is the key manager as hallmark-server runs it: logging in by
// cert auth with an X509-SVID for the server's SPIFFE ID, CN
// hallmark-server (SPIRE sets it from the entry's first DNS name).
func (f *fixture) serverKM(t *testing.T, log *zap.Logger) *vault.KeyManager {
	t.Helper()
	km, err := vault.New(f.config(f.certAuth()), vault.Deps{Log: log, SVIDs: &svidSource{svid: f.spire.svid(t, serverID, "hallmark-server")}})
	require.NoError(t, err)
	return km
}

// tokenKM logs in with a static token (dev_token).
func (f *fixture) tokenKM(t *testing.T, token string, log *zap.Logger) *vault.KeyManager {
	t.Helper()
	c := f.config(vault.AuthConfig{Method: vault.AuthDevToken})
	c.Token = token
	km, err := vault.New(c, vault.Deps{Log: log})
	require.NoError(t, err)
	return km
}

func (f *fixture) write(t *testing.T, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := f.admin.Logical().Write(path, data)
	require.NoError(t, err, "setup: write %s", path)
	return s
}

func newCSR(t *testing.T, uris ...*url.URL) (*x509.CertificateRequest, crypto.Signer) {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	return csrFor(t, key, uris...), key
}

func csrFor(t *testing.T, key crypto.Signer, uris ...*url.URL) *x509.CertificateRequest {
	t.Helper()
	der := must(x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris}, key))
	return must(x509.ParseCertificateRequest(der))
}

// requireFault checks err is the *vault.Error for fault, carrying Vault's
// message (msg) and a fix.
func requireFault(t *testing.T, err error, fault error, msg string) *vault.Error {
	t.Helper()
	require.ErrorIs(t, err, fault)
	require.ErrorContains(t, err, msg)
	var ve *vault.Error
	require.ErrorAs(t, err, &ve)
	require.NotEmpty(t, ve.Fix())
	t.Logf("%v\n    fix: %s", err, ve.Fix())
	for _, other := range []error{vault.ErrSealed, vault.ErrUnreachable, vault.ErrRefusedByPolicy, vault.ErrMisconfigured} {
		if other != fault {
			require.NotErrorIs(t, err, other, "one fault only")
		}
	}
	return ve
}

func TestContract(t *testing.T) {
	t.Parallel()
	srv := sharedServer(t)
	f := newFixture(t, srv, "cert", nil)
	ctx := context.Background()

	t.Run("sign issues the requested identity and ttl, chained to the PKI root", func(t *testing.T) {
		km := f.serverKM(t, nil)
		csr, key := newCSR(t)
		start := time.Now()
		chain, err := km.SignCSR(ctx, csr, agentID, 5*time.Minute)
		require.NoError(t, err)
		leaf := chain[0]
		require.Len(t, leaf.URIs, 1)
		require.Equal(t, agentID.String(), leaf.URIs[0].String())
		require.Empty(t, leaf.DNSNames)
		require.Empty(t, leaf.IPAddresses)
		require.Empty(t, leaf.Subject.CommonName)
		require.WithinDuration(t, start.Add(5*time.Minute), leaf.NotAfter, 5*time.Second)
		require.True(t, leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()))
		require.Equal(t, x509.KeyUsageDigitalSignature, leaf.KeyUsage, "the role's key_usage: DigitalSignature only")
		require.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, leaf.ExtKeyUsage)
		requireChainsTo(t, chain, f.root)
	})

	t.Run("a CSR naming another SPIFFE ID yields a certificate for the caller only", func(t *testing.T) {
		other := spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/victim")
		csr, _ := newCSR(t, other.URL())
		chain, err := f.serverKM(t, nil).SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Len(t, chain[0].URIs, 1)
		require.Equal(t, agentID.String(), chain[0].URIs[0].String())
	})

	t.Run("a ttl above the role's max_ttl is clamped and the warning logged", func(t *testing.T) {
		core, logs := observer.New(zap.WarnLevel)
		csr, _ := newCSR(t)
		start := time.Now()
		chain, err := f.serverKM(t, zap.New(core)).SignCSR(ctx, csr, agentID, time.Hour)
		require.NoError(t, err)
		require.WithinDuration(t, start.Add(10*time.Minute), chain[0].NotAfter, 5*time.Second)
		warned := logs.FilterMessage("Vault answered with warnings").All()
		require.Len(t, warned, 1)
		require.Contains(t, fmt.Sprint(warned[0].ContextMap()["warnings"]), "maxTTL")
	})

	t.Run("the server's token reads the issuers it needs at start", func(t *testing.T) {
		issuers, err := f.serverKM(t, nil).Issuers(ctx)
		require.NoError(t, err)
		require.Len(t, issuers, 1)
		require.True(t, issuers[0].Active)
		require.Equal(t, f.root.Raw, issuers[0].Chain[0].Raw)
	})

	refusals := []struct {
		name  string
		km    func(t *testing.T) *vault.KeyManager
		csr   func(t *testing.T) *x509.CertificateRequest
		id    spiffeid.ID
		fault error
		msg   string
	}{
		{
			name: "an identity outside the role's allowed_uri_sans (misconfigured)",
			km:   func(t *testing.T) *vault.KeyManager { return f.serverKM(t, nil) },
			id:   spiffeid.RequireFromString("spiffe://example.org/not-an-agent"), fault: vault.ErrMisconfigured,
			msg: "HTTP 400: URI Subject Alternative Names were provided via the API which are not valid for this role",
		},
		{
			name: "an RSA key: the role takes EC keys only (misconfigured)",
			km:   func(t *testing.T) *vault.KeyManager { return f.serverKM(t, nil) },
			csr: func(t *testing.T) *x509.CertificateRequest {
				return csrFor(t, must(rsa.GenerateKey(rand.Reader, 2048)))
			},
			id: agentID, fault: vault.ErrMisconfigured, msg: "role requires keys of type ec",
		},
		{
			name: "an unknown role, as root (misconfigured)",
			km: func(t *testing.T) *vault.KeyManager {
				c := f.config(vault.AuthConfig{Method: vault.AuthDevToken})
				c.Token, c.Role = f.srv.RootToken, "nope"
				return must(vault.New(c, vault.Deps{}))
			},
			id: agentID, fault: vault.ErrMisconfigured, msg: "unknown role: nope",
		},
		{
			name: "a role the server's policy does not grant (refused by policy)",
			km: func(t *testing.T) *vault.KeyManager {
				c := f.config(f.certAuth())
				c.Role = "nope"
				return must(vault.New(c, vault.Deps{SVIDs: &svidSource{svid: f.spire.svid(t, serverID, "hallmark-server")}}))
			},
			id: agentID, fault: vault.ErrRefusedByPolicy, msg: "HTTP 403: permission denied",
		},
		{
			name: "a bad static token (refused by policy)",
			km:   func(t *testing.T) *vault.KeyManager { return f.tokenKM(t, "s.not-a-token", nil) },
			id:   agentID, fault: vault.ErrRefusedByPolicy, msg: "permission denied",
		},
		{
			name: "an unreachable Vault",
			km: func(t *testing.T) *vault.KeyManager {
				c := f.config(f.certAuth())
				c.Address = "https://" + closedPort(t)
				return must(vault.New(c, vault.Deps{SVIDs: &svidSource{svid: f.spire.svid(t, serverID, "hallmark-server")}}))
			},
			id: agentID, fault: vault.ErrUnreachable, msg: "connection refused",
		},
	}
	for _, tc := range refusals {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			csr, _ := newCSR(t)
			if tc.csr != nil {
				csr = tc.csr(t)
			}
			chain, err := tc.km(t).SignCSR(ctx, csr, tc.id, time.Minute)
			requireFault(t, err, tc.fault, tc.msg)
			require.Nil(t, chain)
		})
	}

	t.Run("the server's token may not rotate the signing CA unless setup granted it", func(t *testing.T) {
		core, logs := observer.New(zap.InfoLevel)
		km := f.serverKM(t, zap.New(core))
		_, err := km.PrepareIssuer(ctx)
		ve := requireFault(t, err, vault.ErrRefusedByPolicy, "write "+f.setup.PKIMount+"/root/rotate/internal: HTTP 403: permission denied")
		require.Contains(t, ve.Fix(), f.setup.PKIMount+"/root/rotate/internal")
		require.Equal(t, 2, logs.FilterMessage("Vault token ready").Len(), "one fresh login after the 403, not more")
		_, err = km.PrepareIssuer(ctx)
		requireFault(t, err, vault.ErrRefusedByPolicy, "permission denied")
		require.Equal(t, 2, logs.FilterMessage("Vault token ready").Len(), "the refused token's policy is known: no login loop")
		require.Len(t, logs.FilterMessage("Vault fault: refused by policy").All(), 1, "the fault is logged once")
		csr, _ := newCSR(t)
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err, "signing is granted")
		issuers, err := km.Issuers(ctx)
		require.NoError(t, err)
		require.Len(t, issuers, 1, "nothing was prepared")
	})

	t.Run("a renewable static token is renewed before it expires", func(t *testing.T) {
		secret := f.write(t, "auth/token/create", map[string]any{"ttl": "3s", "policies": []string{f.setup.Policy}, "no_default_policy": false})
		core, logs := observer.New(zap.InfoLevel)
		km := f.tokenKM(t, secret.Auth.ClientToken, zap.New(core))
		csr, _ := newCSR(t)
		for range 4 { // 4 x 1.2s outlives the 3s token unless it is renewed
			_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
			require.NoError(t, err)
			time.Sleep(1200 * time.Millisecond)
		}
		require.GreaterOrEqual(t, logs.FilterMessage("Vault token ready").Len(), 2)
	})
}

// Must show: cert auth with X509-SVIDs, as setup.sh configures it.
func TestContractCertAuth(t *testing.T) {
	t.Parallel()
	srv := sharedServer(t)
	f := newFixture(t, srv, "cert", func(s *baotest.Setup) { s.TokenTTL = "2s" })
	ctx := context.Background()
	cases := []struct {
		name  string
		svid  func(t *testing.T) *x509svid.SVID
		fault error  // nil: logs in
		msg   string // Vault's message
	}{
		{"logs in with the server's X509-SVID", func(t *testing.T) *x509svid.SVID { return f.spire.svid(t, serverID, "hallmark-server") }, nil, ""},
		{"refuses an SVID with another SPIFFE ID", func(t *testing.T) *x509svid.SVID { return f.spire.svid(t, agentID, "hallmark-agent") }, vault.ErrMisconfigured, "no chain matching all constraints could be found for this login certificate"},
		{"refuses an SVID from another CA", func(t *testing.T) *x509svid.SVID { return newTestCA(t).svid(t, serverID, "hallmark-server") }, vault.ErrMisconfigured, "invalid certificate or no client certificate supplied"},
		{"refuses an SVID without a CN (Vault's alias needs one): misconfigured, not unreachable", func(t *testing.T) *x509svid.SVID { return f.spire.svid(t, serverID, "") }, vault.ErrMisconfigured, "HTTP 500: missing name in alias"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			km, err := vault.New(f.config(f.certAuth()), vault.Deps{SVIDs: &svidSource{svid: tc.svid(t)}})
			require.NoError(t, err)
			csr, _ := newCSR(t)
			_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
			if tc.fault == nil {
				require.NoError(t, err)
				return
			}
			ve := requireFault(t, err, tc.fault, tc.msg)
			if tc.name == cases[3].name {
				require.Contains(t, ve.Fix(), "-dns", "the fix names the registration's DNS name")
			}
		})
	}
	// loggedIn is a key manager that has logged in with the server's
	// SVID (from src) and signed once, and its log.
	loggedIn := func(t *testing.T) (*vault.KeyManager, *svidSource, *observer.ObservedLogs, *x509.CertificateRequest) {
		src := &svidSource{svid: f.spire.svid(t, serverID, "hallmark-server")}
		core, logs := observer.New(zap.InfoLevel)
		km, err := vault.New(f.config(f.certAuth()), vault.Deps{SVIDs: src, Log: zap.New(core)})
		require.NoError(t, err)
		csr, _ := newCSR(t)
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		return km, src, logs, csr
	}
	t.Run("logs in again with the rotated SVID when the token ages", func(t *testing.T) {
		km, src, logs, csr := loggedIn(t)
		src.set(f.spire.svid(t, serverID, "hallmark-server")) // SPIRE rotated it
		time.Sleep(1100 * time.Millisecond)                   // past half the 2s token TTL
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Equal(t, 2, logs.FilterMessage("Vault token ready").Len())
		require.Equal(t, 2, src.fetches(), "each login showed the SVID current then")
	})
	// An outside review ran docs/rotation.md's SPIRE rotation against
	// this key manager: the server's new SVID, from an authority Vault's
	// cert auth was never given (setup.sh not run again), failed its
	// login at half the token's life, and the key manager dropped a token
	// still good: no signing until setup.sh ran, and no word before.
	t.Run("keeps a token still good while a fresh login is refused, saying so", func(t *testing.T) {
		km, src, logs, csr := loggedIn(t)
		loggedInAt := time.Now()
		src.set(newTestCA(t).svid(t, serverID, "hallmark-server")) // from an authority Vault does not trust
		time.Sleep(1100 * time.Millisecond)                        // past half the 2s token TTL
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err, "the token in use is still good")
		refused := logs.FilterMessage("Vault refused a fresh login; signing goes on with the current token until it expires").All()
		require.Len(t, refused, 1)
		require.Contains(t, refused[0].ContextMap()["error"], "invalid certificate or no client certificate supplied")
		require.NotEmpty(t, refused[0].ContextMap()["fix"])

		time.Sleep(time.Until(loggedInAt.Add(2100 * time.Millisecond))) // past the token's life
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		requireFault(t, err, vault.ErrMisconfigured, "invalid certificate or no client certificate supplied")
	})
}

// Must show: jwt auth with JWT-SVIDs, as setup.sh configures it.
func TestContractJWTAuth(t *testing.T) {
	t.Parallel()
	srv := sharedServer(t)
	f := newFixture(t, srv, "jwt", nil)
	ctx := context.Background()
	auth := vault.AuthConfig{Method: vault.AuthJWT, Mount: f.setup.AuthMount, Role: f.setup.AuthRole}
	cases := []struct {
		name  string
		src   *jwtSource
		fault error
		msg   string
	}{
		{"logs in with the server's JWT-SVID", &jwtSource{key: f.jwtKey, sub: serverID}, nil, ""},
		{"refuses a JWT-SVID for another subject", &jwtSource{key: f.jwtKey, sub: agentID}, vault.ErrMisconfigured, "sub"},
		{"refuses a JWT-SVID signed by an unknown key", &jwtSource{key: must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)), sub: serverID}, vault.ErrMisconfigured, "error validating token"},
		{"refuses a JWT-SVID for another audience", &jwtSource{key: f.jwtKey, sub: serverID, aud: "not-vault"}, vault.ErrMisconfigured, "aud"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			km, err := vault.New(f.config(auth), vault.Deps{JWTs: tc.src})
			require.NoError(t, err)
			csr, _ := newCSR(t)
			chain, err := km.SignCSR(ctx, csr, agentID, time.Minute)
			if tc.fault == nil {
				require.NoError(t, err)
				requireChainsTo(t, chain, f.root)
				return
			}
			requireFault(t, err, tc.fault, tc.msg)
		})
	}
}

// Must show: each fault of a running Vault is told apart, logged once with
// its fix, and signing resumes when it ends: the server's token revoked,
// its policy removed, the default issuer revoked (an HTTP 500 that is a
// misconfiguration, not an outage), Vault sealed, Vault stopped.
func TestContractFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := sharedServer(t)

	t.Run("token revoked: one fresh login and signing goes on", func(t *testing.T) {
		f := newFixture(t, srv, "cert", nil)
		core, logs := observer.New(zap.InfoLevel)
		km := f.serverKM(t, zap.New(core))
		csr, _ := newCSR(t)
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		f.write(t, "sys/leases/revoke-prefix/auth/"+f.setup.AuthMount+"/login", nil)
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Equal(t, 1, logs.FilterMessage("Vault refused the server's token (revoked, expired, or its policy changed); logging in again").Len())
		require.Equal(t, 2, logs.FilterMessage("Vault token ready").Len())
	})

	t.Run("policy removed: refused by policy after one fresh login, signing resumes when restored", func(t *testing.T) {
		f := newFixture(t, srv, "cert", nil)
		core, logs := observer.New(zap.InfoLevel)
		km := f.serverKM(t, zap.New(core))
		csr, _ := newCSR(t)
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		policy, err := f.admin.Sys().GetPolicy(f.setup.Policy)
		require.NoError(t, err)
		require.NoError(t, f.admin.Sys().DeletePolicy(f.setup.Policy))
		for range 3 {
			_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
			ve := requireFault(t, err, vault.ErrRefusedByPolicy, "HTTP 403: permission denied: vault refused by policy")
			require.Contains(t, ve.Fix(), f.setup.PKIMount+"/sign/"+f.setup.Role)
		}
		require.Equal(t, 2, logs.FilterMessage("Vault token ready").Len(), "one fresh login, not a loop")
		faults := logs.FilterMessage("Vault fault: refused by policy").All()
		require.Len(t, faults, 1)
		require.Equal(t, "refused by policy", faults[0].ContextMap()["vault_fault"])
		require.NoError(t, f.admin.Sys().PutPolicy(f.setup.Policy, policy))
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Equal(t, 1, logs.FilterMessage("Vault answers again").Len())
	})

	t.Run("default issuer revoked: HTTP 500 is misconfigured with Vault's message, not unreachable", func(t *testing.T) {
		f := newFixture(t, srv, "cert", nil)
		core, logs := observer.New(zap.InfoLevel)
		km := f.serverKM(t, zap.New(core))
		def := f.write(t, f.setup.PKIMount+"/root/rotate/internal", map[string]any{"common_name": "spare", "key_type": "ec", "issuer_name": "spare"})
		current := must(f.admin.Logical().Read(f.setup.PKIMount + "/config/issuers")).Data["default"].(string)
		f.write(t, f.setup.PKIMount+"/issuer/"+current+"/revoke", nil) // OpenBao lets one revoke the default issuer
		csr, _ := newCSR(t)
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		ve := requireFault(t, err, vault.ErrMisconfigured, "HTTP 500")
		require.Contains(t, ve.Fix(), "activate a valid issuer")
		require.Len(t, logs.FilterMessage("Vault fault: misconfigured").All(), 1)
		f.write(t, f.setup.PKIMount+"/config/issuers", map[string]any{"default": def.Data["issuer_id"]})
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
	})

	// Sealing and stopping need a server of the test's own: a persistent
	// one, which keeps its mounts across a restart.
	own, err := baotest.StartPersistent(ctx)
	require.NoError(t, err)
	t.Cleanup(own.Stop)
	t.Logf("sealed and stopped: %s", own)

	t.Run("sealed, then unsealed", func(t *testing.T) {
		f := newFixture(t, own, "cert", nil)
		core, logs := observer.New(zap.InfoLevel)
		km := f.serverKM(t, zap.New(core))
		csr, _ := newCSR(t)
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.NoError(t, own.Seal(ctx))
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		ve := requireFault(t, err, vault.ErrSealed, "HTTP 503: Vault is sealed")
		require.Contains(t, ve.Fix(), "unseal")
		require.Len(t, logs.FilterMessage("Vault fault: sealed").All(), 1)
		require.NoError(t, own.Unseal(ctx))
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Len(t, logs.FilterMessage("Vault answers again").All(), 1)
	})

	// Must show (from an outside review, which stopped OpenBao with
	// SIGSTOP for 100 s): a Vault that hangs is the key manager's fault,
	// unreachable, within its request bound, which is shorter than an
	// agent's call to the server; before, both were 30 s, the agent gave up
	// first, and the server logged only "context canceled". A caller that
	// gives up first is still not Vault's fault.
	t.Run("hung, then resumed", func(t *testing.T) {
		f := newFixture(t, own, "cert", nil)
		core, logs := observer.New(zap.InfoLevel)
		c := f.config(f.certAuth())
		vault.SetRequestTimeout(&c, 2*time.Second)
		km, err := vault.New(c, vault.Deps{Log: zap.New(core), SVIDs: &svidSource{svid: f.spire.svid(t, serverID, "hallmark-server")}})
		require.NoError(t, err)
		csr, _ := newCSR(t)
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)

		resume := own.Hang()
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // an agent's call
		start := time.Now()
		_, err = km.SignCSR(callCtx, csr, agentID, time.Minute)
		took := time.Since(start)
		cancel()
		gaveUp, cancel := context.WithTimeout(ctx, time.Second)
		_, errGaveUp := km.SignCSR(gaveUp, csr, agentID, time.Minute)
		cancel()
		resume()

		requireFault(t, err, vault.ErrUnreachable, "no answer within 2s")
		require.Less(t, took, 10*time.Second)
		require.Len(t, logs.FilterMessage("Vault fault: unreachable").All(), 1)
		require.ErrorIs(t, errGaveUp, context.DeadlineExceeded)
		var ve *vault.Error
		require.False(t, errors.As(errGaveUp, &ve), "the caller gave up: %v", errGaveUp)
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		require.Len(t, logs.FilterMessage("Vault answers again").All(), 1)
	})

	t.Run("stopped, then restarted", func(t *testing.T) {
		f := newFixture(t, own, "cert", nil)
		core, logs := observer.New(zap.InfoLevel)
		km := f.serverKM(t, zap.New(core))
		csr, _ := newCSR(t)
		_, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		own.Kill()
		_, err = km.SignCSR(ctx, csr, agentID, time.Minute)
		ve := requireFault(t, err, vault.ErrUnreachable, "connection refused")
		require.Contains(t, ve.Fix(), own.Addr)
		require.NoError(t, own.Restart(ctx))
		chain, err := km.SignCSR(ctx, csr, agentID, time.Minute)
		require.NoError(t, err)
		requireChainsTo(t, chain, f.root) // the same root: Vault kept its data
		require.Len(t, logs.FilterMessage("Vault fault: unreachable").All(), 1)
		require.Len(t, logs.FilterMessage("Vault answers again").All(), 1)
	})
}

// Must show: the README shows setup.sh as it is, so the documented setup
// is the tested one.
func TestREADMEShowsSetupScript(t *testing.T) {
	script := must(os.ReadFile("setup.sh"))
	readme := must(os.ReadFile("README.md"))
	require.Contains(t, string(readme), "```sh\n"+string(script)+"```\n", "README.md must include setup.sh verbatim (copy it between the markers)")
}

// TestContractRotation drives one PKI mount through the rotation steps the
// server uses (prepare, activate, revoke), logged in as the server with the
// rotation policy setup.sh writes (ROTATION=yes).
func TestContractRotation(t *testing.T) {
	t.Parallel()
	srv := sharedServer(t)
	f := newFixture(t, srv, "cert", func(s *baotest.Setup) { s.Rotation = true })
	oldRoot := f.root
	ctx := context.Background()
	newKM := func(t *testing.T) *vault.KeyManager { return f.serverKM(t, nil) }
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
		s, err := f.admin.Logical().Read(f.setup.PKIMount + "/config/issuers")
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
		require.NotEqual(t, oldRoot.Subject.String(), root.Subject.String(), "told apart by their subjects")
		require.True(t, strings.HasPrefix(root.Subject.SerialNumber, "hallmark-"), "the issuer's name: %s", root.Subject)
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
		s, err := f.admin.Logical().Read(f.setup.PKIMount + "/issuer/" + old.ID)
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
		f.write(t, f.setup.PKIMount+"/config/issuers", map[string]any{"default": next.ID, "default_follows_latest_issuer": true})
		defer f.write(t, f.setup.PKIMount+"/config/issuers", map[string]any{"default": next.ID, "default_follows_latest_issuer": false})
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
	mu    sync.Mutex
	svid  *x509svid.SVID
	shown map[*x509svid.SVID]bool
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shown == nil {
		s.shown = map[*x509svid.SVID]bool{}
	}
	s.shown[s.svid] = true
	return s.svid, nil
}

func (s *svidSource) set(v *x509svid.SVID) { s.mu.Lock(); s.svid = v; s.mu.Unlock() }

// fetches is how many distinct SVIDs were shown.
func (s *svidSource) fetches() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.shown) }

// jwtSource mints JWT-SVIDs as the SPIRE Workload API would.
type jwtSource struct {
	key *ecdsa.PrivateKey
	sub spiffeid.ID
	aud string // overrides the requested audience
}

func (j *jwtSource) FetchJWTSVID(_ context.Context, p jwtsvid.Params) (*jwtsvid.SVID, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: j.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		return nil, err
	}
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject: j.sub.String(), Audience: jwt.Audience{cmp.Or(j.aud, p.Audience)},
		Expiry: jwt.NewNumericDate(time.Now().Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now()),
	}).Serialize()
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseInsecure(token, []string{cmp.Or(j.aud, p.Audience)})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

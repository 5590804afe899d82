package harness

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/hallmark-dev/hallmark/test/baotest"
)

// VaultOptions configure ConfigureVault.
type VaultOptions struct {
	// Auth is how hallmark-server logs in: "cert" (its X509-SVID; the
	// default) or "jwt" (a JWT-SVID).
	Auth string
	// Rotation grants the server the rotation policy, for `hallmark admin
	// rotate signing`.
	Rotation bool
	// Prefix starts the names of the mounts and policy (made unique);
	// default "hallmark".
	Prefix string
	// TokenTTL is the lifetime of the server's Vault token; default 10m.
	TokenTTL string
}

// VaultSetup is what ConfigureVault produced.
type VaultSetup struct {
	// KeyManager is the hallmark-server key_manager block.
	KeyManager string
	// CA is the PKI mount's issuing root.
	CA *x509.Certificate
	// Setup is the setup.sh run, with the names it used.
	Setup baotest.Setup
	// Server is the Vault the setup is on.
	Server *baotest.Server
}

// ConfigureVault sets up srv for Hallmark by running
// plugins/keymanager/vault/setup.sh, the setup that plugin's README
// documents, on mounts of its own: it trusts the SPIRE bundle of the
// moment (cert auth) or SPIRE's JWT authorities (jwt auth) for ServerID.
func ConfigureVault(ctx context.Context, srv *baotest.Server, sp *SPIRE, o VaultOptions) (VaultSetup, error) {
	if o.Auth == "" {
		o.Auth = "cert"
	}
	if o.Prefix == "" {
		o.Prefix = "hallmark"
	}
	st := baotest.NewSetup(o.Prefix, o.Auth)
	st.TrustDomain, st.ServerID, st.Rotation, st.TokenTTL = TrustDomain, ServerID.String(), o.Rotation, o.TokenTTL
	dir, err := os.MkdirTemp("", "hallmark-vault-setup-")
	if err != nil {
		return VaultSetup{}, err
	}
	defer os.RemoveAll(dir)
	switch o.Auth {
	case "cert":
		bundle, err := sp.ServerCmd(ctx, "bundle", "show", "-format", "pem")
		if err != nil {
			return VaultSetup{}, fmt.Errorf("vault setup: SPIRE bundle: %w", err)
		}
		st.SPIREBundle = filepath.Join(dir, "spire-bundle.pem")
		if err := os.WriteFile(st.SPIREBundle, []byte(bundle), 0o600); err != nil {
			return VaultSetup{}, err
		}
	case "jwt":
		keys, err := spireJWTKeys(ctx, sp)
		if err != nil {
			return VaultSetup{}, err
		}
		st.JWTKeys = filepath.Join(dir, "spire-jwt-keys.pem")
		if err := os.WriteFile(st.JWTKeys, keys, 0o600); err != nil {
			return VaultSetup{}, err
		}
	default:
		return VaultSetup{}, fmt.Errorf("vault setup: unknown auth %q", o.Auth)
	}
	if _, err := srv.Run(ctx, st); err != nil {
		return VaultSetup{}, err
	}
	ca, err := defaultIssuer(ctx, srv, st.PKIMount)
	if err != nil {
		return VaultSetup{}, err
	}
	auth := fmt.Sprintf("  auth %q {\n    mount = %q\n    role  = %q\n  }\n", o.Auth, st.AuthMount, st.AuthRole)
	hcl := fmt.Sprintf("key_manager \"vault\" {\n  address      = %q\n  ca_cert_file = %q\n  pki_mount    = %q\n  role         = %q\n%s}\n",
		srv.Addr, srv.CACertFile, st.PKIMount, st.Role, auth)
	return VaultSetup{KeyManager: hcl, CA: ca, Setup: st, Server: srv}, nil
}

// VaultKeyManager is a StackOptions.KeyManager that configures srv (see
// ConfigureVault) and stores the result in *out.
func VaultKeyManager(srv *baotest.Server, o VaultOptions, out *VaultSetup) func(ctx context.Context, sp *SPIRE) (string, error) {
	return func(ctx context.Context, sp *SPIRE) (string, error) {
		setup, err := ConfigureVault(ctx, srv, sp, o)
		if err != nil {
			return "", err
		}
		if out != nil {
			*out = setup
		}
		return setup.KeyManager, nil
	}
}

// spireJWTKeys is the PEM of the public keys of SPIRE's JWT authorities,
// from its bundle in SPIFFE format (a JWKS).
func spireJWTKeys(ctx context.Context, sp *SPIRE) ([]byte, error) {
	out, err := sp.ServerCmd(ctx, "bundle", "show", "-format", "spiffe")
	if err != nil {
		return nil, fmt.Errorf("vault setup: SPIRE bundle: %w", err)
	}
	b, err := spiffebundle.Parse(td, []byte(out))
	if err != nil {
		return nil, fmt.Errorf("vault setup: SPIRE bundle: %w", err)
	}
	auths := b.JWTAuthorities()
	ids := make([]string, 0, len(auths))
	for id := range auths {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var keys []byte
	for _, id := range ids {
		der, err := x509.MarshalPKIXPublicKey(auths[id])
		if err != nil {
			return nil, fmt.Errorf("vault setup: JWT authority %s: %w", id, err)
		}
		keys = append(keys, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	if len(keys) == 0 {
		return nil, errors.New("vault setup: SPIRE's bundle has no JWT authority")
	}
	return keys, nil
}

// defaultIssuer reads the mount's default issuer certificate (an
// unauthenticated endpoint).
func defaultIssuer(ctx context.Context, srv *baotest.Server, mount string) (*x509.Certificate, error) {
	c, err := srv.Client()
	if err != nil {
		return nil, err
	}
	resp, err := c.Logical().ReadRawWithContext(ctx, mount+"/issuer/default/pem")
	if err != nil {
		return nil, fmt.Errorf("vault: read issuer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(body)
	if block == nil {
		return nil, errors.New("vault: issuer/default/pem returned no PEM")
	}
	return x509.ParseCertificate(block.Bytes)
}

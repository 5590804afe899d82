package harness

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/vault/api"
)

// Vault is a Vault server the harness configures for Hallmark: any Vault
// (a real `vault server -dev-tls`, or test/vaultdev) reachable over TLS.
type Vault struct {
	Addr       string
	CACertFile string
	RootToken  string
}

// VaultSetup is what ConfigureVault produced.
type VaultSetup struct {
	// KeyManager is the hallmark-server key_manager block.
	KeyManager string
	// CA is the PKI mount's issuing root.
	CA *x509.Certificate
}

// ConfigureVault sets Vault up the way docs (plugins/keymanager/vault)
// describe: a PKI mount "hallmark-pki" with an EC root and the
// "hallmark-agent" role, and a cert auth mount trusting the SPIRE bundle
// for the server's SPIFFE ID only.
func ConfigureVault(ctx context.Context, v Vault, sp *SPIRE) (VaultSetup, error) {
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: v.CACertFile}); err != nil {
		return VaultSetup{}, err
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return VaultSetup{}, err
	}
	c.SetToken(v.RootToken)
	bundle, err := os.ReadFile(sp.BundlePath)
	if err != nil {
		return VaultSetup{}, err
	}
	steps := []struct {
		path string
		data map[string]any
	}{
		{"sys/mounts/hallmark-pki", map[string]any{"type": "pki", "config": map[string]any{"max_lease_ttl": "87600h"}}},
		{"hallmark-pki/root/generate/internal", map[string]any{
			"common_name": "Hallmark signing CA", "key_type": "ec", "key_bits": 256, "ttl": "8760h", "issuer_name": "root-1",
		}},
		{"hallmark-pki/roles/hallmark-agent", map[string]any{
			"allowed_uri_sans":    "spiffe://" + TrustDomain + "/hallmark/agent/*",
			"max_ttl":             "1h",
			"require_cn":          false,
			"use_csr_sans":        false,
			"use_csr_common_name": false,
			"server_flag":         false,
			"client_flag":         false,
			"code_signing_flag":   true,
			"no_store":            true,
		}},
		{"sys/auth/hallmark-cert", map[string]any{"type": "cert"}},
		{"auth/hallmark-cert/certs/hallmark-server", map[string]any{
			"certificate": string(bundle), "allowed_uri_sans": ServerID.String(), "token_policies": "hallmark-server", "token_ttl": "10m",
		}},
	}
	for _, s := range steps {
		if _, err := c.Logical().WriteWithContext(ctx, s.path, s.data); err != nil {
			return VaultSetup{}, fmt.Errorf("vault: write %s: %w", s.path, err)
		}
	}
	// The server's token may sign with the agent role, nothing else.
	if err := c.Sys().PutPolicyWithContext(ctx, "hallmark-server", `path "hallmark-pki/sign/hallmark-agent" { capabilities = ["create", "update"] }`); err != nil {
		return VaultSetup{}, fmt.Errorf("vault: write policy: %w", err)
	}
	resp, err := c.Logical().ReadRawWithContext(ctx, "hallmark-pki/issuer/default/pem")
	if err != nil {
		return VaultSetup{}, fmt.Errorf("vault: read issuer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return VaultSetup{}, err
	}
	block, _ := pem.Decode(body)
	if block == nil {
		return VaultSetup{}, errors.New("vault: issuer/default/pem returned no PEM")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return VaultSetup{}, err
	}
	hcl := fmt.Sprintf(`key_manager "vault" {
  address      = %q
  ca_cert_file = %q
  pki_mount    = "hallmark-pki"
  role         = "hallmark-agent"
  auth "cert" {
    mount = "hallmark-cert"
    role  = "hallmark-server"
  }
}
`, v.Addr, v.CACertFile)
	return VaultSetup{KeyManager: hcl, CA: ca}, nil
}

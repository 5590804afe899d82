package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/internal/config"
	"github.com/hallmark-dev/hallmark/plugins/keymanager/local"
	"github.com/hallmark-dev/hallmark/plugins/keymanager/vault"
)

// KeyManager certifies agents' short-lived signing keys.
type KeyManager interface {
	// SignCSR certifies csr's public key for ttl with id as the only URI
	// SAN and returns the leaf followed by its CA chain.
	SignCSR(ctx context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error)
}

// KeyManagerConfig is a decoded key_manager block, built once the server
// holds its SVID (the vault key manager logs in with it).
type KeyManagerConfig struct {
	Name  string
	build func(pluginDeps) (KeyManager, error)
}

// pluginDeps are what the server hands to plugins.
type pluginDeps struct {
	log   *zap.Logger
	svids x509svid.Source
	jwts  vault.JWTSource
	now   func() time.Time
}

// keyManagers lists the built-in key managers by their block label.
var keyManagers = map[string]func(body hcl.Body, dataDir string, getenv func(string) string) (func(pluginDeps) (KeyManager, error), error){
	"local": localKeyManager,
	"vault": vaultKeyManager,
}

func keyManagerConfig(name string, body hcl.Body, dataDir string, getenv func(string) string) (KeyManagerConfig, error) {
	decode, ok := keyManagers[name]
	if !ok {
		names := make([]string, 0, len(keyManagers))
		for n := range keyManagers {
			names = append(names, n)
		}
		sort.Strings(names)
		return KeyManagerConfig{}, fmt.Errorf("key_manager %q: unknown (built in: %s)", name, strings.Join(names, ", "))
	}
	build, err := decode(body, dataDir, getenv)
	if err != nil {
		return KeyManagerConfig{}, fmt.Errorf("key_manager %q: %w", name, err)
	}
	return KeyManagerConfig{Name: name, build: build}, nil
}

func localKeyManager(body hcl.Body, dataDir string, _ func(string) string) (func(pluginDeps) (KeyManager, error), error) {
	var b struct {
		CATTL string `hcl:"ca_ttl,optional"`
	}
	if err := config.DecodeBlock(body, &b); err != nil {
		return nil, err
	}
	ttl, err := config.DurationAtLeast("ca_ttl", b.CATTL, local.DefaultCATTL, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	return func(d pluginDeps) (KeyManager, error) {
		return local.New(local.Config{Dir: filepath.Join(dataDir, "keymanager", "local"), CATTL: ttl, Now: d.now})
	}, nil
}

func vaultKeyManager(body hcl.Body, _ string, getenv func(string) string) (func(pluginDeps) (KeyManager, error), error) {
	cfg, err := vault.ParseConfig(body, getenv)
	if err != nil {
		return nil, err
	}
	return func(d pluginDeps) (KeyManager, error) {
		if cfg.Auth.Method == vault.AuthDevToken {
			d.log.Warn("vault key manager uses a static token from VAULT_TOKEN: for development only")
		}
		return vault.New(cfg, vault.Deps{Log: d.log, SVIDs: d.svids, JWTs: d.jwts, Now: d.now})
	}, nil
}

package vault

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// Auth methods the key manager can log in to Vault with.
const (
	AuthCert     = "cert"      // TLS client certificate: the server's X509-SVID
	AuthJWT      = "jwt"       // a JWT-SVID from the SPIRE Workload API
	AuthDevToken = "dev_token" // a static token from VAULT_TOKEN: development only
)

// Config is the key_manager "vault" block.
type Config struct {
	// Address is Vault's base URL, e.g. https://vault.internal:8200.
	Address string `hcl:"address"`
	// CACertFile is a PEM bundle that verifies Vault's TLS certificate;
	// the system roots when empty.
	CACertFile string `hcl:"ca_cert_file,optional"`
	// Namespace is a Vault Enterprise namespace; empty for none.
	Namespace string `hcl:"namespace,optional"`
	// PKIMount is where the PKI secrets engine is mounted. Default "pki".
	PKIMount string `hcl:"pki_mount,optional"`
	// Role is the PKI role agents' certificates are signed under.
	Role string `hcl:"role"`
	// Auth says how the server logs in to Vault.
	Auth AuthConfig `hcl:"auth,block"`

	// Token is the static token for the dev_token method, taken from the
	// VAULT_TOKEN environment variable, never from the file.
	Token string

	// requestTimeout bounds each request (tests); zero is
	// defaultRequestTimeout.
	requestTimeout time.Duration
}

// AuthConfig is the auth "METHOD" block.
type AuthConfig struct {
	// Method is the block label: cert, jwt or dev_token.
	Method string `hcl:"method,label"`
	// Mount is where the auth method is mounted; defaults to its name.
	Mount string `hcl:"mount,optional"`
	// Role is the cert role name (optional for cert) or the jwt role
	// (required for jwt).
	Role string `hcl:"role,optional"`
	// Audience is the JWT-SVID audience for jwt; default "vault".
	Audience string `hcl:"audience,optional"`
}

// ParseConfig decodes a key_manager "vault" block. Unknown keys are errors.
// getenv supplies VAULT_TOKEN for the dev_token method.
func ParseConfig(body hcl.Body, getenv func(string) string) (Config, error) {
	var c Config
	if diags := gohcl.DecodeBody(body, nil, &c); diags.HasErrors() {
		return Config{}, fmt.Errorf("vault: %w", diags)
	}
	if c.Auth.Method == AuthDevToken {
		c.Token = getenv("VAULT_TOKEN")
	}
	return c, c.setDefaultsAndValidate()
}

func (c *Config) setDefaultsAndValidate() error {
	if c.Address == "" {
		return fmt.Errorf("vault: address is required")
	}
	if !strings.HasPrefix(c.Address, "https://") && !strings.HasPrefix(c.Address, "http://") {
		return fmt.Errorf("vault: address %q must start with https:// or http://", c.Address)
	}
	if c.PKIMount == "" {
		c.PKIMount = "pki"
	}
	c.PKIMount = strings.Trim(c.PKIMount, "/")
	if c.Role == "" {
		return fmt.Errorf("vault: role is required")
	}
	if c.Auth.Mount == "" {
		c.Auth.Mount = c.Auth.Method
	}
	c.Auth.Mount = strings.Trim(c.Auth.Mount, "/")
	switch c.Auth.Method {
	case AuthCert:
		if !strings.HasPrefix(c.Address, "https://") {
			return fmt.Errorf("vault: cert auth needs an https:// address")
		}
	case AuthJWT:
		if c.Auth.Role == "" {
			return fmt.Errorf("vault: jwt auth needs a role")
		}
		if c.Auth.Audience == "" {
			c.Auth.Audience = "vault"
		}
	case AuthDevToken:
		if c.Token == "" {
			return fmt.Errorf("vault: dev_token auth needs VAULT_TOKEN in the environment")
		}
	default:
		return fmt.Errorf("vault: unknown auth method %q (want %s, %s or %s)", c.Auth.Method, AuthCert, AuthJWT, AuthDevToken)
	}
	return nil
}

// validated applies defaults to a Config built in code and checks it.
func (c Config) validated() (Config, error) {
	err := c.setDefaultsAndValidate()
	return c, err
}

package baotest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Setup is one run of plugins/keymanager/vault/setup.sh, the Vault setup
// the vault key manager documents: the same script, with these settings.
type Setup struct {
	TrustDomain     string // TRUST_DOMAIN
	AgentPathPrefix string // AGENT_PATH_PREFIX
	ServerID        string // SERVER_ID
	PKIMount        string // PKI_MOUNT
	Role            string // ROLE
	CACommonName    string // CA_COMMON_NAME
	MaxTTL          string // MAX_TTL
	Policy          string // POLICY
	Rotation        bool   // ROTATION=yes
	Auth            string // AUTH: cert or jwt
	AuthMount       string // AUTH_MOUNT
	AuthRole        string // AUTH_ROLE
	TokenTTL        string // TOKEN_TTL
	SPIREBundle     string // SPIRE_BUNDLE (cert)
	JWTKeys         string // JWT_KEYS (jwt)
	JWTAudience     string // JWT_AUDIENCE (jwt)
}

// NewSetup is a Setup with names of its own (prefix plus Unique's suffix)
// for the mounts, role and policy, and auth.
func NewSetup(prefix, auth string) Setup {
	name := Unique(prefix)
	return Setup{
		PKIMount: name + "-pki", Role: "hallmark-agent", Policy: name + "-server",
		Auth: auth, AuthMount: name + "-" + auth, AuthRole: "hallmark-server",
	}
}

func (st Setup) env() []string {
	vars := []struct{ name, value string }{
		{"TRUST_DOMAIN", st.TrustDomain}, {"AGENT_PATH_PREFIX", st.AgentPathPrefix}, {"SERVER_ID", st.ServerID},
		{"PKI_MOUNT", st.PKIMount}, {"ROLE", st.Role}, {"CA_COMMON_NAME", st.CACommonName}, {"MAX_TTL", st.MaxTTL},
		{"POLICY", st.Policy}, {"AUTH", st.Auth}, {"AUTH_MOUNT", st.AuthMount}, {"AUTH_ROLE", st.AuthRole},
		{"TOKEN_TTL", st.TokenTTL}, {"SPIRE_BUNDLE", st.SPIREBundle}, {"JWT_KEYS", st.JWTKeys}, {"JWT_AUDIENCE", st.JWTAudience},
	}
	var env []string
	for _, v := range vars {
		if v.value != "" {
			env = append(env, v.name+"="+v.value)
		}
	}
	if st.Rotation {
		env = append(env, "ROTATION=yes")
	}
	return env
}

// SetupScript is the path of plugins/keymanager/vault/setup.sh in the
// repository around the working directory.
func SetupScript() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "plugins", "keymanager", "vault", "setup.sh"), nil
		}
		if filepath.Dir(d) == d {
			return "", errors.New("baotest: not inside the repository (no go.mod above " + wd + ")")
		}
	}
}

// Run runs setup.sh against the server as root with st's settings and
// returns its output.
func (s *Server) Run(ctx context.Context, st Setup) (string, error) {
	script, err := SetupScript()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	// The CLI reads VAULT_* (and BAO_*) variables: only the ones given here.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "BAO_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, s.Env()...)
	cmd.Env = append(cmd.Env, st.env()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("baotest: setup.sh against %s: %w\n%s", s, err, out.String())
	}
	return out.String(), nil
}

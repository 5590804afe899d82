// Package vault is a key manager that certifies agents' signing keys with
// Vault's PKI secrets engine (pki/sign/ROLE), so that the CA key stays in
// Vault. hallmark-server logs in with its own SPIFFE identity: its X509-SVID
// through Vault's cert auth method, or a JWT-SVID through the jwt method. A
// static token (dev_token) exists for development only.
//
// The SPIFFE ID a certificate names is passed by the server, which takes it
// from the caller's mTLS peer certificate; the role should set
// use_csr_sans=false so that nothing in the CSR can add another name.
//
// Signing-CA rotation (Issuers, PrepareIssuer, ActivateIssuer, RevokeIssuer)
// uses the mount's issuers: see issuers.go.
package vault

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
)

// JWTSource fetches JWT-SVIDs; a workloadapi.Client is one.
type JWTSource interface {
	FetchJWTSVID(ctx context.Context, params jwtsvid.Params) (*jwtsvid.SVID, error)
}

// Deps are what the key manager needs from the server.
type Deps struct {
	Log *zap.Logger
	// SVIDs gives the server's X509-SVID, presented to Vault as the TLS
	// client certificate for cert auth.
	SVIDs x509svid.Source
	// JWTs gives JWT-SVIDs for jwt auth.
	JWTs JWTSource
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// KeyManager signs CSRs with Vault PKI.
type KeyManager struct {
	cfg    Config
	deps   Deps
	client *api.Client // every request but cert login
	login  *api.Client // cert login: a new TLS handshake each time, so the current SVID is shown

	mu        sync.Mutex
	hasToken  bool
	refreshAt time.Time // zero: never
	expiresAt time.Time // of the token in use, as its login said; zero: never
	// generation counts logins, so that of many requests refused with one
	// token only the first logs in again.
	generation uint64
	// refused holds the requests (op) refused (403) right after a fresh
	// login: the policy, not the token, is the problem, and further 403s
	// for them with that token are reported without logging in again.
	refused map[string]bool

	faults faultLog
}

// New returns a key manager for cfg. It does not contact Vault: the first
// signing request logs in.
func New(cfg Config, deps Deps) (*KeyManager, error) {
	cfg, err := cfg.validated()
	if err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	switch cfg.Auth.Method {
	case AuthCert:
		if deps.SVIDs == nil {
			return nil, errors.New("vault: cert auth needs an X509-SVID source")
		}
	case AuthJWT:
		if deps.JWTs == nil {
			return nil, errors.New("vault: jwt auth needs a JWT-SVID source")
		}
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CACertFile != "" {
		pemBytes, err := os.ReadFile(cfg.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("vault: read ca_cert_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("vault: ca_cert_file %s holds no PEM certificate", cfg.CACertFile)
		}
		tlsConfig.RootCAs = pool
	}
	client, err := newClient(cfg, &http.Transport{TLSClientConfig: tlsConfig, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 16})
	if err != nil {
		return nil, err
	}
	km := &KeyManager{cfg: cfg, deps: deps, client: client}
	if cfg.Auth.Method == AuthCert {
		loginTLS := tlsConfig.Clone()
		loginTLS.GetClientCertificate = km.clientCertificate
		km.login, err = newClient(cfg, &http.Transport{TLSClientConfig: loginTLS, DisableKeepAlives: true})
		if err != nil {
			return nil, err
		}
	}
	return km, nil
}

// defaultRequestTimeout bounds each request to Vault. It is shorter than
// an agent's call to the server (30 s), so that a Vault that hangs is
// reported as the key manager's fault (unreachable), to the agent and in
// the server's log, before the agent gives up and blames the server (as
// it did with 30 s here).
const defaultRequestTimeout = 10 * time.Second

// requestTimeoutOr is the bound on each request to Vault.
func (c Config) requestTimeoutOr() time.Duration {
	return cmp.Or(c.requestTimeout, defaultRequestTimeout)
}

func newClient(cfg Config, transport *http.Transport) (*api.Client, error) {
	// api.DefaultConfig would read VAULT_* variables (VAULT_SKIP_VERIFY
	// among them); the file is the only source of settings here.
	client, err := api.NewClient(&api.Config{
		Address:    cfg.Address,
		HttpClient: &http.Client{Transport: transport, Timeout: cfg.requestTimeoutOr()},
		Timeout:    cfg.requestTimeoutOr(),
		MaxRetries: 0, // the agent retries with backoff; fail fast and say why
	})
	if err != nil {
		return nil, fmt.Errorf("vault: client: %w", err)
	}
	client.ClearToken()
	client.SetNamespace(cfg.Namespace)
	return client, nil
}

// SignCSR asks Vault to sign csr under the configured role, for ttl, with id
// as the URI SAN. It returns the leaf followed by Vault's CA chain.
func (k *KeyManager) SignCSR(ctx context.Context, csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("vault: SPIFFE ID is required")
	}
	data := map[string]any{
		"csr":                  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		"ttl":                  fmt.Sprintf("%ds", int64(ttl/time.Second)),
		"uri_sans":             id.String(),
		"exclude_cn_from_sans": true,
		"format":               "pem",
	}
	path := k.cfg.PKIMount + "/sign/" + k.cfg.Role
	secret, err := k.write(ctx, path, data)
	if err != nil {
		return nil, err
	}
	if len(secret.Warnings) > 0 {
		k.deps.Log.Warn("Vault answered with warnings", zap.String("path", path), zap.Strings("warnings", secret.Warnings))
	}
	return k.parseSignResponse("write "+path, secret)
}

// write performs a logical write with a valid token (see call). An empty
// answer is an error.
func (k *KeyManager) write(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	op := "write " + path
	secret, err := k.call(ctx, op, func() (*api.Secret, error) {
		return k.client.Logical().WriteWithContext(ctx, path, data)
	})
	if err != nil {
		return nil, err
	}
	if secret == nil {
		return nil, k.misconfigured(op, "empty response")
	}
	return secret, nil
}

// call runs one Vault request with a valid token. When Vault refuses the
// token (403), it logs in once more and retries: a revoked or expired
// token is then replaced; a second 403 means the policy does not grant
// the path (ErrRefusedByPolicy), and later 403s with that same token are
// reported without logging in again. op names the request in errors.
// Every outcome goes through the fault log, so a fault and the recovery
// from it are each logged once.
func (k *KeyManager) call(ctx context.Context, op string, do func() (*api.Secret, error)) (*api.Secret, error) {
	secret, err := k.callOnce(ctx, op, do)
	k.faults.note(k.deps.Log, op, err)
	return secret, err
}

func (k *KeyManager) callOnce(ctx context.Context, op string, do func() (*api.Secret, error)) (*api.Secret, error) {
	gen, err := k.ensureToken(ctx, 0)
	if err != nil {
		return nil, err
	}
	secret, err := do()
	if isForbidden(err) && k.cfg.Auth.Method != AuthDevToken && !k.knownRefused(op, gen) {
		k.deps.Log.Warn("Vault refused the server's token (revoked, expired, or its policy changed); logging in again",
			zap.String(logOp, op))
		if gen, err = k.ensureToken(ctx, gen); err != nil {
			return nil, err
		}
		secret, err = do()
		k.setRefused(op, gen, isForbidden(err))
	}
	if err != nil {
		return nil, k.classify(ctx, op, err)
	}
	k.setRefused(op, gen, false)
	return secret, nil
}

// knownRefused reports whether op was refused with the token of
// generation gen right after its login.
func (k *KeyManager) knownRefused(op string, gen uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.generation == gen && k.refused[op]
}

func (k *KeyManager) setRefused(op string, gen uint64, refused bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.generation != gen:
	case refused:
		k.refused[op] = true
	default:
		delete(k.refused, op)
	}
}

// ensureToken logs in (or renews a dev token) when there is no token, when
// half its lifetime is gone, or when stale is the generation of the token
// in use (Vault refused it) and no other request has logged in since. It
// returns the generation of the token now in use.
func (k *KeyManager) ensureToken(ctx context.Context, stale uint64) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.deps.Now()
	force := stale != 0 && stale == k.generation
	if k.hasToken && !force && (k.refreshAt.IsZero() || now.Before(k.refreshAt)) {
		return k.generation, nil
	}
	var (
		ttl       time.Duration
		renewable bool
		err       error
	)
	switch k.cfg.Auth.Method {
	case AuthDevToken:
		ttl, renewable, err = k.devToken(ctx)
	case AuthCert:
		ttl, err = k.loginCert(ctx)
	case AuthJWT:
		ttl, err = k.loginJWT(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, err // the caller gave up: nothing is learnt of Vault
		}
		if k.hasToken && !force && (k.expiresAt.IsZero() || now.Before(k.expiresAt)) {
			// A refresh, refused while the token in use is still good:
			// keep it, and say so now rather than when it expires (after
			// SPIRE's authority rotated, setup.sh not run again, this
			// was an outage at the token's expiry and not a word before).
			k.refreshAt = now.Add(keptTokenRetry(k.expiresAt.Sub(now)))
			fields := []zap.Field{zap.Error(err), zap.Time("token_expires_at", k.expiresAt), zap.Time("retry_at", k.refreshAt)}
			if f := (*Error)(nil); errors.As(err, &f) {
				fields = append(fields, zap.String("fix", f.Fix()))
			}
			k.deps.Log.Error("Vault refused a fresh login; signing goes on with the current token until it expires", fields...)
			return k.generation, nil
		}
		k.hasToken = false
		return 0, err
	}
	k.hasToken = true
	k.generation++
	k.refused = map[string]bool{}
	k.refreshAt, k.expiresAt = time.Time{}, time.Time{}
	if ttl > 0 {
		k.refreshAt, k.expiresAt = now.Add(ttl/2), now.Add(ttl)
	}
	k.deps.Log.Info("Vault token ready",
		zap.String("auth_method", k.cfg.Auth.Method),
		zap.Duration("token_ttl", ttl),
		zap.Bool("renewable", renewable || k.cfg.Auth.Method != AuthDevToken))
	return k.generation, nil
}

// keptTokenRetry is when to try a login again after one was refused
// while the token in use has left to live: soon, but not in a loop.
func keptTokenRetry(left time.Duration) time.Duration {
	return min(10*time.Second, max(left/2, time.Second))
}

// devToken sets the static token and renews it when Vault allows.
func (k *KeyManager) devToken(ctx context.Context) (time.Duration, bool, error) {
	k.client.SetToken(k.cfg.Token)
	self, err := k.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return 0, false, k.classify(ctx, opTokenLookup, err)
	}
	ttl, err := self.TokenTTL()
	if err != nil {
		return 0, false, fmt.Errorf("vault: token lookup: %w", err)
	}
	renewable, _ := self.TokenIsRenewable()
	if !renewable {
		if ttl > 0 {
			k.deps.Log.Warn("Vault token is not renewable and will expire", zap.Duration("token_ttl", ttl))
		}
		// Nothing to refresh: a root token never expires, others just end.
		return 0, false, nil
	}
	renewed, err := k.client.Auth().Token().RenewSelfWithContext(ctx, 0)
	if err != nil {
		return 0, false, k.classify(ctx, "token renew", err)
	}
	return time.Duration(renewed.Auth.LeaseDuration) * time.Second, true, nil
}

func (k *KeyManager) loginCert(ctx context.Context) (time.Duration, error) {
	data := map[string]any{}
	if k.cfg.Auth.Role != "" {
		data["name"] = k.cfg.Auth.Role
	}
	return k.loginWith(ctx, k.login, data)
}

func (k *KeyManager) loginJWT(ctx context.Context) (time.Duration, error) {
	svid, err := k.deps.JWTs.FetchJWTSVID(ctx, jwtsvid.Params{Audience: k.cfg.Auth.Audience})
	if err != nil {
		return 0, fmt.Errorf("vault: fetch JWT-SVID for audience %q: %w", k.cfg.Auth.Audience, err)
	}
	return k.loginWith(ctx, k.client, map[string]any{"role": k.cfg.Auth.Role, "jwt": svid.Marshal()})
}

func (k *KeyManager) loginWith(ctx context.Context, c *api.Client, data map[string]any) (time.Duration, error) {
	path := "auth/" + k.cfg.Auth.Mount + "/login"
	op := k.cfg.Auth.Method + " login at " + path
	secret, err := c.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return 0, k.classify(ctx, op, err)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return 0, k.misconfigured(op, "no token in the answer")
	}
	k.client.SetToken(secret.Auth.ClientToken)
	return time.Duration(secret.Auth.LeaseDuration) * time.Second, nil
}

// clientCertificate presents the server's current X509-SVID to Vault.
func (k *KeyManager) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	svid, err := k.deps.SVIDs.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("vault: no X509-SVID for cert auth: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

func isForbidden(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

// parseSignResponse reads data.certificate and data.ca_chain (falling back to
// data.issuing_ca) from a pki/sign answer to op.
func (k *KeyManager) parseSignResponse(op string, secret *api.Secret) ([]*x509.Certificate, error) {
	certPEM, _ := secret.Data["certificate"].(string)
	if certPEM == "" {
		return nil, k.misconfigured(op, "no data.certificate in the answer")
	}
	chain, err := parsePEMCerts(certPEM)
	if err != nil {
		return nil, k.misconfigured(op, "data.certificate: %v", err)
	}
	var caPEMs []string
	if list, ok := secret.Data["ca_chain"].([]any); ok {
		for _, v := range list {
			if s, ok := v.(string); ok {
				caPEMs = append(caPEMs, s)
			}
		}
	}
	if len(caPEMs) == 0 {
		if s, ok := secret.Data["issuing_ca"].(string); ok {
			caPEMs = append(caPEMs, s)
		}
	}
	for _, p := range caPEMs {
		certs, err := parsePEMCerts(p)
		if err != nil {
			return nil, k.misconfigured(op, "data.ca_chain: %v", err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) < 2 {
		return nil, k.misconfigured(op, "no CA chain in the answer")
	}
	return chain, nil
}

func parsePEMCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

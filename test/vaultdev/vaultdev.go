// Package vaultdev is a Vault-API-faithful development server for tests: it
// implements, with real cryptography, exactly the Vault endpoints that
// Hallmark's vault key manager and its test setup use, following Vault's API
// documentation and the behaviour recorded in shared/notes/vault-pki.md:
//
//   - sys/mounts/PATH and sys/auth/PATH to enable the pki, cert and jwt engines;
//   - pki: root/generate/internal, root/rotate/internal, roles/NAME,
//     sign/ROLE, issuers (LIST, keys in storage order: sorted IDs),
//     issuer/REF[/json|/pem] (REF: an ID, a name or "default"),
//     issuer/REF/revoke, config/issuers (default,
//     default_follows_latest_issuer); sign/ROLE uses the role's issuer_ref
//     ("default" unless set), and a revoked issuer never signs again;
//   - auth/cert: certs/NAME and login (TLS client certificate);
//   - auth/jwt: config, role/NAME and login;
//   - auth/token: lookup-self, renew-self, create;
//   - sys/policies/acl/NAME (accepted, not enforced);
//   - sys/health, and sealing through Seal and Unseal.
//
// Responses carry Vault's envelope (request_id, lease_id, renewable,
// lease_duration, data, wrap_info, warnings, auth); errors are
// {"errors": [...]} with Vault's status codes and messages. ACL policies are
// recorded on tokens but not enforced: every valid token may call every path.
// It is a test double, not a Vault: never deploy it.
package vaultdev

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Server is a running development Vault.
type Server struct {
	url       string
	caPEM     []byte
	rootToken string
	listener  net.Listener
	http      *http.Server
	now       func() time.Time

	mu     sync.Mutex
	sealed bool
	tokens map[string]*token
	pkis   map[string]*pkiMount
	certs  map[string]*certAuth
	jwts   map[string]*jwtAuth
}

type token struct {
	id        string
	policies  []string
	ttl       time.Duration // 0: never expires
	expires   time.Time
	renewable bool
	meta      map[string]string
}

// Options configure a Server.
type Options struct {
	// RootToken is the root token; random when empty.
	RootToken string
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// Start starts a server on a random 127.0.0.1 port, serving TLS with a
// certificate from a fresh CA (see CACertPEM).
func Start(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RootToken == "" {
		opts.RootToken = newID("hvs.")
	}
	serverCert, caPEM, err := tlsMaterial()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{
		url:       "https://" + ln.Addr().String(),
		caPEM:     caPEM,
		rootToken: opts.RootToken,
		now:       opts.Now,
		tokens:    map[string]*token{},
		pkis:      map[string]*pkiMount{},
		certs:     map[string]*certAuth{},
		jwts:      map[string]*jwtAuth{},
	}
	s.tokens[opts.RootToken] = &token{id: opts.RootToken, policies: []string{"root"}}
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequestClientCert, // verified by auth/cert/login, as Vault does
		MinVersion:   tls.VersionTLS12,
	}
	s.listener = tls.NewListener(ln, tlsConfig)
	s.http = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	go s.http.Serve(s.listener) //nolint:errcheck // ends with Close
	return s, nil
}

// URL is the server's base address (https://127.0.0.1:PORT).
func (s *Server) URL() string { return s.url }

// CACertPEM verifies the server's TLS certificate.
func (s *Server) CACertPEM() []byte { return s.caPEM }

// WriteCACert writes CACertPEM into dir and returns the file's path.
func (s *Server) WriteCACert(dir string) (string, error) {
	p := filepath.Join(dir, "vault-ca.pem")
	return p, os.WriteFile(p, s.caPEM, 0o644)
}

// RootToken is the root token.
func (s *Server) RootToken() string { return s.rootToken }

// Seal makes every request but sys/health fail with 503 "Vault is sealed".
func (s *Server) Seal() { s.mu.Lock(); s.sealed = true; s.mu.Unlock() }

// Unseal undoes Seal.
func (s *Server) Unseal() { s.mu.Lock(); s.sealed = false; s.mu.Unlock() }

// Close stops the server.
func (s *Server) Close() error { return s.http.Close() }

type request struct {
	r      *http.Request
	path   string // without /v1/
	method string // GET, LIST, WRITE, DELETE
	body   map[string]any
	token  *token
}

type response struct {
	status   int
	data     map[string]any
	auth     map[string]any
	warnings []string
	errors   []string
	// raw, when set, is written as the body instead of an envelope.
	raw         []byte
	contentType string
}

func errorf(status int, format string, args ...any) *response {
	return &response{status: status, errors: []string{fmt.Sprintf(format, args...)}}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	resp := s.handle(r)
	if resp.raw != nil {
		w.Header().Set("Content-Type", resp.contentType)
		w.Write(resp.raw) //nolint:errcheck
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if resp.errors != nil {
		w.WriteHeader(resp.status)
		json.NewEncoder(w).Encode(map[string]any{"errors": resp.errors}) //nolint:errcheck
		return
	}
	if resp.status == http.StatusNoContent {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	env := map[string]any{
		"request_id":     newUUID(),
		"lease_id":       "",
		"renewable":      false,
		"lease_duration": 0,
		"data":           resp.data,
		"wrap_info":      nil,
		"warnings":       nil,
		"auth":           nil,
	}
	if len(resp.warnings) > 0 {
		env["warnings"] = resp.warnings
	}
	if resp.auth != nil {
		env["auth"] = resp.auth
	}
	if resp.status == 0 {
		resp.status = http.StatusOK
	}
	w.WriteHeader(resp.status)
	json.NewEncoder(w).Encode(env) //nolint:errcheck
}

func (s *Server) handle(r *http.Request) *response {
	if !strings.HasPrefix(r.URL.Path, "/v1/") {
		return errorf(http.StatusNotFound, "")
	}
	req := &request{r: r, path: strings.Trim(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")}
	switch {
	case r.Method == "LIST" || (r.Method == http.MethodGet && r.URL.Query().Get("list") == "true"):
		req.method = "LIST"
	case r.Method == http.MethodGet:
		req.method = "GET"
	case r.Method == http.MethodPut || r.Method == http.MethodPost:
		req.method = "WRITE"
	case r.Method == http.MethodDelete:
		req.method = "DELETE"
	default:
		return errorf(http.StatusMethodNotAllowed, "unsupported operation")
	}
	if req.method == "WRITE" && r.ContentLength != 0 {
		dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
		dec.UseNumber()
		if err := dec.Decode(&req.body); err != nil {
			return errorf(http.StatusBadRequest, "failed to parse JSON input: %v", err)
		}
	}
	if req.body == nil {
		req.body = map[string]any{}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if req.path == "sys/health" {
		status := http.StatusOK
		if s.sealed {
			status = http.StatusServiceUnavailable
		}
		return &response{status: status, data: map[string]any{"initialized": true, "sealed": s.sealed, "standby": false}}
	}
	if s.sealed {
		return errorf(http.StatusServiceUnavailable, "Vault is sealed")
	}
	if resp := s.unauthenticated(req); resp != nil {
		return resp
	}
	tok, ok := s.tokens[r.Header.Get("X-Vault-Token")]
	if !ok || (tok.ttl > 0 && !s.now().Before(tok.expires)) {
		return errorf(http.StatusForbidden, "permission denied")
	}
	req.token = tok
	return s.authenticated(req)
}

// unauthenticated serves logins and public PKI paths; nil for the rest.
func (s *Server) unauthenticated(req *request) *response {
	parts := strings.Split(req.path, "/")
	if len(parts) >= 3 && parts[0] == "auth" && parts[len(parts)-1] == "login" && req.method == "WRITE" {
		mount := strings.Join(parts[1:len(parts)-1], "/")
		if c, ok := s.certs[mount]; ok {
			return s.certLogin(c, req)
		}
		if j, ok := s.jwts[mount]; ok {
			return s.jwtLogin(j, req)
		}
		return errorf(http.StatusNotFound, "no handler for route %q. route entry not found.", req.path)
	}
	for mount, m := range s.pkis {
		rest, ok := strings.CutPrefix(req.path, mount+"/")
		if !ok {
			continue
		}
		switch {
		case req.method == "LIST" && rest == "issuers":
			return m.listIssuers()
		case req.method == "GET" && strings.HasPrefix(rest, "issuer/") && (strings.HasSuffix(rest, "/json") || strings.HasSuffix(rest, "/pem")):
			return m.readIssuerPublic(strings.TrimPrefix(rest, "issuer/"))
		}
	}
	return nil
}

func (s *Server) authenticated(req *request) *response {
	p := req.path
	switch {
	case strings.HasPrefix(p, "sys/mounts/") && req.method == "WRITE":
		return s.enableMount(strings.TrimPrefix(p, "sys/mounts/"), req)
	case strings.HasPrefix(p, "sys/auth/") && req.method == "WRITE":
		return s.enableAuth(strings.TrimPrefix(p, "sys/auth/"), req)
	case p == "auth/token/lookup-self" && req.method == "GET":
		return s.lookupSelf(req.token)
	case p == "auth/token/renew-self" && req.method == "WRITE":
		return s.renewSelf(req.token)
	case p == "auth/token/create" && req.method == "WRITE":
		return s.createToken(req)
	case strings.HasPrefix(p, "sys/policies/acl/") && req.method == "WRITE":
		// Accepted so setup scripts run unchanged; policies are not enforced.
		if str(req.body, "policy") == "" {
			return errorf(http.StatusBadRequest, "'policy' parameter not supplied or empty")
		}
		return &response{status: http.StatusNoContent}
	}
	parts := strings.Split(p, "/")
	if len(parts) >= 3 && parts[0] == "auth" {
		mount := parts[1]
		if c, ok := s.certs[mount]; ok && parts[2] == "certs" && len(parts) == 4 && req.method == "WRITE" {
			return c.writeRole(parts[3], req)
		}
		if j, ok := s.jwts[mount]; ok {
			switch {
			case len(parts) == 3 && parts[2] == "config" && req.method == "WRITE":
				return j.writeConfig(req)
			case len(parts) == 4 && parts[2] == "role" && req.method == "WRITE":
				return j.writeRole(parts[3], req)
			}
		}
	}
	for mount, m := range s.pkis {
		if rest, ok := strings.CutPrefix(p, mount+"/"); ok {
			return m.handle(rest, req, s.now())
		}
	}
	return errorf(http.StatusNotFound, "no handler for route %q. route entry not found.", p)
}

func (s *Server) enableMount(path string, req *request) *response {
	path = strings.Trim(path, "/")
	if str(req.body, "type") != "pki" {
		return errorf(http.StatusBadRequest, "plugin not found in the catalog: %s", str(req.body, "type"))
	}
	if _, ok := s.pkis[path]; ok {
		return errorf(http.StatusBadRequest, "path is already in use at %s/", path)
	}
	s.pkis[path] = newPKIMount()
	return &response{status: http.StatusNoContent}
}

func (s *Server) enableAuth(path string, req *request) *response {
	path = strings.Trim(path, "/")
	if _, ok := s.certs[path]; ok {
		return errorf(http.StatusBadRequest, "path is already in use at auth/%s/", path)
	}
	if _, ok := s.jwts[path]; ok {
		return errorf(http.StatusBadRequest, "path is already in use at auth/%s/", path)
	}
	switch str(req.body, "type") {
	case "cert":
		s.certs[path] = &certAuth{roles: map[string]*certRole{}}
	case "jwt":
		s.jwts[path] = &jwtAuth{roles: map[string]*jwtRole{}}
	default:
		return errorf(http.StatusBadRequest, "plugin not found in the catalog: %s", str(req.body, "type"))
	}
	return &response{status: http.StatusNoContent}
}

// issueToken creates a service token and returns Vault's auth block.
func (s *Server) issueToken(policies []string, ttl time.Duration, meta map[string]string) map[string]any {
	t := &token{id: newID("hvs."), policies: policies, ttl: ttl, renewable: ttl > 0, meta: meta}
	if ttl > 0 {
		t.expires = s.now().Add(ttl)
	}
	s.tokens[t.id] = t
	return map[string]any{
		"client_token":   t.id,
		"accessor":       newID(""),
		"policies":       append([]string{"default"}, policies...),
		"token_policies": append([]string{"default"}, policies...),
		"metadata":       meta,
		"lease_duration": int64(ttl / time.Second),
		"renewable":      t.renewable,
		"entity_id":      newUUID(),
		"token_type":     "service",
		"orphan":         true,
	}
}

func (s *Server) lookupSelf(t *token) *response {
	ttl := int64(0)
	if t.ttl > 0 {
		ttl = int64(t.expires.Sub(s.now()) / time.Second)
	}
	return &response{data: map[string]any{
		"id": t.id, "policies": t.policies, "ttl": ttl, "renewable": t.renewable,
		"creation_ttl": int64(t.ttl / time.Second), "meta": t.meta,
	}}
}

func (s *Server) renewSelf(t *token) *response {
	if !t.renewable {
		return errorf(http.StatusBadRequest, "lease is not renewable")
	}
	t.expires = s.now().Add(t.ttl)
	return &response{auth: map[string]any{
		"client_token": t.id, "policies": t.policies, "lease_duration": int64(t.ttl / time.Second), "renewable": true,
	}}
}

func (s *Server) createToken(req *request) *response {
	ttl, err := duration(req.body, "ttl")
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	return &response{auth: s.issueToken(strs(req.body, "policies"), ttl, nil)}
}

// tlsMaterial makes a CA and a 127.0.0.1 serving certificate.
func tlsMaterial() (tls.Certificate, []byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "vaultdev TLS CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: crypto.Signer(key)},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// colonHex formats a serial number as Vault does: aa:bb:cc.
func colonHex(n *big.Int) string {
	b := n.Bytes()
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = hex.EncodeToString([]byte{c})
	}
	return strings.Join(parts, ":")
}

func newID(prefix string) string {
	b := make([]byte, 18)
	rand.Read(b) //nolint:errcheck // crypto/rand never fails on Linux
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b) //nolint:errcheck
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func pemCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

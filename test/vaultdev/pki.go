package vaultdev

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	glob "github.com/ryanuber/go-glob"
)

// Vault's system defaults: default and maximum lease TTL of 768h.
const systemMaxTTL = 768 * time.Hour

type pkiMount struct {
	issuers   map[string]*issuer
	order     []string // creation order; LIST answers in storage (sorted) order
	defaultID string
	// followsLatest is default_follows_latest_issuer: false unless written,
	// so rotating does not move the default.
	followsLatest bool
	roles         map[string]*pkiRole
}

type issuer struct {
	id, name, keyID string
	key             *ecdsa.PrivateKey
	cert            *x509.Certificate
	// revoked issuers lose the issuing-certificates usage for good.
	revoked   bool
	revokedAt time.Time
}

// Issuer usages as Vault names them, sorted as Vault prints them.
const (
	usageAll     = "crl-signing,issuing-certificates,ocsp-signing,read-only"
	usageRevoked = "crl-signing,ocsp-signing,read-only"
)

func (iss *issuer) usage() string {
	if iss.revoked {
		return usageRevoked
	}
	return usageAll
}

// ref is how Vault names an issuer in errors: [id:ID / name:NAME].
func (iss *issuer) ref() string {
	if iss.name == "" {
		return "id:" + iss.id
	}
	return "id:" + iss.id + " / name:" + iss.name
}

type pkiRole struct {
	allowedURISANs    []string
	allowedDomains    []string
	allowAnyName      bool
	requireCN         bool
	useCSRSANs        bool
	useCSRCommonName  bool
	ttl, maxTTL       time.Duration
	notBeforeDuration time.Duration
	issuerRef         string
	serverFlag        bool
	clientFlag        bool
	codeSigningFlag   bool
	noStore           bool
}

func newPKIMount() *pkiMount {
	return &pkiMount{issuers: map[string]*issuer{}, roles: map[string]*pkiRole{}}
}

func (m *pkiMount) handle(rest string, req *request, now time.Time) *response {
	parts := strings.Split(rest, "/")
	switch {
	case req.method == "WRITE" && (rest == "root/generate/internal" || rest == "root/rotate/internal"):
		return m.generateRoot(req, now)
	case req.method == "WRITE" && len(parts) == 2 && parts[0] == "roles":
		return m.writeRole(parts[1], req)
	case req.method == "WRITE" && len(parts) == 2 && parts[0] == "sign":
		return m.sign(parts[1], req, now)
	case req.method == "GET" && len(parts) == 2 && parts[0] == "issuer":
		return m.readIssuer(parts[1])
	case req.method == "WRITE" && len(parts) == 3 && parts[0] == "issuer" && parts[2] == "revoke":
		return m.revokeIssuer(parts[1], now)
	case rest == "config/issuers" && req.method == "GET":
		return m.issuersConfig()
	case rest == "config/issuers" && req.method == "WRITE":
		return m.writeIssuersConfig(req)
	}
	return errorf(http.StatusNotFound, "no handler for route %q. route entry not found.", req.path)
}

// lookup resolves an issuer reference: "default", an ID or a name.
func (m *pkiMount) lookup(ref string) *issuer {
	if ref == "" || ref == "default" {
		ref = m.defaultID
	}
	if iss, ok := m.issuers[ref]; ok {
		return iss
	}
	for _, iss := range m.issuers {
		if iss.name != "" && iss.name == ref {
			return iss
		}
	}
	return nil
}

func (m *pkiMount) generateRoot(req *request, now time.Time) *response {
	if kt := str(req.body, "key_type"); kt != "" && kt != "ec" {
		return errorf(http.StatusBadRequest, "vaultdev: only key_type=ec is implemented, got %q", kt)
	}
	ttl, err := duration(req.body, "ttl")
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if ttl == 0 {
		ttl = systemMaxTTL
	}
	name := str(req.body, "issuer_name")
	if name != "" && m.lookup(name) != nil {
		return errorf(http.StatusBadRequest, "issuer name already in use")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return errorf(http.StatusInternalServerError, "%v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: str(req.body, "common_name")},
		NotBefore:             now.Add(-30 * time.Second),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return errorf(http.StatusInternalServerError, "%v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	iss := &issuer{id: newUUID(), name: name, keyID: newUUID(), key: key, cert: cert}
	m.issuers[iss.id] = iss
	m.order = append(m.order, iss.id)
	if m.defaultID == "" || m.followsLatest {
		m.defaultID = iss.id
	}
	return &response{data: map[string]any{
		"certificate":   pemCert(cert),
		"expiration":    cert.NotAfter.Unix(),
		"issuer_id":     iss.id,
		"issuer_name":   iss.name,
		"issuing_ca":    pemCert(cert),
		"key_id":        iss.keyID,
		"key_name":      "",
		"serial_number": colonHex(cert.SerialNumber),
	}}
}

func (m *pkiMount) writeRole(name string, req *request) *response {
	r := &pkiRole{
		allowedURISANs: strs(req.body, "allowed_uri_sans"),
		allowedDomains: strs(req.body, "allowed_domains"),
		issuerRef:      str(req.body, "issuer_ref"),
	}
	var err error
	for _, f := range []struct {
		key string
		dst *bool
		def bool
	}{
		{"allow_any_name", &r.allowAnyName, false},
		{"require_cn", &r.requireCN, true},
		{"use_csr_sans", &r.useCSRSANs, true},
		{"use_csr_common_name", &r.useCSRCommonName, true},
		{"server_flag", &r.serverFlag, true},
		{"client_flag", &r.clientFlag, true},
		{"code_signing_flag", &r.codeSigningFlag, false},
		{"no_store", &r.noStore, false},
	} {
		if *f.dst, err = boolean(req.body, f.key, f.def); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
	}
	for _, f := range []struct {
		key string
		dst *time.Duration
	}{{"ttl", &r.ttl}, {"max_ttl", &r.maxTTL}, {"not_before_duration", &r.notBeforeDuration}} {
		if *f.dst, err = duration(req.body, f.key); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
	}
	if _, ok := req.body["not_before_duration"]; !ok {
		r.notBeforeDuration = 30 * time.Second
	}
	if r.issuerRef == "" {
		r.issuerRef = "default"
	}
	m.roles[name] = r
	return &response{status: http.StatusNoContent}
}

// sign implements pki/sign/ROLE as Vault does for the parameters Hallmark
// uses: csr, ttl, common_name, uri_sans, exclude_cn_from_sans, format.
func (m *pkiMount) sign(roleName string, req *request, now time.Time) *response {
	role, ok := m.roles[roleName]
	if !ok {
		return errorf(http.StatusBadRequest, "unknown role: %s", roleName)
	}
	block, _ := pem.Decode([]byte(str(req.body, "csr")))
	if block == nil {
		return errorf(http.StatusBadRequest, "csr contains no data")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return errorf(http.StatusBadRequest, "certificate request could not be parsed: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return errorf(http.StatusBadRequest, "request signature invalid: %v", err)
	}
	iss := m.lookup(role.issuerRef)
	if iss == nil {
		return errorf(http.StatusBadRequest, "unable to find PKI issuer for reference: %s", role.issuerRef)
	}
	if iss.revoked {
		// Vault returns this as an internal error (HTTP 500).
		return errorf(http.StatusInternalServerError, "error fetching CA certificate: error while attempting to use issuer %s: requested usage issuing-certificates for issuer [%s] but only had usage %s",
			iss.id, iss.ref(), iss.usage())
	}

	var warnings []string
	ttl, err := duration(req.body, "ttl")
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if ttl == 0 {
		ttl = role.ttl
	}
	if ttl == 0 {
		ttl = systemMaxTTL
	}
	maxTTL := role.maxTTL
	if maxTTL == 0 {
		maxTTL = systemMaxTTL
	}
	if ttl > maxTTL {
		warnings = append(warnings, fmt.Sprintf("TTL %q is longer than permitted maxTTL %q, so maxTTL is being used", ttl.String(), maxTTL.String()))
		ttl = maxTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(iss.cert.NotAfter) {
		return errorf(http.StatusBadRequest, "cannot satisfy request, as TTL would result in notAfter of %s that is beyond the expiration of the CA certificate at %s",
			notAfter.UTC().Format(time.RFC3339Nano), iss.cert.NotAfter.UTC().Format(time.RFC3339Nano))
	}

	cn := str(req.body, "common_name")
	if role.useCSRCommonName {
		cn = csr.Subject.CommonName
	}
	if cn == "" && role.requireCN {
		return errorf(http.StatusBadRequest, `the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false`)
	}
	var dnsNames []string
	if role.useCSRSANs {
		dnsNames = append(dnsNames, csr.DNSNames...)
	}
	excludeCN, err := boolean(req.body, "exclude_cn_from_sans", false)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if cn != "" && !excludeCN {
		dnsNames = append(dnsNames, cn)
	}
	for _, name := range append([]string{cn}, dnsNames...) {
		if name != "" && !role.nameAllowed(name) {
			return errorf(http.StatusBadRequest, "common name %s not allowed by this role", name)
		}
	}

	var uris []*url.URL
	if role.useCSRSANs && len(csr.URIs) > 0 {
		for _, u := range csr.URIs {
			if !role.uriAllowed(u.String()) {
				return errorf(http.StatusBadRequest, "URI Subject Alternative Names were provided via CSR which are not valid for this role")
			}
		}
		uris = append(uris, csr.URIs...)
	}
	for _, s := range strs(req.body, "uri_sans") {
		u, err := url.Parse(s)
		if err != nil {
			return errorf(http.StatusBadRequest, "error parsing URI: %v", err)
		}
		if !role.uriAllowed(s) {
			return errorf(http.StatusBadRequest, "URI Subject Alternative Name %s not allowed by this role", s)
		}
		if !containsURI(uris, s) {
			uris = append(uris, u)
		}
	}

	var eku []x509.ExtKeyUsage
	if role.serverFlag {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if role.clientFlag {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}
	if role.codeSigningFlag {
		eku = append(eku, x509.ExtKeyUsageCodeSigning)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-role.notBeforeDuration),
		NotAfter:              notAfter,
		DNSNames:              dnsNames,
		URIs:                  uris,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, csr.PublicKey, iss.key)
	if err != nil {
		return errorf(http.StatusBadRequest, "error signing certificate: %v", err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &response{warnings: warnings, data: map[string]any{
		"certificate":   pemCert(leaf),
		"issuing_ca":    pemCert(iss.cert),
		"ca_chain":      []string{pemCert(iss.cert)},
		"serial_number": colonHex(leaf.SerialNumber),
		"expiration":    leaf.NotAfter.Unix(),
		"not_before":    leaf.NotBefore.Unix(),
	}}
}

func (r *pkiRole) nameAllowed(name string) bool {
	if r.allowAnyName {
		return true
	}
	for _, d := range r.allowedDomains {
		if name == d {
			return true
		}
	}
	return false
}

func (r *pkiRole) uriAllowed(uri string) bool {
	for _, pattern := range r.allowedURISANs {
		if glob.Glob(pattern, uri) {
			return true
		}
	}
	return false
}

func containsURI(uris []*url.URL, s string) bool {
	for _, u := range uris {
		if u.String() == s {
			return true
		}
	}
	return false
}

func (m *pkiMount) listIssuers() *response {
	if len(m.order) == 0 {
		return &response{status: http.StatusNotFound, errors: []string{}} // Vault: an empty LIST is a 404
	}
	info := map[string]any{}
	keys := append([]string(nil), m.order...)
	sort.Strings(keys) // Vault lists storage keys, which come sorted
	for _, id := range keys {
		iss := m.issuers[id]
		info[id] = map[string]any{
			"is_default":    id == m.defaultID,
			"issuer_name":   iss.name,
			"key_id":        iss.keyID,
			"serial_number": colonHex(iss.cert.SerialNumber),
		}
	}
	return &response{data: map[string]any{"keys": keys, "key_info": info}}
}

func (m *pkiMount) readIssuer(ref string) *response {
	iss := m.lookup(ref)
	if iss == nil {
		return errorf(http.StatusBadRequest, "unable to find PKI issuer for reference: %s", ref)
	}
	return &response{data: iss.info()}
}

// info is Vault's answer to reading pki/issuer/REF.
func (iss *issuer) info() map[string]any {
	data := map[string]any{
		"ca_chain":                       []string{pemCert(iss.cert)},
		"certificate":                    pemCert(iss.cert),
		"crl_distribution_points":        []string{},
		"delta_crl_distribution_points":  []string{},
		"issuer_id":                      iss.id,
		"issuer_name":                    iss.name,
		"issuing_certificates":           []string{},
		"key_id":                         iss.keyID,
		"leaf_not_after_behavior":        "err",
		"manual_chain":                   nil,
		"ocsp_servers":                   []string{},
		"revocation_signature_algorithm": "",
		"revoked":                        iss.revoked,
		"usage":                          iss.usage(),
	}
	if iss.revoked {
		data["revocation_time"] = iss.revokedAt.Unix()
		data["revocation_time_rfc3339"] = iss.revokedAt.UTC().Format(time.RFC3339Nano)
	}
	return data
}

// revokeIssuer implements pki/issuer/REF/revoke: the issuer loses its
// issuing-certificates usage for good. Like Vault, revoking twice answers
// the issuer as it is, and revoking the default issuer is allowed (with a
// warning): issuance then fails until another default is chosen.
func (m *pkiMount) revokeIssuer(ref string, now time.Time) *response {
	iss := m.lookup(ref)
	if iss == nil {
		return errorf(http.StatusBadRequest, "unable to find PKI issuer for reference: %s", ref)
	}
	if iss.revoked {
		return &response{data: iss.info()}
	}
	iss.revoked = true
	iss.revokedAt = now
	resp := &response{data: iss.info()}
	selfSigned, otherParent := false, false
	for _, id := range m.order {
		if iss.cert.CheckSignatureFrom(m.issuers[id].cert) == nil {
			if id == iss.id {
				selfSigned = true
			} else {
				otherParent = true
			}
		}
	}
	if selfSigned {
		resp.warnings = append(resp.warnings, "This issuer is a self-signed (potentially root) certificate. This means it may not be considered revoked if there is not an external, cross-signed variant of this certificate. This issuer's serial number will not appear on its own CRL.")
	}
	if !otherParent {
		resp.warnings = append(resp.warnings, "This issuer lacks another parent issuer within the mount. This means it will not appear on any other CRLs and may not be considered revoked by clients. Consider adding this issuer to its issuer's CRL as well if it is not self-signed.")
	}
	if m.defaultID == iss.id {
		resp.warnings = append(resp.warnings, "This issuer is currently configured as the default issuer for this mount; operations such as certificate issuance may not work until a new default issuer is selected.")
	}
	return resp
}

func (m *pkiMount) issuersConfig() *response {
	return &response{data: map[string]any{"default": m.defaultID, "default_follows_latest_issuer": m.followsLatest}}
}

// writeIssuersConfig implements writing pki/config/issuers: default (an
// issuer ID or name, not "default") and default_follows_latest_issuer. Like
// Vault, it does not refuse a revoked issuer: issuance then fails.
func (m *pkiMount) writeIssuersConfig(req *request) *response {
	ref := str(req.body, "default")
	if ref == "" || ref == "default" {
		return errorf(http.StatusBadRequest, "Invalid issuer specification; must be non-empty and can't be 'default'.")
	}
	iss := m.lookup(ref)
	if iss == nil {
		return errorf(http.StatusBadRequest, "Error resolving issuer reference: unable to find PKI issuer for reference: %s", ref)
	}
	if _, ok := req.body["default_follows_latest_issuer"]; ok {
		follows, err := boolean(req.body, "default_follows_latest_issuer", false)
		if err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		m.followsLatest = follows
	}
	m.defaultID = iss.id
	return m.issuersConfig()
}

func (m *pkiMount) readIssuerPublic(ref string) *response {
	asPEM := strings.HasSuffix(ref, "/pem")
	ref = strings.TrimSuffix(strings.TrimSuffix(ref, "/pem"), "/json")
	iss := m.lookup(ref)
	if iss == nil {
		return errorf(http.StatusBadRequest, "unable to find PKI issuer for reference: %s", ref)
	}
	if asPEM {
		return &response{raw: []byte(pemCert(iss.cert)), contentType: "application/pem-certificate-chain"}
	}
	return &response{data: map[string]any{
		"ca_chain":    []string{pemCert(iss.cert)},
		"certificate": pemCert(iss.cert),
		"issuer_id":   iss.id,
		"issuer_name": iss.name,
	}}
}

func parsePublicKeyPEM(s string) (any, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, fmt.Errorf("no PEM block")
	}
	return x509.ParsePKIXPublicKey(b.Bytes)
}

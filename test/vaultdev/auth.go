package vaultdev

import (
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	glob "github.com/ryanuber/go-glob"
)

type certAuth struct {
	roles map[string]*certRole
}

type certRole struct {
	name           string
	roots          *x509.CertPool
	allowedURISANs []string
	policies       []string
	ttl            time.Duration
}

// writeRole implements auth/cert/certs/NAME: certificate, allowed_uri_sans,
// token_policies (or policies), token_ttl (or ttl).
func (c *certAuth) writeRole(name string, req *request) *response {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(str(req.body, "certificate"))) {
		return errorf(http.StatusBadRequest, "failed to parse certificate")
	}
	ttl, err := firstDuration(req.body, "token_ttl", "ttl")
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	policies := strs(req.body, "token_policies")
	if len(policies) == 0 {
		policies = strs(req.body, "policies")
	}
	c.roles[name] = &certRole{name: name, roots: pool, allowedURISANs: strs(req.body, "allowed_uri_sans"), policies: policies, ttl: ttl}
	return &response{status: http.StatusNoContent}
}

// certLogin implements auth/cert/login: the TLS client certificate must chain
// to a role's certificate and satisfy its constraints.
func (s *Server) certLogin(c *certAuth, req *request) *response {
	if req.r.TLS == nil || len(req.r.TLS.PeerCertificates) == 0 {
		return errorf(http.StatusBadRequest, "no client certificate found")
	}
	leaf := req.r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, cert := range req.r.TLS.PeerCertificates[1:] {
		inter.AddCert(cert)
	}
	roles := c.roles
	if name := str(req.body, "name"); name != "" {
		roles = map[string]*certRole{}
		if r, ok := c.roles[name]; ok {
			roles[name] = r
		}
	}
	var match *certRole
	for _, r := range roles {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots: r.roots, Intermediates: inter, CurrentTime: s.now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err == nil && uriMatches(leaf, r.allowedURISANs) {
			match = r
			break
		}
	}
	if match == nil {
		return errorf(http.StatusBadRequest, "no chain matching all constraints could be found for this login certificate")
	}
	if leaf.Subject.CommonName == "" {
		return errorf(http.StatusBadRequest, "missing name in alias")
	}
	return &response{auth: s.issueToken(match.policies, match.ttl, map[string]string{
		"cert_name":        match.name,
		"common_name":      leaf.Subject.CommonName,
		"serial_number":    leaf.SerialNumber.String(),
		"subject_key_id":   hex.EncodeToString(leaf.SubjectKeyId),
		"authority_key_id": hex.EncodeToString(leaf.AuthorityKeyId),
	})}
}

func uriMatches(leaf *x509.Certificate, patterns []string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, u := range leaf.URIs {
		for _, p := range patterns {
			if glob.Glob(p, u.String()) {
				return true
			}
		}
	}
	return false
}

type jwtAuth struct {
	keys        []any // public keys from jwt_validation_pubkeys
	boundIssuer string
	roles       map[string]*jwtRole
}

type jwtRole struct {
	boundAudiences []string
	boundSubject   string
	userClaim      string
	policies       []string
	ttl            time.Duration
}

func (j *jwtAuth) writeConfig(req *request) *response {
	var keys []any
	for _, p := range strs(req.body, "jwt_validation_pubkeys") {
		k, err := parsePublicKeyPEM(p)
		if err != nil {
			return errorf(http.StatusBadRequest, "error parsing public key: %v", err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return errorf(http.StatusBadRequest, "exactly one of 'jwks_url', 'jwt_validation_pubkeys', or 'oidc_discovery_url' must be set")
	}
	j.keys, j.boundIssuer = keys, str(req.body, "bound_issuer")
	return &response{status: http.StatusNoContent}
}

func (j *jwtAuth) writeRole(name string, req *request) *response {
	if rt := str(req.body, "role_type"); rt != "" && rt != "jwt" {
		return errorf(http.StatusBadRequest, "vaultdev: only role_type=jwt is implemented")
	}
	userClaim := str(req.body, "user_claim")
	if userClaim == "" {
		return errorf(http.StatusBadRequest, "a user claim must be defined on the role")
	}
	ttl, err := firstDuration(req.body, "token_ttl", "ttl")
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	policies := strs(req.body, "token_policies")
	if len(policies) == 0 {
		policies = strs(req.body, "policies")
	}
	j.roles[name] = &jwtRole{
		boundAudiences: strs(req.body, "bound_audiences"),
		boundSubject:   str(req.body, "bound_subject"),
		userClaim:      userClaim,
		policies:       policies,
		ttl:            ttl,
	}
	return &response{status: http.StatusNoContent}
}

// jwtLogin implements auth/jwt/login with role and jwt, validating the
// signature against jwt_validation_pubkeys and the role's bound claims.
func (s *Server) jwtLogin(j *jwtAuth, req *request) *response {
	role, ok := j.roles[str(req.body, "role")]
	if !ok {
		return errorf(http.StatusBadRequest, "role %q could not be found", str(req.body, "role"))
	}
	tok, err := jwt.ParseSigned(str(req.body, "jwt"), []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512})
	if err != nil {
		return errorf(http.StatusBadRequest, "error parsing token: %v", err)
	}
	var claims jwt.Claims
	var raw map[string]any
	verified := false
	for _, k := range j.keys {
		if tok.Claims(k, &claims, &raw) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return errorf(http.StatusBadRequest, "error validating token: no known key successfully validated the token signature")
	}
	expected := jwt.Expected{Issuer: j.boundIssuer, Time: s.now()}
	if err := claims.ValidateWithLeeway(expected, 150*time.Second); err != nil {
		return errorf(http.StatusBadRequest, "error validating claims: %v", err)
	}
	if len(claims.Audience) > 0 && len(role.boundAudiences) == 0 {
		return errorf(http.StatusBadRequest, "error validating claims: audience claim found in JWT but no audiences bound to the role")
	}
	if len(role.boundAudiences) > 0 && !slices.ContainsFunc(role.boundAudiences, claims.Audience.Contains) {
		return errorf(http.StatusBadRequest, "error validating claims: invalid audience (aud) claim: audience claim does not match any expected audience")
	}
	if role.boundSubject != "" && claims.Subject != role.boundSubject {
		return errorf(http.StatusBadRequest, "error validating claims: sub claim does not match bound subject")
	}
	user, _ := raw[role.userClaim].(string)
	if user == "" {
		return errorf(http.StatusBadRequest, "claim %q not found in token", role.userClaim)
	}
	return &response{auth: s.issueToken(role.policies, role.ttl, map[string]string{"role": str(req.body, "role"), "user": user})}
}

func firstDuration(body map[string]any, keys ...string) (time.Duration, error) {
	for _, k := range keys {
		if _, ok := body[k]; ok {
			return duration(body, k)
		}
	}
	return 0, nil
}

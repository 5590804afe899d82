package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/internal/serverfault"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// maxCSRSize bounds a CSR; a P-256 CSR is a few hundred bytes.
const maxCSRSize = 8 << 10

// agentService implements serverv1.AgentServiceServer.
type agentService struct {
	serverv1.UnimplementedAgentServiceServer
	s  *Server
	km KeyManager
	// tlog is the transparency log; nil in tests that do not need it.
	tlog *TransparencyLog
	// stopping is closed when the server begins to stop: long-lived
	// streams end then, so a graceful stop does not wait for them.
	stopping chan struct{}
}

// IssueSigningCertificate certifies the caller's signing key for the
// configured TTL. The certificate's only name is the caller's SPIFFE ID from
// its mTLS peer certificate: a CSR asking for any other name is refused (the
// bug class of SPIRE's CVE-2021-27098), and the issued certificate is checked
// again before it leaves the server.
func (a *agentService) IssueSigningCertificate(ctx context.Context, req *serverv1.IssueSigningCertificateRequest) (*serverv1.IssueSigningCertificateResponse, error) {
	id := caller(ctx)
	csr, err := parseCSR(req.GetCsr(), id)
	if err != nil {
		if errors.Is(err, errForeignName) {
			a.s.metrics.issued.WithLabelValues(resultDenied).Inc()
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		a.s.metrics.issued.WithLabelValues(resultInvalid).Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	start := time.Now()
	chain, err := a.km.SignCSR(ctx, csr, id, a.s.cfg.CertificateTTL)
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	a.s.metrics.keyManagerSign.WithLabelValues(a.s.cfg.KeyManager.Name, outcome).Observe(time.Since(start).Seconds())
	if err != nil {
		a.s.metrics.issued.WithLabelValues(resultError).Inc()
		return nil, keyManagerStatus(a.s.cfg.KeyManager.Name, err)
	}
	if err := checkIssued(chain, csr, id); err != nil {
		a.s.metrics.issued.WithLabelValues(resultError).Inc()
		a.s.log.Error("Key manager issued a certificate that does not match the request; discarded",
			zap.String(logKeyManager, a.s.cfg.KeyManager.Name), zap.String(logSPIFFEID, id.String()), zap.Error(err))
		return nil, status.Error(codes.Internal, "key manager issued a wrong certificate; it was discarded (see server log)")
	}
	// The log must know the CA before the agent can submit anything
	// signed under it.
	if err := a.recordSigningCA(ctx, chain); err != nil {
		a.s.metrics.issued.WithLabelValues(resultError).Inc()
		return nil, serverfault.Errorf(codes.Unavailable, "store", "recording the signing CA: %v", err)
	}

	leaf := chain[0]
	a.s.agents.issued(id.String(), chain, start)
	a.s.metrics.issued.WithLabelValues(resultIssued).Inc()
	a.s.metrics.caExpiry.Set(float64(caNotAfter(chain).Unix()))
	a.s.log.Info("Signing certificate issued",
		zap.String(logSPIFFEID, id.String()),
		zap.String(logSerial, leaf.SerialNumber.Text(16)),
		zap.Time(logNotAfter, leaf.NotAfter),
		zap.String(logIssuer, leaf.Issuer.String()))
	resp := &serverv1.IssueSigningCertificateResponse{ExpiresAt: timestamppb.New(leaf.NotAfter)}
	for _, c := range chain {
		resp.CertificateChain = append(resp.CertificateChain, c.Raw)
	}
	return resp, nil
}

// caNotAfter is the earliest NotAfter of the CA certificates in chain
// (leaf first): when the chain stops certifying anything.
func caNotAfter(chain []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range chain[1:] {
		if t.IsZero() || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

var errForeignName = errors.New("a CSR may name only its caller")

// keyManagerFault is implemented by key manager errors that know whether
// waiting helps and what the operator should do (vault.Error).
type keyManagerFault interface {
	// Transient: the key manager is down or sealed, and will likely
	// answer again by itself.
	Transient() bool
	// Fix says what the operator should do.
	Fix() string
}

// keyManagerStatus is the status of a failed SignCSR: Unavailable (the
// agent retries, trying other replicas first), or FailedPrecondition when
// the key manager knows its fault is not transient (refused by policy,
// misconfigured): retrying elsewhere fixes nothing, though the agent still
// retries with backoff. The message ends with the fix when the key manager
// knows it, so that the agent's status and `hallmark doctor` show it.
func keyManagerStatus(name string, err error) error {
	var f keyManagerFault
	dep := "key manager " + name
	if !errors.As(err, &f) {
		return serverfault.Errorf(codes.Unavailable, dep, "%s: %v", dep, err)
	}
	code := codes.Unavailable
	if !f.Transient() {
		code = codes.FailedPrecondition
	}
	return serverfault.Errorf(code, dep, "%s: %v; fix: %s", dep, err, f.Fix())
}

// parseCSR parses and checks a CSR from caller id: its signature, an ECDSA
// P-256 key (the only key attest.Sign signs with: a certificate for any
// other could sign nothing a verifier accepts), and no name but
// (optionally) id itself.
func parseCSR(der []byte, id spiffeid.ID) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("csr is required")
	}
	if len(der) > maxCSRSize {
		return nil, fmt.Errorf("csr is %d bytes, more than the %d allowed", len(der), maxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	// The key's type first: checking the signature of a key of any other
	// type costs what the caller chose (an RSA modulus of 30,000 bits and
	// a large exponent: 43 ms), to refuse it anyway.
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("csr: key must be ECDSA P-256, the only key agents sign with; got %s", keyName(csr.PublicKey))
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: signature: %w", err)
	}
	if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) > 0 {
		return nil, fmt.Errorf("csr names DNS, email or IP SANs: %w", errForeignName)
	}
	for _, u := range csr.URIs {
		if u.String() != id.String() {
			return nil, fmt.Errorf("csr names %s but the caller is %s: %w", u, id, errForeignName)
		}
	}
	return csr, nil
}

// keyName names a public key's type for an error.
func keyName(pub any) string {
	if k, ok := pub.(*ecdsa.PublicKey); ok && k.Curve != nil {
		return "ECDSA " + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", pub)
}

// checkIssued makes sure a key manager's answer certifies exactly what was
// asked: csr's key, id as the only name, a signing-only leaf, and a chain
// whose each certificate is signed by the next.
func checkIssued(chain []*x509.Certificate, csr *x509.CertificateRequest, id spiffeid.ID) error {
	if len(chain) < 2 {
		return errors.New("no CA certificate in the chain")
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		return fmt.Errorf("leaf names %v, want only %s", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) > 0 {
		return errors.New("leaf carries DNS, email or IP SANs")
	}
	if leaf.IsCA {
		return errors.New("leaf is a CA")
	}
	// Signing only: code signing as its one extended usage, and a digital
	// signature key usage without certificate or CRL signing.
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageCodeSigning || len(leaf.UnknownExtKeyUsage) > 0 {
		return fmt.Errorf("leaf extended key usage must be code signing only (Vault role: code_signing_flag=true, server_flag=false, client_flag=false)")
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return errors.New("leaf key usage must include digital signature and exclude certificate and CRL signing")
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(csr.PublicKey) {
		return errors.New("leaf does not certify the CSR's key")
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return fmt.Errorf("chain[%d] is not signed by chain[%d]: %w", i, i+1, err)
		}
	}
	return nil
}

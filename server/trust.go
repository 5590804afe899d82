package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// TrustedRootMediaType is the media type of the trusted root the server
// exports.
const TrustedRootMediaType = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"

// LogBaseURL is the trusted root's baseUrl for a log origin: "https://"
// followed by the origin. A verifier recovers the origin by removing the
// "https://" prefix (docs/log.md).
func LogBaseURL(origin string) string { return "https://" + origin }

// trustedRoot builds the Sigstore trusted root: every recorded signing CA
// chain, trusted until it expires or, if its issuer is revoked, until the
// revocation time; the log; and the log's timestamp authority.
func trustedRoot(cas []store.SigningCA, states []store.IssuerState, pub ed25519.PublicKey, keyCreated time.Time, origin string, ts *tsa.Signer) (*trustrootpb.TrustedRoot, error) {
	revoked := make(map[fingerprint]time.Time)
	for fp, st := range index(states) {
		if !st.RevokedAt.IsZero() {
			revoked[fp] = st.RevokedAt
		}
	}
	pkix, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("trusted root: log key: %w", err)
	}
	logID, err := tlog.LogID(pub)
	if err != nil {
		return nil, fmt.Errorf("trusted root: log key: %w", err)
	}
	tr := &trustrootpb.TrustedRoot{
		MediaType: TrustedRootMediaType,
		Tlogs: []*trustrootpb.TransparencyLogInstance{{
			BaseUrl:       LogBaseURL(origin),
			HashAlgorithm: protocommon.HashAlgorithm_SHA2_256,
			PublicKey: &protocommon.PublicKey{
				RawBytes:   pkix,
				KeyDetails: protocommon.PublicKeyDetails_PKIX_ED25519,
				ValidFor:   &protocommon.TimeRange{Start: timestamppb.New(keyCreated)},
			},
			LogId: &protocommon.LogId{KeyId: logID},
		}},
	}
	tsaChain := ts.Chain()
	certs := make([]*protocommon.X509Certificate, len(tsaChain))
	for i, c := range tsaChain {
		certs[i] = &protocommon.X509Certificate{RawBytes: c.Raw}
	}
	tr.TimestampAuthorities = []*trustrootpb.CertificateAuthority{{
		Subject:   &protocommon.DistinguishedName{Organization: "Hallmark", CommonName: tsaChain[0].Subject.CommonName},
		Uri:       LogBaseURL(origin),
		CertChain: &protocommon.X509CertificateChain{Certificates: certs},
		ValidFor:  &protocommon.TimeRange{Start: timestamppb.New(tsaChain[0].NotBefore)},
	}}
	for _, ca := range cas {
		chain, err := x509.ParseCertificates(ca.DER)
		if err != nil || len(chain) == 0 {
			return nil, fmt.Errorf("trusted root: stored signing CA %x does not parse: %v", ca.ID, err)
		}
		root := chain[len(chain)-1]
		subject := &protocommon.DistinguishedName{CommonName: root.Subject.CommonName}
		if len(root.Subject.Organization) > 0 {
			subject.Organization = root.Subject.Organization[0]
		}
		certs := make([]*protocommon.X509Certificate, len(chain))
		for i, c := range chain {
			certs[i] = &protocommon.X509Certificate{RawBytes: c.Raw}
		}
		end := ca.NotAfter
		if t, ok := revoked[fingerprintOf(chain[0])]; ok && t.Before(end) {
			end = t // docs/rotation.md: revoked from t on
		}
		tr.CertificateAuthorities = append(tr.CertificateAuthorities, &trustrootpb.CertificateAuthority{
			Subject:   subject,
			CertChain: &protocommon.X509CertificateChain{Certificates: certs},
			ValidFor:  &protocommon.TimeRange{Start: timestamppb.New(ca.NotBefore), End: timestamppb.New(end)},
		})
	}
	return tr, nil
}

// marshalTrustedRoot renders a trusted root as indented JSON.
func marshalTrustedRoot(tr *trustrootpb.TrustedRoot) ([]byte, error) {
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(tr)
	if err != nil {
		return nil, fmt.Errorf("trusted root: %w", err)
	}
	return append(out, '\n'), nil
}

// caBundlePEM is every certificate of every signing CA chain, each once,
// as PEM.
func caBundlePEM(cas []store.SigningCA) ([]byte, error) {
	var buf bytes.Buffer
	seen := make(map[[sha256.Size]byte]bool)
	for _, ca := range cas {
		chain, err := x509.ParseCertificates(ca.DER)
		if err != nil {
			return nil, fmt.Errorf("trust bundle: stored signing CA %x does not parse: %w", ca.ID, err)
		}
		for _, c := range chain {
			sum := sha256.Sum256(c.Raw)
			if seen[sum] {
				continue
			}
			seen[sum] = true
			if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
				return nil, err
			}
		}
	}
	return buf.Bytes(), nil
}

// TrustedRootJSON is the trusted root as served and exported.
func (l *TransparencyLog) TrustedRootJSON(ctx context.Context) ([]byte, error) {
	cas, err := l.store.SigningCAs(ctx)
	if err != nil {
		return nil, err
	}
	states, err := l.store.IssuerStates(ctx)
	if err != nil {
		return nil, err
	}
	tr, err := trustedRoot(cas, states, l.pub, l.created, l.origin, l.tsa)
	if err != nil {
		return nil, err
	}
	return marshalTrustedRoot(tr)
}

// ExportTrustedRoot reads the store and the log key named by cfg, without
// a running server and without creating or changing anything, and returns
// the trusted root JSON (what GET /trust/trusted_root.json serves).
func ExportTrustedRoot(ctx context.Context, cfg Config) ([]byte, error) {
	cfg.setLogDefaults()
	key, err := loadLogKey(logKeyPath(cfg.DataDir), false, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	st, err := cfg.Store.open(ctx, storeOptions{mustExist: true})
	if err != nil {
		return nil, fmt.Errorf("trust export: store %s: %w", cfg.Store.Name, err)
	}
	defer st.Close()
	ts, err := loadTSA(tsaKeyPath(cfg.DataDir), cfg.LogOrigin, false, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	cp, err := st.LatestCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	if _, err := tlog.OpenCheckpoint(cp.Note, cfg.LogOrigin, key.public()); err != nil {
		return nil, fmt.Errorf("trust export: the store's latest checkpoint does not verify with the log key and origin %q: %w", cfg.LogOrigin, err)
	}
	cas, err := st.SigningCAs(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	states, err := st.IssuerStates(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust export: %w", err)
	}
	tr, err := trustedRoot(cas, states, key.public(), key.created, cfg.LogOrigin, ts)
	if err != nil {
		return nil, err
	}
	return marshalTrustedRoot(tr)
}

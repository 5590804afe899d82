package verify

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/tsa"
)

// Media types of a trusted root this package reads: the protobuf-specs
// spellings of v0.1 and v0.2.
var trustedRootMediaTypes = []string{
	"application/vnd.dev.sigstore.trustedroot+json;version=0.1",
	"application/vnd.dev.sigstore.trustedroot.v0.1+json",
	"application/vnd.dev.sigstore.trustedroot.v0.2+json",
}

// maxTrustedRootSize bounds the trusted root file ParseTrustedRoot accepts.
const maxTrustedRootSize = 16 << 20

// TrustedRoot is the verifier's trust material, parsed and checked once and
// safe for concurrent use: the certificate authorities that may have issued
// agents' signing certificates, each with the time range it was trusted
// for, the transparency logs whose checkpoints are accepted, and the
// timestamp authorities whose RFC 3161 timestamps say when a signature
// existed.
type TrustedRoot struct {
	cas  []*certificateAuthority
	logs map[string]*transparencyLog // by string(log ID)
	tsas []*timestampAuthority

	// chains caches verified signing-certificate chains (verifyChain).
	chains     sync.Map // [sha256.Size]byte -> *verifiedChain
	chainCount atomic.Int64
}

// timestampAuthority is one timestampAuthorities[] entry: its chain's
// first certificate signs timestamps, the last is the trust anchor.
type timestampAuthority struct {
	leaf      *x509.Certificate
	authority *tsa.Authority // the chain, checked once
	validFor  timeRange
}

// certificateAuthority is one trusted root's certificateAuthorities[]
// entry: the last certificate of its chain is the trust anchor, the others
// are intermediates.
type certificateAuthority struct {
	roots         *x509.CertPool
	intermediates *x509.CertPool
	anchor        *x509.Certificate
	validFor      timeRange
}

// transparencyLog is one tlogs[] entry with an Ed25519 key.
type transparencyLog struct {
	id       []byte
	key      ed25519.PublicKey
	origin   string
	validFor timeRange
}

// timeRange is a protobuf-specs TimeRange, inclusive of both ends; a zero
// end is open.
type timeRange struct{ start, end time.Time }

func (r timeRange) contains(t time.Time) bool {
	return !t.Before(r.start) && (r.end.IsZero() || !t.After(r.end))
}

func (r timeRange) String() string {
	end := "open"
	if !r.end.IsZero() {
		end = r.end.UTC().Format(time.RFC3339)
	}
	return r.start.UTC().Format(time.RFC3339) + " .. " + end
}

// ParseTrustedRoot decodes a protobuf-specs trustroot/v1 TrustedRoot in its
// JSON form (as the Hallmark server exports it) and checks it with
// [NewTrustedRoot]. Unknown fields are refused.
func ParseTrustedRoot(data []byte) (*TrustedRoot, error) {
	if len(data) > maxTrustedRootSize {
		return nil, fmt.Errorf("verify: trusted root is %d bytes, limit is %d", len(data), maxTrustedRootSize)
	}
	var pb trustrootpb.TrustedRoot
	if err := protojson.Unmarshal(data, &pb); err != nil {
		return nil, fmt.Errorf("verify: decode trusted root: %w", err)
	}
	return NewTrustedRoot(&pb)
}

// NewTrustedRoot checks a TrustedRoot message and prepares it for
// verification. It needs at least one certificate authority (every
// certificate parses, validFor has a start), at least one transparency
// log with an Ed25519 key (PKIX_ED25519), a baseUrl and, if given, a logId
// equal to the key's ID, and at least one timestamp authority. Logs with
// other key types cannot have signed a Hallmark checkpoint and are
// skipped; so are ctlogs, which Hallmark bundles do not use.
func NewTrustedRoot(pb *trustrootpb.TrustedRoot) (*TrustedRoot, error) {
	if pb == nil {
		return nil, errors.New("verify: nil trusted root")
	}
	mt := pb.GetMediaType()
	known := false
	for _, m := range trustedRootMediaTypes {
		known = known || mt == m
	}
	if !known {
		return nil, fmt.Errorf("verify: trusted root media type is %q, want one of %s", mt, strings.Join(trustedRootMediaTypes, ", "))
	}

	tr := &TrustedRoot{logs: map[string]*transparencyLog{}}
	for i, ca := range pb.GetCertificateAuthorities() {
		c, err := newCertificateAuthority(ca)
		if err != nil {
			return nil, fmt.Errorf("verify: trusted root certificateAuthorities[%d]: %w", i, err)
		}
		tr.cas = append(tr.cas, c)
	}
	if len(tr.cas) == 0 {
		return nil, errors.New("verify: trusted root has no certificate authority")
	}

	for i, tl := range pb.GetTlogs() {
		l, err := newTransparencyLog(tl)
		if err != nil {
			return nil, fmt.Errorf("verify: trusted root tlogs[%d]: %w", i, err)
		}
		if l == nil {
			continue // not an Ed25519 log
		}
		if _, dup := tr.logs[string(l.id)]; dup {
			return nil, fmt.Errorf("verify: trusted root tlogs[%d]: duplicate log ID %x", i, l.id)
		}
		tr.logs[string(l.id)] = l
	}
	if len(tr.logs) == 0 {
		return nil, errors.New("verify: trusted root has no transparency log with an Ed25519 key")
	}

	for i, ta := range pb.GetTimestampAuthorities() {
		a, err := newTimestampAuthority(ta)
		if err != nil {
			return nil, fmt.Errorf("verify: trusted root timestampAuthorities[%d]: %w", i, err)
		}
		tr.tsas = append(tr.tsas, a)
	}
	if len(tr.tsas) == 0 {
		return nil, errors.New("verify: trusted root has no timestamp authority")
	}
	return tr, nil
}

func newTimestampAuthority(pb *trustrootpb.CertificateAuthority) (*timestampAuthority, error) {
	raws := pb.GetCertChain().GetCertificates()
	if len(raws) < 2 {
		return nil, fmt.Errorf("certChain has %d certificates, want the timestamping leaf and its root", len(raws))
	}
	ta := &timestampAuthority{}
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	for i, raw := range raws {
		cert, err := x509.ParseCertificate(raw.GetRawBytes())
		if err != nil {
			return nil, fmt.Errorf("certChain[%d]: %w", i, err)
		}
		switch {
		case i == 0:
			ta.leaf = cert
		case i == len(raws)-1:
			roots.AddCert(cert)
		default:
			intermediates.AddCert(cert)
		}
	}
	// RFC 3161 section 2.3 and RFC 5280 section 6, once: the leaf is for
	// timestamping and chains to the anchor; each timestamp is then
	// checked against the chain's validity window.
	a, err := tsa.NewAuthority(ta.leaf, roots, intermediates)
	if err != nil {
		return nil, err
	}
	ta.authority = a
	vf, err := newTimeRange(pb.GetValidFor())
	if err != nil {
		return nil, err
	}
	ta.validFor = vf
	return ta, nil
}

func newCertificateAuthority(pb *trustrootpb.CertificateAuthority) (*certificateAuthority, error) {
	raws := pb.GetCertChain().GetCertificates()
	if len(raws) == 0 {
		return nil, errors.New("empty certChain")
	}
	ca := &certificateAuthority{roots: x509.NewCertPool(), intermediates: x509.NewCertPool()}
	for i, raw := range raws {
		cert, err := x509.ParseCertificate(raw.GetRawBytes())
		if err != nil {
			return nil, fmt.Errorf("certChain[%d]: %w", i, err)
		}
		if !cert.IsCA {
			return nil, fmt.Errorf("certChain[%d] (%s) is not a CA certificate", i, cert.Subject)
		}
		// protobuf-specs: "The last certificate in the chain MUST be the
		// trust anchor."
		if i == len(raws)-1 {
			ca.anchor = cert
			ca.roots.AddCert(cert)
		} else {
			ca.intermediates.AddCert(cert)
		}
	}
	vf, err := newTimeRange(pb.GetValidFor())
	if err != nil {
		return nil, err
	}
	ca.validFor = vf
	return ca, nil
}

// newTransparencyLog returns nil, nil for a log whose key is not Ed25519.
func newTransparencyLog(pb *trustrootpb.TransparencyLogInstance) (*transparencyLog, error) {
	pk := pb.GetPublicKey()
	if pk.GetKeyDetails() != protocommon.PublicKeyDetails_PKIX_ED25519 {
		return nil, nil
	}
	switch pb.GetHashAlgorithm() {
	case protocommon.HashAlgorithm_HASH_ALGORITHM_UNSPECIFIED, protocommon.HashAlgorithm_SHA2_256:
	default:
		return nil, fmt.Errorf("hash algorithm %s, want SHA2_256", pb.GetHashAlgorithm())
	}
	parsed, err := x509.ParsePKIXPublicKey(pk.GetRawBytes())
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	key, ok := parsed.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key is %T, keyDetails says PKIX_ED25519", parsed)
	}
	id, err := tlog.LogID(key)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if given := pb.GetLogId().GetKeyId(); len(given) > 0 && !bytes.Equal(given, id) {
		return nil, fmt.Errorf("logId %x is not the ID of its public key (%x)", given, id)
	}
	origin, err := CheckpointOrigin(pb.GetBaseUrl())
	if err != nil {
		return nil, err
	}
	l := &transparencyLog{id: id, key: key, origin: origin}
	if vf := pk.GetValidFor(); vf != nil {
		if l.validFor, err = newTimeRange(vf); err != nil {
			return nil, fmt.Errorf("public key %w", err)
		}
	}
	return l, nil
}

func newTimeRange(pb *protocommon.TimeRange) (timeRange, error) {
	if pb.GetStart() == nil {
		return timeRange{}, errors.New("validFor has no start")
	}
	if err := pb.GetStart().CheckValid(); err != nil {
		return timeRange{}, fmt.Errorf("validFor start: %w", err)
	}
	r := timeRange{start: pb.GetStart().AsTime()}
	if end := pb.GetEnd(); end != nil {
		if err := end.CheckValid(); err != nil {
			return timeRange{}, fmt.Errorf("validFor end: %w", err)
		}
		r.end = end.AsTime()
		if r.end.Before(r.start) {
			return timeRange{}, errors.New("validFor ends before it starts")
		}
	}
	return r, nil
}

// CheckpointOrigin is the origin line (and signed-note key name) of the
// checkpoints of the log whose trusted-root baseUrl is baseURL: the URL's
// host name, as sigstore-go reads a Rekor v2 log's baseUrl
// (pkg/verify/tlog.go), so "https://hallmark.example.org" has origin
// "hallmark.example.org". This is the only place the rule lives; the
// server derives baseUrl from its origin the other way round.
func CheckpointOrigin(baseURL string) (string, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return "", fmt.Errorf("baseUrl %q: %w", baseURL, err)
	}
	if !isScheme(u.Scheme) || u.Hostname() == "" {
		return "", fmt.Errorf("baseUrl %q is not an absolute URL naming the log's host", baseURL)
	}
	return u.Hostname(), nil
}

// isScheme reports whether s is a URI scheme (RFC 3986 section 3.1).
func isScheme(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest/tlog"
)

// MediaType is the media type of the trusted roots Hallmark writes: v0.1,
// in the spelling sigstore-go requires. (v0.1 has no checkpointKeyId: the
// log ID carries the checkpoint key ID, as rekor-tiles CLIENTS.md says a
// Rekor v2 log's does.)
const MediaType = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"

// Media types of a trusted root ParseTrustedRoot reads: the
// protobuf-specs spellings of v0.1 and v0.2.
var mediaTypes = []string{
	MediaType,
	"application/vnd.dev.sigstore.trustedroot.v0.1+json",
	"application/vnd.dev.sigstore.trustedroot.v0.2+json",
}

// MaxTrustedRootSize bounds the trusted root ParseTrustedRoot accepts.
const MaxTrustedRootSize = 16 << 20

// caOrganization is the subject organization written for a certificate
// authority whose anchor names none.
const caOrganization = ""

// TrustedRoot renders s as a protobuf-specs trustroot/v1 TrustedRoot:
// tlogs with the log ID (tlog.KeyID) as logId, certificate authorities
// and timestamp authorities with their chains and validFor.
func (s State) TrustedRoot() *trustrootpb.TrustedRoot {
	tr := &trustrootpb.TrustedRoot{MediaType: MediaType}
	for _, l := range s.Logs {
		pkix, err := x509.MarshalPKIXPublicKey(l.Key)
		if err != nil { // cannot happen: an Ed25519 key always marshals
			panic(fmt.Sprintf("trust: log key: %v", err))
		}
		tr.Tlogs = append(tr.Tlogs, &trustrootpb.TransparencyLogInstance{
			BaseUrl:       l.BaseURL(),
			HashAlgorithm: protocommon.HashAlgorithm_SHA2_256,
			PublicKey: &protocommon.PublicKey{
				RawBytes:   pkix,
				KeyDetails: protocommon.PublicKeyDetails_PKIX_ED25519,
				ValidFor:   timeRange(l.ValidFor),
			},
			LogId: &protocommon.LogId{KeyId: l.ID()},
		})
	}
	for _, ca := range s.CAs {
		anchor := ca.Anchor()
		tr.CertificateAuthorities = append(tr.CertificateAuthorities, &trustrootpb.CertificateAuthority{
			Subject:   subject(anchor),
			CertChain: certChain(ca.Chain),
			ValidFor:  timeRange(ca.ValidFor),
		})
	}
	for _, ta := range s.TSAs {
		tr.TimestampAuthorities = append(tr.TimestampAuthorities, &trustrootpb.CertificateAuthority{
			Subject:   subject(ta.Chain[0]),
			Uri:       ta.URI,
			CertChain: certChain(ta.Chain),
			ValidFor:  timeRange(ta.ValidFor),
		})
	}
	return tr
}

func subject(c *x509.Certificate) *protocommon.DistinguishedName {
	dn := &protocommon.DistinguishedName{CommonName: c.Subject.CommonName, Organization: caOrganization}
	if len(c.Subject.Organization) > 0 {
		dn.Organization = c.Subject.Organization[0]
	}
	return dn
}

func certChain(chain []*x509.Certificate) *protocommon.X509CertificateChain {
	certs := make([]*protocommon.X509Certificate, len(chain))
	for i, c := range chain {
		certs[i] = &protocommon.X509Certificate{RawBytes: c.Raw}
	}
	return &protocommon.X509CertificateChain{Certificates: certs}
}

func timeRange(r Range) *protocommon.TimeRange {
	out := &protocommon.TimeRange{Start: timestamppb.New(r.Start)}
	if !r.End.IsZero() {
		out.End = timestamppb.New(r.End)
	}
	return out
}

// MarshalJSON renders s as trusted-root JSON, indented: protojson's
// encoding, with the members proto3 JSON may leave out when empty written
// anyway where strict parsers (sigstore-python's models) require them:
// ctlogs (Hallmark certificates carry no SCT, so the list is empty) and
// every subject's organization.
func (s State) MarshalJSON() ([]byte, error) {
	out, err := protojson.Marshal(s.TrustedRoot())
	if err != nil {
		return nil, fmt.Errorf("trust: trusted root: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("trust: trusted root: %w", err)
	}
	if _, ok := doc["ctlogs"]; !ok {
		doc["ctlogs"] = json.RawMessage("[]")
	}
	for _, key := range []string{"certificateAuthorities", "timestampAuthorities"} {
		if doc[key], err = withOrganization(doc[key]); err != nil {
			return nil, fmt.Errorf("trust: trusted root %s: %w", key, err)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("trust: trusted root: %w", err)
	}
	return buf.Bytes(), nil
}

// withOrganization adds "organization": "" to every subject of a list of
// certificate authorities that lacks one.
func withOrganization(list json.RawMessage) (json.RawMessage, error) {
	if list == nil {
		return json.RawMessage("[]"), nil
	}
	var cas []map[string]json.RawMessage
	if err := json.Unmarshal(list, &cas); err != nil {
		return nil, err
	}
	for _, ca := range cas {
		var subj map[string]json.RawMessage
		if raw, ok := ca["subject"]; ok {
			if err := json.Unmarshal(raw, &subj); err != nil {
				return nil, err
			}
		} else {
			subj = map[string]json.RawMessage{}
		}
		for _, key := range []string{"organization", "commonName"} {
			if _, ok := subj[key]; !ok {
				subj[key] = json.RawMessage(`""`)
			}
		}
		raw, err := json.Marshal(subj)
		if err != nil {
			return nil, err
		}
		ca["subject"] = raw
	}
	return json.Marshal(cas)
}

// ParseTrustedRoot decodes a protobuf-specs trustroot/v1 TrustedRoot in
// its JSON form and reads it with FromTrustedRoot. Unknown fields are
// refused.
func ParseTrustedRoot(data []byte) (State, error) {
	if len(data) > MaxTrustedRootSize {
		return State{}, fmt.Errorf("trust: trusted root is %d bytes, limit is %d", len(data), MaxTrustedRootSize)
	}
	var pb trustrootpb.TrustedRoot
	if err := protojson.Unmarshal(data, &pb); err != nil {
		return State{}, fmt.Errorf("trust: decode trusted root: %w", err)
	}
	return FromTrustedRoot(&pb)
}

// FromTrustedRoot reads a TrustedRoot message into a State, checking it:
// a known media type; certificate authorities whose certificates parse
// and are CA certificates, with a validFor start; timestamp authorities
// with a timestamping certificate and its root, with a validFor start;
// transparency logs with an Ed25519 key (PKIX_ED25519), a SHA-256 tree,
// a baseUrl naming the checkpoint origin, and a logId that is the log's ID
// (tlog.KeyID) or, as trusted roots written before it say, the SHA-256 of
// the key's PKIX DER (tlog.LegacyLogID), and where given a checkpointKeyId
// that is the log ID or its first four bytes. Logs with other key types
// cannot have signed a Hallmark checkpoint and are skipped; so are ctlogs,
// which Hallmark bundles do not use. A State without a certificate
// authority, a timestamp authority or a log is returned with no error:
// what a verifier needs is its own business.
func FromTrustedRoot(pb *trustrootpb.TrustedRoot) (State, error) {
	if pb == nil {
		return State{}, errors.New("trust: nil trusted root")
	}
	known := false
	for _, m := range mediaTypes {
		known = known || pb.GetMediaType() == m
	}
	if !known {
		return State{}, fmt.Errorf("trust: trusted root media type is %q, want one of %s", pb.GetMediaType(), strings.Join(mediaTypes, ", "))
	}
	var s State
	for i, ca := range pb.GetCertificateAuthorities() {
		c, err := readCA(ca)
		if err != nil {
			return State{}, fmt.Errorf("trust: trusted root certificateAuthorities[%d]: %w", i, err)
		}
		s.CAs = append(s.CAs, c)
	}
	for i, ta := range pb.GetTimestampAuthorities() {
		a, err := readTSA(ta)
		if err != nil {
			return State{}, fmt.Errorf("trust: trusted root timestampAuthorities[%d]: %w", i, err)
		}
		s.TSAs = append(s.TSAs, a)
	}
	for i, tl := range pb.GetTlogs() {
		l, ok, err := readLog(tl)
		if err != nil {
			return State{}, fmt.Errorf("trust: trusted root tlogs[%d]: %w", i, err)
		}
		if ok {
			s.Logs = append(s.Logs, l)
		}
	}
	return s, nil
}

func parseChain(pb *protocommon.X509CertificateChain) ([]*x509.Certificate, error) {
	raws := pb.GetCertificates()
	chain := make([]*x509.Certificate, len(raws))
	for i, raw := range raws {
		c, err := x509.ParseCertificate(raw.GetRawBytes())
		if err != nil {
			return nil, fmt.Errorf("certChain[%d]: %w", i, err)
		}
		chain[i] = c
	}
	return chain, nil
}

func readCA(pb *trustrootpb.CertificateAuthority) (CA, error) {
	chain, err := parseChain(pb.GetCertChain())
	if err != nil {
		return CA{}, err
	}
	if len(chain) == 0 {
		return CA{}, errors.New("empty certChain")
	}
	for i, c := range chain {
		if !c.IsCA {
			return CA{}, fmt.Errorf("certChain[%d] (%s) is not a CA certificate", i, c.Subject)
		}
	}
	r, err := readRange(pb.GetValidFor())
	if err != nil {
		return CA{}, err
	}
	return CA{Chain: chain, ValidFor: r}, nil
}

func readTSA(pb *trustrootpb.CertificateAuthority) (TSA, error) {
	chain, err := parseChain(pb.GetCertChain())
	if err != nil {
		return TSA{}, err
	}
	if len(chain) < 2 {
		return TSA{}, fmt.Errorf("certChain has %d certificates, want the timestamping leaf and its root", len(chain))
	}
	r, err := readRange(pb.GetValidFor())
	if err != nil {
		return TSA{}, err
	}
	return TSA{Chain: chain, URI: pb.GetUri(), ValidFor: r}, nil
}

// readLog returns ok false for a log whose key is not Ed25519.
func readLog(pb *trustrootpb.TransparencyLogInstance) (Log, bool, error) {
	pk := pb.GetPublicKey()
	if pk.GetKeyDetails() != protocommon.PublicKeyDetails_PKIX_ED25519 {
		return Log{}, false, nil
	}
	switch pb.GetHashAlgorithm() {
	case protocommon.HashAlgorithm_HASH_ALGORITHM_UNSPECIFIED, protocommon.HashAlgorithm_SHA2_256:
	default:
		return Log{}, false, fmt.Errorf("hash algorithm %s, want SHA2_256", pb.GetHashAlgorithm())
	}
	parsed, err := x509.ParsePKIXPublicKey(pk.GetRawBytes())
	if err != nil {
		return Log{}, false, fmt.Errorf("public key: %w", err)
	}
	key, ok := parsed.(ed25519.PublicKey)
	if !ok {
		return Log{}, false, fmt.Errorf("public key is %T, keyDetails says PKIX_ED25519", parsed)
	}
	origin, err := CheckpointOrigin(pb.GetBaseUrl())
	if err != nil {
		return Log{}, false, err
	}
	l := Log{Origin: origin, Key: key}
	id := l.ID()
	legacy, err := tlog.LegacyLogID(key)
	if err != nil {
		return Log{}, false, fmt.Errorf("public key: %w", err)
	}
	if given := pb.GetLogId().GetKeyId(); len(given) > 0 && !bytes.Equal(given, id) && !bytes.Equal(given, legacy) {
		return Log{}, false, fmt.Errorf("logId %x is not the ID of the log's key under origin %q (%x)", given, origin, id)
	}
	if given := pb.GetCheckpointKeyId().GetKeyId(); len(given) > 0 && !bytes.Equal(given, id) && !bytes.Equal(given, id[:4]) {
		return Log{}, false, fmt.Errorf("checkpointKeyId %x is not the checkpoint key ID of the log's key under origin %q (%x)", given, origin, id[:4])
	}
	if vf := pk.GetValidFor(); vf != nil {
		if l.ValidFor, err = readRange(vf); err != nil {
			return Log{}, false, fmt.Errorf("public key %w", err)
		}
	}
	return l, true, nil
}

func readRange(pb *protocommon.TimeRange) (Range, error) {
	if pb.GetStart() == nil {
		return Range{}, errors.New("validFor has no start")
	}
	if err := pb.GetStart().CheckValid(); err != nil {
		return Range{}, fmt.Errorf("validFor start: %w", err)
	}
	r := Range{Start: pb.GetStart().AsTime()}
	if end := pb.GetEnd(); end != nil {
		if err := end.CheckValid(); err != nil {
			return Range{}, fmt.Errorf("validFor end: %w", err)
		}
		r.End = end.AsTime()
		// An end before the start is a range that contains no time
		// (SigningCA writes one for a CA revoked from its first instant).
	}
	return r, nil
}

// CheckpointOrigin is the origin line (and signed-note key name) of the
// checkpoints of the log whose trusted-root baseUrl is baseURL: the URL's
// host name, as sigstore-go reads a Rekor v2 log's baseUrl
// (pkg/verify/tlog.go), so "https://hallmark.example.org" has origin
// "hallmark.example.org". Log.BaseURL is the other way round.
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

// Package verifytest is an in-memory Hallmark for tests and benchmarks of
// package verify, in the spirit of sigstore-go's VirtualSigstore: signing
// certificate authorities, agents holding short-lived leaf certificates,
// and an RFC 6962 transparency log with an Ed25519 checkpoint key. It
// issues real bundles, shaped as the agent and server shape them, and the
// trusted root that verifies them.
//
// Keys live in memory and nothing is persisted: it is for tests only.
package verifytest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"net/url"
	"sync"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/attest/verify"
)

// Defaults of New.
const (
	LogBaseURL = "https://hallmark.example"
	AgentID    = "spiffe://example.org/hallmark/agent/node-1"
)

// CA is a signing certificate authority and the window the trusted root
// trusts it for.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Chain is what the trusted root lists for this CA: Cert, then its
	// issuers, the trust anchor last.
	Chain []*x509.Certificate
	// ValidFrom and ValidUntil are the trusted root's validFor; a zero
	// ValidUntil is open-ended.
	ValidFrom, ValidUntil time.Time
}

var serial struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serial.Lock()
	defer serial.Unlock()
	serial.n++
	return big.NewInt(serial.n)
}

// NewCA returns a self-signed root CA whose certificate is valid from
// notBefore to notAfter and whose trust window is the same.
func NewCA(name string, notBefore, notAfter time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := caTemplate(name, notBefore, notAfter)
	cert, err := createCertificate(tmpl, tmpl, key, key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, Chain: []*x509.Certificate{cert}, ValidFrom: notBefore, ValidUntil: notAfter}, nil
}

// NewIntermediate returns a CA certified by ca, with ca's trust window.
func (ca *CA) NewIntermediate(name string, notBefore, notAfter time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := createCertificate(caTemplate(name, notBefore, notAfter), ca.Cert, key, ca.Key)
	if err != nil {
		return nil, err
	}
	chain := append([]*x509.Certificate{cert}, ca.Chain...)
	return &CA{Cert: cert, Key: key, Chain: chain, ValidFrom: ca.ValidFrom, ValidUntil: ca.ValidUntil}, nil
}

func caTemplate(name string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"hallmark test"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// Agent is an agent's signing key and its leaf certificate.
type Agent struct {
	ID   string
	Key  *ecdsa.PrivateKey
	Cert *x509.Certificate
}

// NewAgent certifies a fresh P-256 key for the agent with SPIFFE ID id,
// as the server's key manager does: code-signing EKU, the ID as the only
// URI SAN, valid from notBefore to notAfter.
func (ca *CA) NewAgent(id string, notBefore, notAfter time.Time) (*Agent, error) {
	uri, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	return ca.NewAgentFromTemplate(id, &x509.Certificate{
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		URIs:        []*url.URL{uri},
	})
}

// NewAgentFromTemplate is NewAgent with the leaf certificate's template
// given, for certificates the server would not issue.
func (ca *CA) NewAgentFromTemplate(id string, tmpl *x509.Certificate) (*Agent, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = nextSerial()
	cert, err := createCertificate(tmpl, ca.Cert, key, ca.Key)
	if err != nil {
		return nil, err
	}
	return &Agent{ID: id, Key: key, Cert: cert}, nil
}

func createCertificate(tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Log is an in-memory RFC 6962 log with C2SP signed checkpoints, as the
// server's log is. It is safe for concurrent use.
type Log struct {
	BaseURL string
	Origin  string
	Key     ed25519.PrivateKey
	// ValidFrom, if not zero, is the start of the log key's validFor in
	// the trusted root.
	ValidFrom time.Time

	mu     sync.Mutex
	bodies [][]byte
	levels [][][]byte // levels[k][i]: hash of the perfect subtree of 2^k leaves at i*2^k
}

// NewLog returns an empty log with a fresh Ed25519 key, whose checkpoint
// origin is trust.CheckpointOrigin(baseURL).
func NewLog(baseURL string) (*Log, error) {
	origin, err := trust.CheckpointOrigin(baseURL)
	if err != nil {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Log{BaseURL: baseURL, Origin: origin, Key: priv}, nil
}

// PublicKey is the log's checkpoint key.
func (l *Log) PublicKey() ed25519.PublicKey { return l.Key.Public().(ed25519.PublicKey) }

// ID is the log's ID (tlog.KeyID of its origin and key).
func (l *Log) ID() []byte { return tlog.KeyID(l.Origin, l.PublicKey()) }

// LegacyID is the log's ID as bundles written before hashedrekord name
// it (tlog.LegacyLogID).
func (l *Log) LegacyID() []byte {
	id, err := tlog.LegacyLogID(l.PublicKey())
	if err != nil {
		panic(err) // an Ed25519 key always marshals
	}
	return id
}

// Append adds an entry body and returns its index.
func (l *Log) Append(body []byte) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	idx := uint64(len(l.bodies))
	l.bodies = append(l.bodies, body)
	h := tlog.LeafHash(body)
	for k := 0; ; k++ {
		if k == len(l.levels) {
			l.levels = append(l.levels, nil)
		}
		l.levels[k] = append(l.levels[k], h)
		n := len(l.levels[k])
		if n%2 == 1 {
			return idx
		}
		h = tlog.Hasher.HashChildren(l.levels[k][n-2], l.levels[k][n-1])
	}
}

// Size is the number of entries.
func (l *Log) Size() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return uint64(len(l.bodies))
}

// Entry returns the bundle's view of entry index: its body, kind and an
// inclusion proof in the tree of the given size, with that tree's
// checkpoint signed by the log.
func (l *Log) Entry(index, size uint64) (*rekorpb.TransparencyLogEntry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if size > uint64(len(l.bodies)) || index >= size {
		return nil, fmt.Errorf("verifytest: no entry %d in a tree of size %d (log size %d)", index, size, len(l.bodies))
	}
	body := l.bodies[index]
	parsed, err := tlog.ParseBody(body)
	if err != nil {
		return nil, err
	}
	id := l.ID()
	if parsed.Legacy() {
		id = l.LegacyID() // as such bundles were written
	}
	root := l.hash(0, size)
	signed, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: l.Origin, Size: size, Root: root}, l.Key)
	if err != nil {
		return nil, err
	}
	return &rekorpb.TransparencyLogEntry{
		LogIndex:    int64(index),
		LogId:       &protocommon.LogId{KeyId: id},
		KindVersion: &rekorpb.KindVersion{Kind: parsed.Kind, Version: parsed.APIVersion},
		InclusionProof: &rekorpb.InclusionProof{
			LogIndex:   int64(index),
			RootHash:   root,
			TreeSize:   int64(size),
			Hashes:     l.path(index, 0, size),
			Checkpoint: &rekorpb.Checkpoint{Envelope: string(signed)},
		},
		CanonicalizedBody: body,
	}, nil
}

// hash is the RFC 6962 Merkle tree hash of leaves [begin, end), begin
// being a multiple of the largest power of two below end-begin (as every
// subtree of the RFC 6962 decomposition is).
func (l *Log) hash(begin, end uint64) []byte {
	n := end - begin
	if n&(n-1) == 0 && begin%n == 0 {
		return l.levels[bits.TrailingZeros64(n)][begin/n]
	}
	k := splitPoint(n)
	return tlog.Hasher.HashChildren(l.hash(begin, begin+k), l.hash(begin+k, end))
}

// path is RFC 6962 section 2.1.1 PATH(m, D[begin:end]), leaf to root.
func (l *Log) path(m, begin, end uint64) [][]byte {
	n := end - begin
	if n == 1 {
		return [][]byte{}
	}
	k := splitPoint(n)
	if m-begin < k {
		return append(l.path(m, begin, begin+k), l.hash(begin+k, end))
	}
	return append(l.path(m, begin+k, end), l.hash(begin, begin+k))
}

// splitPoint is the largest power of two smaller than n (n > 1).
func splitPoint(n uint64) uint64 { return 1 << (bits.Len64(n-1) - 1) }

// TSA is a timestamp authority and the window the trusted root trusts it
// for.
type TSA struct {
	Signer *tsa.Signer
	// ValidFrom and ValidUntil are the trusted root's validFor; a zero
	// ValidUntil is open-ended.
	ValidFrom, ValidUntil time.Time
}

// NewTSA returns a timestamp authority whose certificates are valid from
// notBefore (for ten years) and trusted from then on.
func NewTSA(name string, notBefore time.Time) (*TSA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	chain, err := tsa.NewChain(key, name, notBefore)
	if err != nil {
		return nil, err
	}
	s, err := tsa.NewSigner(key, chain)
	if err != nil {
		return nil, err
	}
	return &TSA{Signer: s, ValidFrom: notBefore}, nil
}

// Hallmark is one deployment: certificate authorities, a log and a
// timestamp authority (the server is both).
type Hallmark struct {
	CAs []*CA
	Log *Log
	TSA *TSA
	// Legacy makes Attest log legacy dsse entries named by the legacy
	// log ID, as Hallmark logs did before hashedrekord.
	Legacy bool
}

// New returns a deployment with one root CA trusted from a day before now
// to a day after, one log at LogBaseURL and one timestamp authority.
func New(now time.Time) (*Hallmark, error) {
	ca, err := NewCA("hallmark test signing CA", now.Add(-24*time.Hour), now.Add(24*time.Hour))
	if err != nil {
		return nil, err
	}
	log, err := NewLog(LogBaseURL)
	if err != nil {
		return nil, err
	}
	log.ValidFrom = now.Add(-48 * time.Hour)
	ts, err := NewTSA("hallmark test timestamp authority", now.Add(-48*time.Hour))
	if err != nil {
		return nil, err
	}
	return &Hallmark{CAs: []*CA{ca}, Log: log, TSA: ts}, nil
}

// State is the deployment's trust state.
func (h *Hallmark) State() trust.State {
	var st trust.State
	for _, ca := range h.CAs {
		st.CAs = append(st.CAs, trust.CA{Chain: ca.Chain, ValidFor: trust.Range{Start: ca.ValidFrom, End: ca.ValidUntil}})
	}
	st.Logs = []trust.Log{{Origin: h.Log.Origin, Key: h.Log.PublicKey(), ValidFor: trust.Range{Start: h.Log.ValidFrom}}}
	if h.TSA != nil {
		st.TSAs = []trust.TSA{{Chain: h.TSA.Signer.Chain(), URI: h.Log.BaseURL, ValidFor: trust.Range{Start: h.TSA.ValidFrom, End: h.TSA.ValidUntil}}}
	}
	return st
}

// TrustedRoot is the deployment's trusted root, as the server exports it
// (a log key without ValidFrom has no validFor).
func (h *Hallmark) TrustedRoot() (*trustrootpb.TrustedRoot, error) {
	tr := h.State().TrustedRoot()
	if h.Log.ValidFrom.IsZero() {
		tr.Tlogs[0].PublicKey.ValidFor = nil
	}
	return tr, nil
}

// TrustedRootJSON is TrustedRoot in its JSON form.
func (h *Hallmark) TrustedRootJSON() ([]byte, error) {
	tr, err := h.TrustedRoot()
	if err != nil {
		return nil, err
	}
	return protojson.Marshal(tr)
}

// Attest does what the agent and server do for one step: sign it with
// attest.Sign as agent, log the envelope and timestamp its signature at
// t, and return the bundle with its log entry (proof against the tree
// just after it) and timestamp.
func (h *Hallmark) Attest(agent *Agent, s attest.Step, t time.Time) (*bundlepb.Bundle, error) {
	signed, err := attest.Sign(s, agent.Key, agent.Cert)
	if err != nil {
		return nil, err
	}
	b, err := attest.ParseBundle(signed)
	if err != nil {
		return nil, err
	}
	return h.logBundle(b, t)
}

// AttestPayload signs an arbitrary in-toto payload as agent (for
// statements attest.Sign would not write), logs it at t and returns the
// bundle.
func (h *Hallmark) AttestPayload(agent *Agent, payload []byte, t time.Time) (*bundlepb.Bundle, error) {
	env, err := attest.SignEnvelope(payload, agent.Key)
	if err != nil {
		return nil, err
	}
	b, err := attest.NewBundle(env, agent.Cert)
	if err != nil {
		return nil, err
	}
	return h.logBundle(b, t)
}

func (h *Hallmark) logBundle(b *bundlepb.Bundle, t time.Time) (*bundlepb.Bundle, error) {
	cert := b.GetVerificationMaterial().GetCertificate().GetRawBytes()
	if cert == nil {
		return nil, errors.New("verifytest: bundle has no certificate")
	}
	newBody := tlog.NewBody
	if h.Legacy {
		newBody = tlog.NewLegacyBody
	}
	body, err := newBody(b.GetDsseEnvelope(), cert)
	if err != nil {
		return nil, err
	}
	idx := h.Log.Append(body)
	entry, err := h.Log.Entry(idx, idx+1)
	if err != nil {
		return nil, err
	}
	ts, err := h.TSA.Signer.Timestamp(b.GetDsseEnvelope().GetSignatures()[0].GetSig(), t)
	if err != nil {
		return nil, err
	}
	b.VerificationMaterial.TlogEntries = []*rekorpb.TransparencyLogEntry{entry}
	b.VerificationMaterial.TimestampVerificationData = &bundlepb.TimestampVerificationData{
		Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: ts}},
	}
	return b, nil
}

// Step is a step as the agent would attest it, with one product per
// entry of products (name to content).
func Step(name, builderID string, products map[string]string) attest.Step {
	s := attest.Step{
		Name:          name,
		Workspace:     "/builds/acme/widget",
		Command:       []string{"make", "dist"},
		CallerCmdline: []string{"/usr/bin/hallmark", "attest", "--step", name, "--", "make", "dist"},
		Workload: attest.Workload{
			SPIFFEIDs: []string{"spiffe://example.org/ci/runner/widget"},
			Selectors: []string{"unix:uid:1001", "unix:gid:1001"},
			PID:       4242, UID: 1001, GID: 1001,
		},
		BuilderID: builderID,
	}
	for n, content := range products {
		d := verify.DigestBytes(n, []byte(content))
		s.Products = append(s.Products, attest.Artifact{Name: n, SHA256: fmt.Sprintf("%x", d.SHA256)})
	}
	return s
}

package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/internal/limits"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// Limits on what agents submit: the set agents size their calls by
// (internal/limits).
const (
	// MaxSubmitEntries bounds the entries of one SubmitEntries call.
	MaxSubmitEntries = limits.MaxEntriesPerCall
	// MaxEnvelopeSize bounds one envelope's JSON: the same as a bundle.
	MaxEnvelopeSize = limits.MaxEnvelopeBytes
	// MaxCertificateSize bounds one signing certificate (DER).
	MaxCertificateSize = limits.MaxCertificateBytes
)

// intotoStatementV1 is the _type of the statements agents sign.
const intotoStatementV1 = "https://in-toto.io/Statement/v1"

// Submission is one entry an agent asks to log.
type Submission struct {
	// Envelope is a DSSE envelope as Sigstore bundle JSON.
	Envelope []byte
	// Certificate is the signing certificate, DER.
	Certificate []byte
	// Timestamp is the RFC 3161 timestamp of the signature granted when
	// it was made (Timestamp); optional (see admission.go).
	Timestamp []byte
}

// SubmitResult is the outcome of one Submission: Entry (the logged entry
// with its inclusion proof and signed checkpoint) or Refusal, which is
// final.
type SubmitResult struct {
	Entry *rekorpb.TransparencyLogEntry
	// Timestamp is the RFC 3161 timestamp (DER TimeStampResp) the log's
	// timestamp authority granted the entry's signature when it was
	// first accepted.
	Timestamp []byte
	Refusal   error
}

// Submit logs subs for the agent caller, checking each in order:
//
//  1. the envelope parses (at most MaxEnvelopeSize, no unknown fields)
//     and has exactly one signature;
//  2. the certificate parses (at most MaxCertificateSize), is not a CA,
//     and its only URI SAN is caller: an agent logs only its own
//     signatures;
//  3. the DSSE signature verifies with the certificate's key (ECDSA P-256,
//     ASN.1 DER over SHA-256 of the PAE; attest.VerifyEnvelope);
//  4. the certificate chains, for code signing, to a signing CA this
//     server has recorded, and it and its chain are valid at the check
//     time: the genTime of the submitted timestamp, which must be this
//     log's over the signature (admission.go), or else the integrated
//     time;
//  5. the payload is an in-toto Statement v1 (its sha256 subject digests
//     are indexed for search).
//
// An entry logged before is returned as it is, with a fresh inclusion
// proof, even when check 4 would now fail (its certificate expired since):
// it was checked when it was appended. Results come in the order of subs.
// The error is for the call as a whole (store down, log stopping) and
// means nothing was decided: the caller retries.
func (l *TransparencyLog) Submit(ctx context.Context, caller spiffeid.ID, subs []Submission) ([]SubmitResult, error) {
	results := make([]SubmitResult, len(subs))
	now := l.now().Truncate(time.Second)
	var (
		queue    []*pendingEntry
		queuePos []int
		retry    []*pendingEntry // failed check 4: maybe logged before
		retryPos []int
		retryErr []error
	)
	reloaded := false
	for i, sub := range subs {
		checkedAt := time.Now()
		it, err := l.check(caller, sub, now)
		var chainErr *chainError
		if errors.As(err, &chainErr) && !reloaded {
			// Another server sharing the store may have recorded a
			// signing CA or a rotation decision since this one loaded
			// them: look again, once per call, before deciding.
			reloaded = true
			if rerr := l.reloadFromStore(ctx, checkedAt); rerr != nil {
				return nil, rerr
			}
			it, err = l.check(caller, sub, now)
		}
		switch {
		case errors.As(err, &chainErr):
			retry, retryPos, retryErr = append(retry, it), append(retryPos, i), append(retryErr, err)
		case err != nil:
			results[i].Refusal = err
			l.metrics.appends.WithLabelValues(appendRefused).Inc()
		default:
			queue, queuePos = append(queue, it), append(queuePos, i)
		}
	}

	if len(retry) > 0 {
		keys := make([][]byte, len(retry))
		for i, it := range retry {
			keys[i] = it.key
		}
		found, err := l.store.EntriesByDedupeKey(ctx, keys)
		if err != nil {
			return nil, fmt.Errorf("look up duplicates: %w", err)
		}
		stored := make(map[string]store.Entry, len(found))
		for _, e := range found {
			stored[string(e.DedupeKey)] = e
		}
		for j, it := range retry {
			e, ok := stored[string(it.key)]
			if !ok {
				results[retryPos[j]].Refusal = retryErr[j]
				l.metrics.appends.WithLabelValues(appendRefused).Inc()
				continue
			}
			entry, err := l.proveStored(ctx, e)
			if err != nil {
				return nil, fmt.Errorf("prove entry %d: %w", e.Index, err)
			}
			results[retryPos[j]].Entry, results[retryPos[j]].Timestamp = entry, e.Timestamp
			l.metrics.appends.WithLabelValues(appendDuplicate).Inc()
		}
	}

	if len(queue) == 0 {
		return results, nil
	}
	if err := l.enqueue(ctx, queue); err != nil {
		return nil, err
	}
	for j, it := range queue {
		i := queuePos[j]
		switch {
		case it.err != nil:
			return nil, it.err
		case it.refusal != nil:
			results[i].Refusal = it.refusal
		case it.existing:
			entry, err := l.proveStored(ctx, it.entry)
			if err != nil {
				return nil, fmt.Errorf("prove entry %d: %w", it.entry.Index, err)
			}
			results[i].Entry, results[i].Timestamp = entry, it.entry.Timestamp
		case it.batch != nil:
			entry, err := l.proveInBatch(it.entry, it.batch)
			if err != nil {
				return nil, fmt.Errorf("prove entry %d: %w", it.entry.Index, err)
			}
			results[i].Entry, results[i].Timestamp = entry, it.entry.Timestamp
		default:
			return nil, errors.New("transparency log: entry left unanswered")
		}
	}
	return results, nil
}

// chainError is a failure of check 4 (chain and validity).
type chainError struct{ err error }

func (e *chainError) Error() string { return e.err.Error() }
func (e *chainError) Unwrap() error { return e.err }

// check runs checks 1-5 on sub at time now. On a chainError the returned
// entry carries its dedupe key, so the caller can look for it in the log.
func (l *TransparencyLog) check(caller spiffeid.ID, sub Submission, now time.Time) (*pendingEntry, error) {
	// 1. The envelope.
	if len(sub.Envelope) == 0 {
		return nil, errors.New("no envelope")
	}
	if len(sub.Envelope) > MaxEnvelopeSize {
		return nil, fmt.Errorf("envelope is %d bytes, more than the %d allowed", len(sub.Envelope), MaxEnvelopeSize)
	}
	env := &dssepb.Envelope{}
	if err := protojson.Unmarshal(sub.Envelope, env); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if n := len(env.GetSignatures()); n != 1 {
		return nil, fmt.Errorf("envelope has %d signatures, want exactly 1", n)
	}
	if len(env.GetSignatures()[0].GetSig()) == 0 || len(env.GetPayload()) == 0 {
		return nil, errors.New("envelope has an empty payload or signature")
	}

	// 2. The certificate names the caller.
	if len(sub.Certificate) == 0 {
		return nil, errors.New("no certificate")
	}
	if len(sub.Certificate) > MaxCertificateSize {
		return nil, fmt.Errorf("certificate is %d bytes, more than the %d allowed", len(sub.Certificate), MaxCertificateSize)
	}
	sum := sha256.Sum256(sub.Certificate)
	cached := l.certs.get(sum)
	var cert *x509.Certificate
	if cached != nil {
		cert = cached.cert
	} else {
		var err error
		if cert, err = x509.ParseCertificate(sub.Certificate); err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
	}
	if cert.IsCA {
		return nil, errors.New("certificate is a CA certificate")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != caller.String() {
		return nil, fmt.Errorf("certificate names %v, but the caller is %s: an agent logs only its own signatures", cert.URIs, caller)
	}

	// 3. The signature.
	if _, err := attest.VerifyEnvelope(env, cert.PublicKey); err != nil {
		return nil, err
	}

	body, err := tlog.NewBody(env, sub.Certificate)
	if err != nil {
		return nil, err
	}
	it := &pendingEntry{
		envelope: sub.Envelope, env: env, cert: sub.Certificate, spiffeID: caller.String(),
		body: body, key: tlog.LeafHash(body),
	}

	// 4. The chain, valid at the check time (admission.go); without a
	// timestamp the appender checks the window again at the integrated
	// time.
	at, timestamped, err := l.checkTime(sub.Timestamp, env.GetSignatures()[0].GetSig(), now)
	if err != nil {
		return nil, err
	}
	if cached == nil || at.Before(cached.notBefore) || at.After(cached.notAfter) {
		v, err := l.cas.verify(cert, at)
		if err != nil {
			return it, &chainError{err}
		}
		cached = v
		l.certs.put(sum, v)
	}
	it.notBefore, it.notAfter = cached.notBefore, cached.notAfter
	// Rotation: a tainted issuer's certificates are refused after the
	// grace, a revoked one's from its revocation time (docs/rotation.md).
	if err := l.issuers.refusal(cached.issuer, at); err != nil {
		return it, &chainError{err}
	}

	// 5. The statement.
	if it.digests, err = subjectDigests(env.GetPayload()); err != nil {
		return nil, err
	}

	// Accepted: with the timestamp granted at signing, or one now (RFC
	// 3161). Kept only if the entry is new; a repeat answers with the
	// first one's.
	if timestamped {
		it.timestamp, it.checkAt = sub.Timestamp, at
		return it, nil
	}
	if it.timestamp, err = l.tsa.Timestamp(env.GetSignatures()[0].GetSig(), now); err != nil {
		return nil, err
	}
	return it, nil
}

// subjectDigests returns the distinct sha256 digests of a statement's
// subjects, raw. Only what the index needs is decoded.
func subjectDigests(payload []byte) ([][]byte, error) {
	var st struct {
		Type    string `json:"_type"`
		Subject []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}
	if err := json.Unmarshal(payload, &st); err != nil {
		return nil, fmt.Errorf("payload is not an in-toto statement: %w", err)
	}
	if st.Type != intotoStatementV1 {
		return nil, fmt.Errorf("payload _type is %q, want %q", st.Type, intotoStatementV1)
	}
	var out [][]byte
	seen := make(map[string]bool, len(st.Subject))
	for _, s := range st.Subject {
		h := s.Digest["sha256"]
		if len(h) != 2*sha256.Size || seen[h] {
			continue
		}
		d, err := hex.DecodeString(h)
		if err != nil {
			continue
		}
		seen[h] = true
		out = append(out, d)
	}
	return out, nil
}

// verifiedCert is a signing certificate that chains to a known signing CA;
// the chain is valid from notBefore to notAfter.
type verifiedCert struct {
	cert      *x509.Certificate
	notBefore time.Time
	notAfter  time.Time
	issuer    fingerprint // of the issuing CA certificate
}

// certCache remembers verified certificates by the SHA-256 of their DER:
// an agent signs many envelopes with one certificate. It forgets
// everything when full. CAs are only ever added, so an entry never turns
// wrong; the validity window is checked on every use.
type certCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*verifiedCert
}

const certCacheSize = 4096

func newCertCache() *certCache {
	return &certCache{m: make(map[[sha256.Size]byte]*verifiedCert)}
}

func (c *certCache) get(sum [sha256.Size]byte) *verifiedCert {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[sum]
}

func (c *certCache) put(sum [sha256.Size]byte, v *verifiedCert) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= certCacheSize {
		clear(c.m)
	}
	c.m[sum] = v
}

// caSet is the signing CAs the server knows, as certificate pools.
type caSet struct {
	mu    sync.Mutex // serializes additions
	known map[string]bool
	pools atomic.Pointer[caPools]
}

type caPools struct {
	roots, intermediates *x509.CertPool
	n                    int
}

// reloadFromStore adds the signing CAs and applies the issuer states that
// the store holds and this log has not seen (recorded through another
// server sharing the store).
//
// Concurrent callers share reads: one whose check failed at checkedAt
// reuses a reload that began after it (what the store held then is what
// it needs), so a burst of such submissions costs one read, not one each.
func (l *TransparencyLog) reloadFromStore(ctx context.Context, checkedAt time.Time) error {
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	if l.reloadStarted.After(checkedAt) {
		return nil
	}
	started := time.Now()
	if err := l.refreshIssuers(ctx); err != nil {
		return fmt.Errorf("reload issuer states: %w", err)
	}
	cas, err := l.store.SigningCAs(ctx)
	if err != nil {
		return fmt.Errorf("reload signing CAs: %w", err)
	}
	l.cas.mu.Lock()
	defer l.cas.mu.Unlock()
	for _, ca := range cas {
		if l.cas.known[string(ca.ID)] {
			continue
		}
		chain, err := x509.ParseCertificates(ca.DER)
		if err != nil || len(chain) == 0 {
			return fmt.Errorf("stored signing CA %x does not parse: %v", ca.ID, err)
		}
		l.cas.addLocked(ca.ID, chain)
	}
	l.reloadStarted = started // only a reload that succeeded is reused
	return nil
}

func loadCASet(ctx context.Context, st Store) (*caSet, error) {
	cas, err := st.SigningCAs(ctx)
	if err != nil {
		return nil, fmt.Errorf("transparency log: signing CAs: %w", err)
	}
	c := &caSet{known: make(map[string]bool)}
	c.pools.Store(&caPools{roots: x509.NewCertPool(), intermediates: x509.NewCertPool()})
	for _, ca := range cas {
		chain, err := x509.ParseCertificates(ca.DER)
		if err != nil || len(chain) == 0 {
			return nil, fmt.Errorf("transparency log: stored signing CA %x does not parse: %v", ca.ID, err)
		}
		c.addLocked(ca.ID, chain)
	}
	return c, nil
}

func (c *caSet) addLocked(id []byte, chain []*x509.Certificate) {
	old := c.pools.Load()
	p := &caPools{roots: old.roots.Clone(), intermediates: old.intermediates.Clone(), n: old.n + 1}
	for i, cert := range chain {
		if i == len(chain)-1 {
			p.roots.AddCert(cert)
		} else {
			p.intermediates.AddCert(cert)
		}
	}
	c.pools.Store(p)
	c.known[string(id)] = true
}

// verify checks that cert chains, for code signing, to a known CA and that
// the chain is valid at t.
func (c *caSet) verify(cert *x509.Certificate, t time.Time) (*verifiedCert, error) {
	p := c.pools.Load()
	if p.n == 0 {
		return nil, errors.New("the server has recorded no signing CA yet")
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         p.roots,
		Intermediates: p.intermediates,
		CurrentTime:   t,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	})
	if err != nil {
		return nil, fmt.Errorf("certificate does not chain to a signing CA of this server at %s: %w", t.UTC().Format(time.RFC3339), err)
	}
	nb, na := window(chains[0])
	return &verifiedCert{cert: cert, notBefore: nb, notAfter: na, issuer: fingerprintOf(chains[0][1])}, nil
}

// window is the intersection of the validity of every certificate.
func window(chain []*x509.Certificate) (notBefore, notAfter time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(notBefore) {
			notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notBefore, notAfter
}

// RecordSigningCA records a CA chain that issues agents' signing
// certificates (issuing CA first, root last), so that entries signed under
// it are accepted and verifiers find it in the trusted root. Recording a
// known chain is a no-op. The issuance path calls it with every chain
// before a certificate leaves the server.
func (l *TransparencyLog) RecordSigningCA(ctx context.Context, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("record signing CA: empty chain")
	}
	var der bytes.Buffer
	for _, c := range chain {
		der.Write(c.Raw)
	}
	id := sha256.Sum256(der.Bytes())
	l.cas.mu.Lock()
	defer l.cas.mu.Unlock()
	if l.cas.known[string(id[:])] {
		return nil
	}
	for i, c := range chain {
		if !c.BasicConstraintsValid || !c.IsCA {
			return fmt.Errorf("record signing CA: %s is not a CA certificate", c.Subject)
		}
		if i+1 < len(chain) {
			if err := c.CheckSignatureFrom(chain[i+1]); err != nil {
				return fmt.Errorf("record signing CA: %s is not signed by %s: %w", c.Subject, chain[i+1].Subject, err)
			}
		}
	}
	nb, na := window(chain)
	ca := store.SigningCA{ID: id[:], DER: der.Bytes(), NotBefore: nb, NotAfter: na, FirstSeen: l.now()}
	if err := l.store.AddSigningCA(ctx, ca); err != nil {
		return fmt.Errorf("record signing CA: %w", err)
	}
	l.cas.addLocked(id[:], chain)
	root := chain[len(chain)-1]
	l.log.Info("Signing CA recorded",
		zap.String(logIssuer, chain[0].Subject.String()),
		zap.String("root", root.Subject.String()),
		zap.String("ca_id", hex.EncodeToString(id[:8])),
		zap.Time(logNotAfter, na))
	return nil
}

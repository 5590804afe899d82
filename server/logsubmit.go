package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/internal/limits"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// Limits on what agents submit: the set agents size their calls by
// (internal/limits).
const (
	// MaxSubmitEntries bounds the entries of one SubmitEntries call.
	MaxSubmitEntries = limits.MaxEntriesPerCall
	// MaxEnvelopeSize bounds one envelope's JSON: what the agent signs at
	// most, so that the bundle rebuilt from the entry fits a verifier's
	// limit.
	MaxEnvelopeSize = limits.MaxEnvelopeBytes
	// MaxCertificateSize bounds one signing certificate (DER).
	MaxCertificateSize = limits.MaxCertificateBytes
)

// Submission is one entry an agent asks to log.
type Submission struct {
	// Envelope is a DSSE envelope as Sigstore bundle JSON.
	Envelope []byte
	// Certificate is the signing certificate, DER.
	Certificate []byte
	// Timestamp, if not nil, is an RFC 3161 timestamp (DER
	// TimeStampResp) over the envelope's signature that the signer
	// obtained when it signed, from a timestamp authority of the trusted
	// root. Its time is then the time of every check, however late the
	// entry arrives; without one the log checks at the time it accepts
	// the entry and timestamps it then.
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
//     and has exactly one, non-empty signature and a non-empty payload;
//  2. the certificate parses (at most MaxCertificateSize), is not a CA,
//     and its only URI SAN is caller: an agent logs only its own
//     signatures;
//  3. the verifier's own checks, in its order (verify.TrustedRoot.Admit,
//     against the trust state this log exports): signature, the
//     submission's timestamp if it has one (whose time is then the time
//     of every check; otherwise that time is now), validity and chain
//     at that time, in-toto statement, SLSA predicate whose builder.id is
//     the certificate's SPIFFE ID.
//
// An accepted entry without a timestamp is timestamped now by the log's
// timestamp authority. An entry logged before is returned as it is, with
// a fresh inclusion proof, even when the validity or chain check would
// now fail (its certificate expired since): it was checked when it was
// appended. Results come in the order of subs; each is decided on its
// own. The error is for the call as a whole (store down, log stopping)
// and means nothing was decided: the caller retries.
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
		var transient *transientError
		switch {
		case errors.As(err, &chainErr):
			retry, retryPos, retryErr = append(retry, it), append(retryPos, i), append(retryErr, err)
		case errors.As(err, &transient):
			return nil, err // the whole call: the agent sends it again
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

// chainError is a failure of the validity or chain check: the
// certificate may have expired since the entry was logged, or another
// server sharing the store may know a CA or decision this one has not
// loaded yet.
type chainError struct{ err error }

func (e *chainError) Error() string { return e.err.Error() }
func (e *chainError) Unwrap() error { return e.err }

// transientError is a failure of this server, not of the entry (it could
// not timestamp it): Submit fails the whole call, which the agent sends
// again later, instead of refusing the entry for good.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// check runs checks 1-3 on sub at time now. On a chainError the returned
// entry carries its dedupe key, so the caller can look for it in the log.
func (l *TransparencyLog) check(caller spiffeid.ID, sub Submission, now time.Time) (*pendingEntry, error) {
	// 1. The envelope.
	if len(sub.Envelope) == 0 {
		return nil, errors.New("no envelope")
	}
	if len(sub.Envelope) > MaxEnvelopeSize {
		return nil, fmt.Errorf("envelope is %d bytes, more than the %d allowed", len(sub.Envelope), MaxEnvelopeSize)
	}
	env, err := attest.UnmarshalEnvelope(sub.Envelope)
	if err != nil {
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
	cert, err := l.certs.parse(sub.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if cert.IsCA {
		return nil, errors.New("certificate is a CA certificate")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != caller.String() {
		return nil, fmt.Errorf("certificate names %v, but the caller is %s: an agent logs only its own signatures", cert.URIs, caller)
	}

	body, err := tlog.NewBody(env, sub.Certificate)
	if err != nil {
		return nil, err
	}
	// The dedupe key is the leaf hash of the entry as logs wrote it
	// before hashedrekord, so that an envelope logged then and submitted
	// again now is recognized (docs/log.md, "Upgrading").
	legacy, err := tlog.NewLegacyBody(env, sub.Certificate)
	if err != nil {
		return nil, err
	}
	it := &pendingEntry{
		envelope: sub.Envelope, env: env, cert: sub.Certificate, spiffeID: caller.String(),
		body: body, leaf: tlog.LeafHash(body), key: tlog.LeafHash(legacy),
	}

	// 3. The verifier's checks, against the trust state this log exports
	// (a timestamp this server's authority issued is remembered, and its
	// signature not checked again: docs/log.md, "Timestamps and time").
	ad := l.admission.Load()
	if ad.root == nil {
		// No CA recorded, even after reloading from the store (Submit):
		// the certificate's CA is none this deployment issued with.
		return it, &chainError{ad.err}
	}
	a, err := ad.root.Admit(verify.Entry{Envelope: env, Certificate: cert, Timestamp: sub.Timestamp}, now)
	var ce *verify.CheckError
	if errors.As(err, &ce) && (ce.Check == verify.CheckValidity || ce.Check == verify.CheckChain) {
		return it, &chainError{l.explainRotation(cert, err)}
	}
	if err != nil {
		return nil, err
	}
	it.digests = subjectDigests(a.Subjects)

	// Accepted. An entry timestamped when it was signed keeps that
	// timestamp; any other is timestamped now (RFC 3161), kept only if
	// the entry is new: a repeat answers with the first one's.
	if a.Timestamped {
		it.timestamp = sub.Timestamp
	} else if it.timestamp, err = l.tsa.Timestamp(env.GetSignatures()[0].GetSig(), now); err != nil {
		return nil, &transientError{fmt.Errorf("timestamp: %w", err)}
	}
	return it, nil
}

// explainRotation says, in front of err, why the certificate's issuer is
// no longer trusted when rotation tainted or revoked it: the agent must
// renew.
func (l *TransparencyLog) explainRotation(cert *x509.Certificate, err error) error {
	l.cas.mu.Lock()
	list := l.cas.list
	l.cas.mu.Unlock()
	for _, rec := range list {
		chain, perr := x509.ParseCertificates(rec.DER)
		if perr != nil || len(chain) == 0 || cert.CheckSignatureFrom(chain[0]) != nil {
			continue
		}
		fp := fingerprintOf(chain[0])
		switch st := l.issuers.get(fp); {
		case !st.RevokedAt.IsZero():
			return fmt.Errorf("the signing CA %x is revoked from %s: %w", fp[:8], st.RevokedAt.UTC().Format(time.RFC3339), err)
		case !st.TaintedAt.IsZero():
			return fmt.Errorf("the signing CA %x is tainted since %s: the agent must renew its signing certificate: %w", fp[:8], st.TaintedAt.UTC().Format(time.RFC3339), err)
		}
	}
	return err
}

// subjectDigests returns the distinct sha256 digests of a statement's
// subjects, raw, for the search index.
func subjectDigests(subjects []verify.Subject) [][]byte {
	out := make([][]byte, 0, len(subjects))
	seen := make(map[string]bool, len(subjects))
	for _, s := range subjects {
		if seen[s.SHA256] {
			continue
		}
		d, err := hex.DecodeString(s.SHA256)
		if err != nil || len(d) != sha256.Size {
			continue // cannot happen: the verifier checked every digest
		}
		seen[s.SHA256] = true
		out = append(out, d)
	}
	return out
}

// certCache remembers parsed signing certificates by the SHA-256 of their
// DER: an agent signs many envelopes with one certificate. It forgets
// everything when full.
type certCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*x509.Certificate
}

const certCacheSize = 4096

func newCertCache() *certCache {
	return &certCache{m: make(map[[sha256.Size]byte]*x509.Certificate)}
}

// parse returns der parsed, from the cache when it can.
func (c *certCache) parse(der []byte) (*x509.Certificate, error) {
	sum := sha256.Sum256(der)
	c.mu.Lock()
	cert, ok := c.m[sum]
	c.mu.Unlock()
	if ok {
		return cert, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= certCacheSize {
		clear(c.m)
	}
	c.m[sum] = cert
	return cert, nil
}

// admission is the trust this log admits entries against: the verifier's
// TrustedRoot prepared from the trust state the log's records make
// (trustState, the same the trusted root it exports is made of), or why
// there is none.
type admission struct {
	root *verify.TrustedRoot
	err  error // why root is nil
}

// caRecords are the signing CAs the log has recorded or read.
type caRecords struct {
	mu    sync.Mutex // serializes additions and rebuilds of the admission
	known map[string]bool
	list  []store.SigningCA
}

// rebuildAdmissionLocked prepares the admission from the recorded CAs
// and the current issuer states; l.cas.mu is held.
func (l *TransparencyLog) rebuildAdmissionLocked() error {
	st, err := trustState(l.cas.list, l.issuers.list(), l.pub, l.created, l.origin, l.tsa)
	if err != nil {
		return err
	}
	ad := &admission{}
	if len(st.CAs) == 0 {
		ad.err = errors.New("the server has recorded no signing CA yet")
	} else if ad.root, err = verify.NewTrustedRootFromState(st, verify.SkipTimestampSignatureCheckIfIssuedBy(l.tsa)); err != nil {
		return fmt.Errorf("trust state: %w", err)
	}
	l.admission.Store(ad)
	return nil
}

// rebuildAdmission is rebuildAdmissionLocked for callers that do not hold
// l.cas.mu.
func (l *TransparencyLog) rebuildAdmission() error {
	l.cas.mu.Lock()
	defer l.cas.mu.Unlock()
	return l.rebuildAdmissionLocked()
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
	if _, err := l.refreshIssuers(ctx); err != nil {
		return fmt.Errorf("reload issuer states: %w", err)
	}
	if err := l.loadCAs(ctx); err != nil {
		return fmt.Errorf("reload signing CAs: %w", err)
	}
	l.reloadStarted = started // only a reload that succeeded is reused
	return nil
}

// loadCAs adds the signing CAs the store holds that this log has not
// seen, and prepares the admission again.
func (l *TransparencyLog) loadCAs(ctx context.Context) error {
	cas, err := l.store.SigningCAs(ctx)
	if err != nil {
		return err
	}
	l.cas.mu.Lock()
	defer l.cas.mu.Unlock()
	for _, ca := range cas {
		if l.cas.known[string(ca.ID)] {
			continue
		}
		l.cas.known[string(ca.ID)] = true
		l.cas.list = append(l.cas.list, ca)
	}
	return l.rebuildAdmissionLocked()
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
	nb, na := trust.Window(chain)
	ca := store.SigningCA{ID: id[:], DER: der.Bytes(), NotBefore: nb, NotAfter: na, FirstSeen: l.now()}
	if err := l.store.AddSigningCA(ctx, ca); err != nil {
		return fmt.Errorf("record signing CA: %w", err)
	}
	l.cas.known[string(id[:])] = true
	l.cas.list = append(l.cas.list, ca)
	if err := l.rebuildAdmissionLocked(); err != nil {
		return fmt.Errorf("record signing CA: %w", err)
	}
	root := chain[len(chain)-1]
	l.log.Info("Signing CA recorded",
		zap.String(logIssuer, chain[0].Subject.String()),
		zap.String("root", root.Subject.String()),
		zap.String("ca_id", hex.EncodeToString(id[:8])),
		zap.Time(logNotAfter, na))
	return nil
}

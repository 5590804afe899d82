package verify

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/transparency-dev/merkle/proof"

	"github.com/hallmark-dev/hallmark/attest/tlog"
)

// verifiedEntry is what a verified transparency-log entry establishes.
type verifiedEntry struct {
	index      int64
	log        *transparencyLog
	checkpoint tlog.Checkpoint
}

// verifyTlogEntry checks the bundle's transparency-log entries: there is
// exactly one, from a log of the trusted root, a Rekor v2 hashedrekord
// entry (or a legacy dsse one); its body commits to env and certDER; the
// body is in the log (RFC 6962 inclusion proof) under a checkpoint that
// the log's key signed. As in Rekor v2, the entry says nothing about time:
// the bundle's timestamp does, and the caller checks the log key's
// validFor against it.
func (tr *TrustedRoot) verifyTlogEntry(entries []*rekorpb.TransparencyLogEntry, env *dssepb.Envelope, certDER []byte) (verifiedEntry, error) {
	// Hallmark logs every envelope once, in one log.
	if n := len(entries); n != 1 {
		hint := ""
		if n == 0 {
			// What a step writes when the log has not yet taken the
			// entry (hallmark attest without --wait-log).
			hint = " (a step's bundle written before its entry was logged: attest with --wait-log, or fetch the logged bundle with hallmark search --digest)"
		}
		return verifiedEntry{}, fmt.Errorf("bundle has %d transparency log entries, want exactly 1%s", n, hint)
	}
	e := entries[0]

	// protobuf-specs rekor/v1 KindVersion names the body's format: Rekor
	// v2's hashedrekord entry (rekor-tiles
	// api/proto/rekor/v2/hashedrekord.proto), or the dsse entry of logs
	// written before Hallmark moved to it (docs/log.md, "Upgrading").
	kv := e.GetKindVersion()
	legacy := kv.GetKind() == tlog.LegacyEntryKind
	if (kv.GetKind() != tlog.EntryKind && !legacy) || kv.GetVersion() != tlog.EntryVersion {
		return verifiedEntry{}, fmt.Errorf("entry kind %q version %q, want %q %q",
			kv.GetKind(), kv.GetVersion(), tlog.EntryKind, tlog.EntryVersion)
	}

	// Rekor v2 entries, and this log's, carry no integratedTime and no
	// inclusionPromise (a signed entry timestamp): the bundle's RFC 3161
	// timestamp says when. Bytes that no signature covers, which cosign
	// and sigstore-go would check (integratedTime against the
	// certificate's validity, the promise's signature) and refuse, are
	// refused here too, so that all agree on every bundle.
	if t := e.GetIntegratedTime(); t != 0 {
		return verifiedEntry{}, fmt.Errorf("entry has integratedTime %d; this log gives none (the bundle's timestamp says when), and Sigstore's verifiers would check it", t)
	}
	if e.GetInclusionPromise() != nil {
		return verifiedEntry{}, errors.New("entry has an inclusionPromise; this log issues none, and Sigstore's verifiers would check it")
	}

	// rekor-tiles CLIENTS.md: the log ID is the C2SP signed-note key ID
	// of the log's checkpoint key, and selects a log of the trusted root.
	// A legacy entry may also name its log by the SHA-256 of the key's
	// PKIX DER, as bundles written before the change do.
	id := e.GetLogId().GetKeyId()
	log, ok := tr.logs[string(id)]
	if !ok && legacy {
		log, ok = tr.legacyLogs[string(id)]
	}
	if !ok {
		return verifiedEntry{}, fmt.Errorf("entry is from log %x, which the trusted root does not list", id)
	}

	// The body (canonicalizedBody), of the kind its kindVersion names,
	// must commit to this very envelope and certificate (protobuf-specs:
	// "clients MUST verify that the signature referenced in the
	// canonicalized_body matches the signature provided in the
	// Bundle.content"; for hashedrekord that is the digest of the DSSE
	// PAE, the signature and the certificate).
	body, err := tlog.ParseBody(e.GetCanonicalizedBody())
	if err != nil {
		return verifiedEntry{}, err
	}
	if body.Kind != kv.GetKind() {
		return verifiedEntry{}, fmt.Errorf("entry body is of kind %q, its kindVersion says %q", body.Kind, kv.GetKind())
	}
	if err := body.Matches(env, certDER); err != nil {
		return verifiedEntry{}, err
	}

	// RFC 6962 section 2.1.1: the body's leaf hash is at logIndex in the
	// tree of treeSize whose root is rootHash.
	p := e.GetInclusionProof()
	if p == nil {
		return verifiedEntry{}, errors.New("entry has no inclusion proof")
	}
	if p.GetLogIndex() != e.GetLogIndex() {
		return verifiedEntry{}, fmt.Errorf("inclusion proof is for index %d, entry is at %d", p.GetLogIndex(), e.GetLogIndex())
	}
	if p.GetLogIndex() < 0 || p.GetTreeSize() <= p.GetLogIndex() {
		return verifiedEntry{}, fmt.Errorf("inclusion proof index %d is outside a tree of size %d", p.GetLogIndex(), p.GetTreeSize())
	}
	leaf := tlog.LeafHash(e.GetCanonicalizedBody())
	if err := tlog.VerifyInclusion(uint64(p.GetLogIndex()), uint64(p.GetTreeSize()), leaf, p.GetHashes(), p.GetRootHash()); err != nil {
		var mismatch proof.RootMismatchError
		if errors.As(err, &mismatch) {
			return verifiedEntry{}, fmt.Errorf("inclusion proof leads to root %x, not the proof's rootHash %x", mismatch.CalculatedRoot, mismatch.ExpectedRoot)
		}
		return verifiedEntry{}, fmt.Errorf("inclusion proof: %w", err)
	}

	// C2SP tlog-checkpoint and signed-note: the checkpoint is signed by
	// the log's key under its origin, and commits to the proof's tree.
	cp, err := tlog.OpenCheckpoint([]byte(p.GetCheckpoint().GetEnvelope()), log.origin, log.key)
	if err != nil {
		return verifiedEntry{}, err
	}
	if cp.Size != uint64(p.GetTreeSize()) || !bytes.Equal(cp.Root, p.GetRootHash()) {
		return verifiedEntry{}, fmt.Errorf("checkpoint is for a tree of size %d and root %x, the proof for size %d and root %x",
			cp.Size, cp.Root, p.GetTreeSize(), p.GetRootHash())
	}

	return verifiedEntry{index: e.GetLogIndex(), log: log, checkpoint: cp}, nil
}

// trustedAt reports whether the log's key vouched for entries at t
// (protobuf-specs common/v1 PublicKey.valid_for: a retired log key
// vouches only for entries of its time).
func (l *transparencyLog) trustedAt(t time.Time) error {
	if !l.validFor.Start.IsZero() && !l.validFor.Contains(t) {
		return fmt.Errorf("log key is trusted for %s, the signature is timestamped %s", l.validFor, fmtTime(t))
	}
	return nil
}

// verifyTimestamp checks an RFC 3161 timestamp (DER TimeStampResp) over
// the envelope's signature sig: it is from a timestamp authority of the
// trusted root whose validFor covers the time it grants (RFC 3161;
// Sigstore bundle spec, timestampVerificationData). It returns that time.
func (tr *TrustedRoot) verifyTimestamp(stamp, sig []byte) (time.Time, error) {
	var errs []error
	for _, ta := range tr.tsas {
		t, err := ta.authority.Verify(stamp, sig)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// protobuf-specs trustroot/v1: a timestamp authority is trusted
		// only for timestamps within its validFor.
		if !ta.validFor.Contains(t) {
			return time.Time{}, fmt.Errorf("timestamp authority %s is trusted for %s, not at %s", ta.leaf.Subject, ta.validFor, fmtTime(t))
		}
		return t, nil
	}
	return time.Time{}, fmt.Errorf("no timestamp authority of the trusted root vouches for the timestamp: %w", errors.Join(errs...))
}

// bundleTimestamp is the bundle's one RFC 3161 timestamp.
func bundleTimestamp(tvd *bundlepb.TimestampVerificationData) ([]byte, error) {
	stamps := tvd.GetRfc3161Timestamps()
	if n := len(stamps); n != 1 {
		return nil, fmt.Errorf("bundle has %d RFC 3161 timestamps, want exactly 1", n)
	}
	return stamps[0].GetSignedTimestamp(), nil
}

// verifiedChain remembers that a leaf chains, for code signing, to a
// certificate authority: everything x509 path validation checks but
// validity, which is the window [notBefore, notAfter] of the chain found.
type verifiedChain struct {
	ca                  *certificateAuthority
	notBefore, notAfter time.Time
}

// maxChainCache bounds the verified-chain cache; past it, chains are
// verified every time (correct, only slower).
const maxChainCache = 4096

// verifyChain finds a certificate authority trusted at t to which leaf
// chains for code signing, checked at time t. An agent signs many
// attestations with one short-lived certificate, so a chain once verified
// is remembered (by the leaf's SHA-256) and, for a later t, only its
// validity window and its authority's validFor are checked again.
func (tr *TrustedRoot) verifyChain(leaf *x509.Certificate, t time.Time) (*certificateAuthority, error) {
	key := sha256.Sum256(leaf.Raw)
	if v, ok := tr.chains.Load(key); ok {
		vc := v.(*verifiedChain)
		if !t.Before(vc.notBefore) && !t.After(vc.notAfter) && vc.ca.validFor.Contains(t) {
			return vc.ca, nil
		}
	}
	ca, chain, err := tr.buildChain(leaf, t)
	if err != nil {
		return nil, err
	}
	if tr.chainCount.Load() < maxChainCache {
		vc := &verifiedChain{ca: ca, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
		for _, c := range chain {
			if c.NotBefore.After(vc.notBefore) {
				vc.notBefore = c.NotBefore
			}
			if c.NotAfter.Before(vc.notAfter) {
				vc.notAfter = c.NotAfter
			}
		}
		if _, loaded := tr.chains.LoadOrStore(key, vc); !loaded {
			tr.chainCount.Add(1)
		}
	}
	return ca, nil
}

// buildChain is RFC 5280 path validation of leaf at t against each
// certificate authority trusted at t; it returns the first that verifies
// and the chain found.
func (tr *TrustedRoot) buildChain(leaf *x509.Certificate, t time.Time) (*certificateAuthority, []*x509.Certificate, error) {
	opts := func(ca *certificateAuthority) x509.VerifyOptions {
		return x509.VerifyOptions{
			Roots:         ca.roots,
			Intermediates: ca.intermediates,
			CurrentTime:   t,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		}
	}
	// An agent's key certifies nothing: a CA certificate is no signing
	// certificate, whatever its EKU.
	if leaf.IsCA {
		return nil, nil, fmt.Errorf("signing certificate (subject %s) is a CA certificate", leaf.Subject)
	}
	var errs []error
	for _, ca := range tr.cas {
		if !ca.validFor.Contains(t) {
			continue
		}
		chains, err := leaf.Verify(opts(ca))
		if err == nil {
			return ca, chains[0], nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", ca.anchor.Subject, err))
	}
	// Not verified. Say so plainly when the issuing CA is in the trusted
	// root but was not trusted at t (rotated out, or not yet in).
	for _, ca := range tr.cas {
		if ca.validFor.Contains(t) {
			continue
		}
		if _, err := leaf.Verify(opts(ca)); err == nil {
			return nil, nil, fmt.Errorf("certificate chains to %s, which the trusted root trusts for %s only, not at the signature's timestamp %s",
				ca.anchor.Subject, ca.validFor, fmtTime(t))
		}
	}
	if len(errs) == 0 {
		return nil, nil, fmt.Errorf("no certificate authority in the trusted root is trusted at the signature's timestamp %s", fmtTime(t))
	}
	return nil, nil, fmt.Errorf("certificate (issuer %s) chains to no certificate authority trusted at %s: %w",
		leaf.Issuer, fmtTime(t), errors.Join(errs...))
}

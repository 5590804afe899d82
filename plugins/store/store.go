// Package store holds the records hallmark-server keeps about its
// transparency log and its signing CAs. The server declares the interface
// it needs (server.Store); the plugins under this directory implement it
// over one database each: sqlite (the embedded default) and postgres.
// Nothing here does I/O.
//
// A store is dumb on purpose: it never computes a hash, signs or decides
// what an index is. The server's single appender hands it whole batches
// (entries, the Merkle tree nodes they complete, one signed checkpoint),
// and a store's only duty is to commit each batch atomically and durably,
// and to answer lookups from committed state.
package store

import (
	"errors"
	"math"
	"time"
)

// ErrNotFound is returned by lookups of a single record that is absent.
var ErrNotFound = errors.New("store: not found")

// Entry is one log entry.
type Entry struct {
	// Index is the entry's leaf index, from 0 without gaps.
	Index uint64
	// LeafHash is the RFC 6962 leaf hash of Body.
	LeafHash []byte
	// DedupeKey identifies the submission regardless of when it was
	// integrated (see docs/log.md); unique.
	DedupeKey []byte
	// Body is the canonical entry body (attest/tlog).
	Body []byte
	// Envelope is the DSSE envelope as submitted (Sigstore bundle JSON).
	Envelope []byte
	// Certificate is the signing certificate, DER.
	Certificate []byte
	// SPIFFEID is the submitting agent.
	SPIFFEID string
	// IntegratedTime is when the log accepted the entry (Unix seconds).
	IntegratedTime int64
	// Timestamp is the RFC 3161 timestamp (DER TimeStampResp) of the
	// envelope's signature, granted when the entry was accepted.
	Timestamp []byte
	// SubjectDigests are the raw SHA-256 digests of the statement's
	// subjects, indexed for search. Written on append; lookups leave it
	// empty.
	SubjectDigests [][]byte
}

// Size is what the entry's variable-length fields weigh in bytes: the
// measure by which lookups bound their answers.
func (e Entry) Size() int {
	return len(e.Body) + len(e.Envelope) + len(e.Certificate) + len(e.Timestamp) + len(e.SPIFFEID)
}

// SubjectQuery selects the entries whose statements name a subject
// digest, by increasing index.
type SubjectQuery struct {
	// Digest is the subject's raw SHA-256 digest.
	Digest []byte
	// Start is the first index to consider.
	Start uint64
	// Limit bounds how many entries are returned; MaxBytes, when not
	// 0, bounds what they weigh (Entry.Size), but the first is always
	// returned.
	Limit, MaxBytes int
	// Builders, when not empty, keeps only the entries whose SPIFFEID is
	// one of these or under one, at a path segment boundary:
	// spiffe://td/a keeps spiffe://td/a and spiffe://td/a/b, not
	// spiffe://td/ab. Each is a SPIFFE ID (no trailing slash).
	Builders []string
	// MaxScan, with Builders, bounds the entries naming Digest that one
	// query examines (those of other builders included), so that
	// another builder's many entries cost a query no more than this;
	// 0 is no bound. A store reads an entry's builder without reading
	// the entry.
	MaxScan int
}

// SubjectPage is what a SubjectQuery found.
type SubjectPage struct {
	// Entries are the entries found, by increasing index.
	Entries []Entry
	// ScannedTo, when not 0, says the query stopped at MaxScan: it
	// examined the entries naming the digest from Start up to
	// ScannedTo (exclusive), and there may be more from there on. When
	// Entries is empty, none of those is by the builders; when it is
	// not, Limit or MaxBytes may have cut it first, and the next query
	// starts after its last entry.
	ScannedTo uint64
}

// Window is where a query with builders examines entries, given n and
// last, the count and the last index of the first MaxScan entries naming
// the digest from Start on: below end, and, when those were MaxScan, the
// page's ScannedTo. A store fixes the window in one statement before it
// reads entries in another, so that an entry appended in between cannot
// land below a ScannedTo it reports.
func (q SubjectQuery) Window(n, last int64) (end int64, scannedTo uint64) {
	if q.MaxScan <= 0 || n < int64(q.MaxScan) {
		return math.MaxInt64, 0
	}
	return last + 1, uint64(last + 1)
}

// NodeID names a node of the Merkle tree: Level 0 are the leaves, and
// node (L, I) covers leaves [I·2^L, (I+1)·2^L).
type NodeID struct {
	Level uint
	Index uint64
}

// Node is the hash of a perfect subtree.
type Node struct {
	NodeID
	Hash []byte
}

// Checkpoint is a signed checkpoint (a C2SP signed note) for a tree size.
type Checkpoint struct {
	Size uint64
	Note []byte
}

// Batch is what one append commits, all or nothing: entries that continue
// the log, the perfect-subtree hashes they complete, and the checkpoint
// that signs the new tree.
type Batch struct {
	Entries    []Entry
	Nodes      []Node
	Checkpoint Checkpoint
}

// SigningCA is a certificate chain the server has seen issue agents'
// signing certificates: issuing CA first, root last.
type SigningCA struct {
	// ID is the SHA-256 of DER; unique.
	ID []byte
	// DER is the chain's certificates, DER, concatenated (parse it with
	// x509.ParseCertificates).
	DER []byte
	// NotBefore and NotAfter bound the validity of every certificate of
	// the chain.
	NotBefore time.Time
	NotAfter  time.Time
	// FirstSeen is when the server first recorded the chain.
	FirstSeen time.Time
}

// IssuerState is what the server's rotation has decided about one issuing
// CA (an issuer): when it was tainted and from when it is revoked. An
// issuer without a record is neither.
type IssuerState struct {
	// Fingerprint is the SHA-256 of the issuing CA certificate's DER;
	// unique.
	Fingerprint []byte
	// TaintedAt is when the issuer was tainted; zero if it is not.
	TaintedAt time.Time
	// RevokedAt is the time from which the issuer is revoked; zero if it
	// is not.
	RevokedAt time.Time
}

// ErrDuplicate is returned by an append whose batch holds an entry with
// a dedupe key the store already has; nothing of the batch is written.
var ErrDuplicate = errors.New("store: an entry with this dedupe key is already logged")

// ErrConflict is returned by an append that does not continue the log as
// the store holds it: another writer appended in between. The writer's
// view is stale; it must stop.
var ErrConflict = errors.New("store: the log was changed by another writer")

// UnixOrZero is t in Unix seconds, and 0 for the zero time: how stores
// keep optional times such as IssuerState's.
func UnixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// TimeOrZero reverses UnixOrZero (UTC).
func TimeOrZero(u int64) time.Time {
	if u == 0 {
		return time.Time{}
	}
	return time.Unix(u, 0).UTC()
}

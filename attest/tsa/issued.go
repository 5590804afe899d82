package tsa

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"
)

// IssuedMemory bounds how many of its latest responses a Signer
// remembers for [Authority.SkipSignatureCheckOfIssued]: the last
// IssuedMemory/2 to IssuedMemory of them. An agent submits an entry
// moments after the log's authority timestamped its signature, so even
// at thousands of entries a second the window is several seconds; an
// older response is verified in full. The memory is two maps of at most
// IssuedMemory/2 digests each: 2.5 MiB of heap, however long it runs
// (measured with runtime.MemStats).
const IssuedMemory = 1 << 15

// issued holds the SHA-256 digests of a Signer's latest responses in two
// generations: when cur is full it becomes prev, and the old prev is
// dropped whole (deleting from one map would keep its memory).
type issued struct {
	limit int // IssuedMemory, or smaller in tests

	mu        sync.Mutex
	cur, prev map[[sha256.Size]byte]struct{}

	hits atomic.Uint64 // responses found by has
}

func (m *issued) add(resp []byte) {
	sum := sha256.Sum256(resp)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil || len(m.cur) >= m.limit/2 {
		m.prev, m.cur = m.cur, make(map[[sha256.Size]byte]struct{}, m.limit/2)
	}
	m.cur[sum] = struct{}{}
}

func (m *issued) has(resp []byte) bool {
	sum := sha256.Sum256(resp)
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.cur[sum]
	if !ok {
		_, ok = m.prev[sum]
	}
	if ok {
		m.hits.Add(1)
	}
	return ok
}

// Recognized is how many times an authority made with
// SkipSignatureCheckOfIssued(s) found a response s issued and skipped its
// signature check.
func (s *Signer) Recognized() uint64 { return s.issued.hits.Load() }

// SkipSignatureCheckOfIssued returns a copy of a that does not check the
// signature of a response s produced, byte for byte: s signed exactly
// those bytes with the key a's leaf certifies, so the check could only
// fail if s itself had failed. Everything else is still checked (the
// token's shape, its certificate, its imprint against the signature it
// is presented with, its time against the chain's validity). A response
// s did not produce, or no longer remembers (IssuedMemory), is verified
// in full.
//
// It is for the process holding s: a log admitting entries whose
// signatures its own authority timestamped moments before, where the
// signature check costs most of the timestamp's verification. s must
// hold a's leaf.
func (a *Authority) SkipSignatureCheckOfIssued(s *Signer) (*Authority, error) {
	if len(s.chain) == 0 || !bytes.Equal(s.chain[0].Raw, a.leaf.Raw) {
		return nil, errors.New("tsa: the signer does not hold this authority's certificate")
	}
	c := *a
	c.issued = &s.issued
	return &c, nil
}

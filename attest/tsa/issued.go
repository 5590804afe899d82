package tsa

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"sync"
)

// IssuedMemory is how many of its latest responses a Signer remembers
// for [Authority.TrustIssuedBy]. An agent submits an entry moments after
// the log's authority timestamped its signature, so even at thousands
// of entries a second the window is several seconds; an older response
// is verified in full. The memory costs about 3.5 MiB of heap when full,
// up to about 11 MiB after it has turned over many times (docs/log.md).
const IssuedMemory = 1 << 15

// issued is the set of the SHA-256 digests of the last IssuedMemory
// responses a Signer produced, oldest evicted first.
type issued struct {
	limit int // IssuedMemory, or smaller in tests

	mu   sync.Mutex
	set  map[[sha256.Size]byte]struct{}
	ring [][sha256.Size]byte // insertion order; next is the oldest once full
	next int
}

func (m *issued) add(resp []byte) {
	sum := sha256.Sum256(resp)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.set == nil {
		m.set = make(map[[sha256.Size]byte]struct{})
	}
	if _, dup := m.set[sum]; dup {
		return
	}
	if len(m.ring) < m.limit {
		m.ring = append(m.ring, sum)
	} else {
		delete(m.set, m.ring[m.next])
		m.ring[m.next] = sum
		m.next = (m.next + 1) % m.limit
	}
	m.set[sum] = struct{}{}
}

func (m *issued) has(resp []byte) bool {
	sum := sha256.Sum256(resp)
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.set[sum]
	return ok
}

// TrustIssuedBy returns a copy of a that takes the signature of a
// response s produced, byte for byte, as checked: s signed exactly those
// bytes with the key a's leaf certifies, so checking its signature again
// can only succeed. Everything else is still checked (the token's shape,
// its certificate, its imprint against the signature it is presented
// with, its time against the chain's validity). A response s did not
// produce, or produced more than [IssuedMemory] responses ago, is
// verified in full.
//
// It is for the process holding s: a log admitting entries whose
// signatures its own authority timestamped moments before, where the
// signature check costs most of the timestamp's verification. s must
// hold a's leaf.
func (a *Authority) TrustIssuedBy(s *Signer) (*Authority, error) {
	if !bytes.Equal(s.chain[0].Raw, a.leaf.Raw) {
		return nil, errors.New("tsa: the signer does not hold this authority's certificate")
	}
	c := *a
	c.issued = &s.issued
	return &c, nil
}

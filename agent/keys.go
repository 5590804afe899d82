package agent

import (
	"crypto/ecdsa"
	"crypto/x509"
	"sync/atomic"
	"time"
)

// signingCert is a short-lived signing key and its certificate chain. The
// key exists only in this process's memory.
type signingCert struct {
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate // leaf first
	// received is when the agent got the certificate. Vault backdates
	// NotBefore (the role's not_before_duration, 30s by default), so the
	// renewal point counts from whichever is later.
	received time.Time
}

func (c *signingCert) leaf() *x509.Certificate { return c.chain[0] }

// keyHolder holds the current signing certificate; renewal swaps it
// atomically, so signers never see a key without its certificate.
type keyHolder struct {
	cur atomic.Pointer[signingCert]
}

// current returns the held certificate if it is valid at now.
func (h *keyHolder) current(now time.Time) (*signingCert, bool) {
	c := h.cur.Load()
	if c == nil || now.Before(c.leaf().NotBefore) || !now.Before(c.leaf().NotAfter) {
		return nil, false
	}
	return c, true
}

// renewAt is when c should be replaced: half way through the lifetime left
// when it arrived.
// A nil c must be replaced at once.
func renewAt(c *signingCert) time.Time {
	if c == nil {
		return time.Time{}
	}
	leaf := c.leaf()
	start := leaf.NotBefore
	if c.received.After(start) {
		start = c.received
	}
	return start.Add(leaf.NotAfter.Sub(start) / 2)
}

// Package tsatest holds test helpers for package tsa and its users. It
// imports nothing of Hallmark, so that tsa's own tests can use it.
package tsatest

import (
	"crypto"
	"io"
)

// FaultyKey signs with Key and flips a bit of every signature: a key
// that writes invalid signatures, for tests that make a skipped signature
// check visible (tsa.Authority.SkipSignatureCheckOfIssued).
type FaultyKey struct{ Key crypto.Signer }

// Public is Key's public key.
func (k FaultyKey) Public() crypto.PublicKey { return k.Key.Public() }

// Sign signs with Key and flips the last bit of the signature.
func (k FaultyKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := k.Key.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	sig[len(sig)-1] ^= 1
	return sig, nil
}

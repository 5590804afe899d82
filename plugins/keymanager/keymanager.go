// Package keymanager holds the types that every key manager (local, vault)
// shares for signing-CA rotation, so that the server can drive any of them
// through the same steps without importing a particular one: prepare a new
// issuer (published, not yet used), activate it (SignCSR signs with it), and
// revoke an old one. Tainting is the server's business, not the key
// manager's.
package keymanager

import (
	"crypto/x509"
	"errors"
)

// Issuer is one CA a key manager can sign with.
type Issuer struct {
	// ID is stable and safe to print: Vault's issuer_id for vault; for
	// local, the hex of the first 16 bytes of the SHA-256 of the CA
	// certificate's DER.
	ID string
	// Chain is the issuing CA first, the root last.
	Chain []*x509.Certificate
	// Active is set on the one issuer SignCSR signs with.
	Active bool
	// Revoked issuers never sign again (vault: pki/issuer/REF/revoke;
	// local: its key is destroyed).
	Revoked bool
}

// ErrUnknownIssuer is wrapped by errors about an issuer ID the key manager
// does not know.
var ErrUnknownIssuer = errors.New("keymanager: unknown issuer")

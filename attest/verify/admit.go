package verify

import (
	"crypto/x509"
	"errors"
	"time"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
)

// Entry is what a transparency log is asked to admit: a signed envelope,
// its signing certificate and, when the signer obtained one when it
// signed, an RFC 3161 timestamp over the envelope's signature.
type Entry struct {
	Envelope    *dssepb.Envelope
	Certificate *x509.Certificate
	// Timestamp is a DER TimeStampResp over the envelope's signature, or
	// nil.
	Timestamp []byte
}

// Admission is what Admit established about an entry.
type Admission struct {
	// Time is the trusted time every check used: the entry's own
	// timestamp when it has one (Timestamped), else the time given to
	// Admit, at which the log timestamps it.
	Time        time.Time
	Timestamped bool
	// Subjects are the statement's subjects.
	Subjects []Subject
	// BuilderID is the statement's builder.id, the certificate's SPIFFE
	// ID.
	BuilderID string
	// Issuer is the issuing CA certificate the signing certificate
	// chained through (the first of its trusted-root chain).
	Issuer *x509.Certificate
}

// Admit runs the checks of [Verify] that a transparency log must see pass
// before it integrates an entry, in Verify's order and with Verify's own
// code, so that a log never admits what its verifiers would refuse:
//
//	signature  the one DSSE signature verifies with the certificate's key
//	timestamp  if the entry carries a timestamp: by a timestamp authority
//	           of the trusted root, over the signature; its time is the
//	           time of every later check. Otherwise that time is now, when
//	           the log timestamps the entry itself.
//	validity   the certificate was valid at that time
//	chain      it chains, for code signing, to a certificate authority
//	           trusted at that time (package attest/trust: validity
//	           windows, taint, revocation)
//	statement  the payload is an in-toto Statement v1
//	predicate  SLSA Provenance v1 whose builder.id is the certificate's
//	           SPIFFE ID
//
// Verify's checks of the log entry itself (there is none yet) and of the
// consumer's artifacts and policy are left out. So an entry timestamped
// when it was signed may be admitted late, after an outage and after its
// certificate expired, as long as all of the above held at its
// timestamp. The error is a [*CheckError] naming the failed check.
func (tr *TrustedRoot) Admit(e Entry, now time.Time) (*Admission, error) {
	if e.Envelope == nil || e.Certificate == nil {
		return nil, errors.New("verify: admit: no envelope or no certificate")
	}
	payload, err := checkSignature(e.Envelope, e.Certificate)
	if err != nil {
		return nil, err
	}
	a := &Admission{Time: now}
	if e.Timestamp != nil {
		t, err := tr.verifyTimestamp(e.Timestamp, e.Envelope.GetSignatures()[0].GetSig())
		if err != nil {
			return nil, fail(CheckTimestamp, err)
		}
		a.Time, a.Timestamped = t, true
	}
	signed, err := tr.checkSigned(e.Certificate, a.Time, payload)
	if err != nil {
		return nil, err
	}
	a.Subjects = signed.st.subjects
	a.BuilderID = signed.prov.builderID
	a.Issuer = signed.ca.issuer
	return a, nil
}

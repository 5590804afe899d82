package spireadmin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"
)

// Holder is what a TLS client sees of a service's X509-SVID (hallmark-server's,
// say) and which of the server's authorities signed it.
type Holder struct {
	Address  string    `json:"address"`
	SPIFFEID string    `json:"spiffe_id,omitempty"`
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
	// SignedBy is the SVID's Authority Key ID: the ID of the authority
	// that signed it.
	SignedBy string `json:"signed_by,omitempty"`
	// Role is SignedBy's role in the state (active, prepared, old), or
	// empty when it is in no slot.
	Role string `json:"role,omitempty"`
	// Trusted says whether the SVID chains to an authority of the current
	// bundle.
	Trusted bool   `json:"trusted"`
	Error   string `json:"error,omitempty"`
}

// PeerSVID reads the certificate chain that the TLS server at addr
// (host:port) presents. It does not judge it; Holder does.
func PeerSVID(ctx context.Context, addr string) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	conf := &tls.Config{
		// Only reads the chain, which Holder then checks against the bundle.
		InsecureSkipVerify: true, //nolint:gosec // see above
		NextProtos:         []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			return nil
		},
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: conf}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
	}
	if len(chain) == 0 {
		if err == nil {
			err = errors.New("no certificate presented")
		}
		return nil, fmt.Errorf("spireadmin: SVID of %s: %w", addr, err)
	}
	return chain, nil // a handshake refused after the server's certificate (no client SVID) is fine
}

// Holder describes the SVID chain a service at addr presented, against s.
func (s *State) Holder(addr string, chain []*x509.Certificate) Holder {
	leaf := chain[0]
	h := Holder{Address: addr, Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter.UTC(), SignedBy: SignedBy(leaf)}
	if len(leaf.URIs) == 1 {
		h.SPIFFEID = leaf.URIs[0].String()
	}
	for _, slot := range []struct {
		a    *Authority
		role string
	}{{s.Active, RoleActive}, {s.Prepared, RolePrepared}, {s.Old, RoleOld}} {
		if slot.a != nil && slot.a.ID == h.SignedBy {
			h.Role = slot.role
		}
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, b := range s.Bundle {
		if b.cert != nil {
			roots.AddCert(b.cert)
		}
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	h.Trusted = err == nil
	return h
}

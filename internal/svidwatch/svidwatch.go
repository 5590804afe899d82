// Package svidwatch follows a daemon's own X509-SVID as SPIRE rotates it,
// logging each new one; hallmark-server and hallmark-agent both use it.
package svidwatch

import (
	"context"
	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
)

// Source is the part of workloadapi.X509Source that Watch needs.
type Source interface {
	x509svid.Source
	Updated() <-chan struct{}
}

// Watch calls onChange with the leaf of every distinct X509-SVID src holds,
// the first included, and rotated=true for every one after the first,
// until ctx ends.
func Watch(ctx context.Context, src Source, log *zap.Logger, onChange func(leaf *x509.Certificate, rotated bool)) {
	var serial string
	for {
		if svid, err := src.GetX509SVID(); err == nil {
			leaf := svid.Certificates[0]
			if s := leaf.SerialNumber.Text(16); s != serial {
				rotated := serial != ""
				serial = s
				log.Info("X509-SVID updated",
					zap.String("spiffe_id", svid.ID.String()),
					zap.String("serial", s),
					zap.Time("not_after", leaf.NotAfter),
					zap.Bool("rotated", rotated))
				onChange(leaf, rotated)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-src.Updated():
		}
	}
}

package agent

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// certValid returns a signing certificate valid from notBefore to notAfter;
// the checks under test read only the leaf's validity.
func certValid(notBefore, notAfter time.Time) *signingCert {
	return &signingCert{chain: []*x509.Certificate{{NotBefore: notBefore, NotAfter: notAfter}}}
}

func TestRenewAt(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		cert *signingCert
		want time.Time
	}{
		{name: "none held: at once", cert: nil, want: time.Time{}},
		{name: "5m certificate", cert: certValid(t0, t0.Add(5*time.Minute)), want: t0.Add(150 * time.Second)},
		{name: "1h certificate", cert: certValid(t0, t0.Add(time.Hour)), want: t0.Add(30 * time.Minute)},
		{name: "odd lifetime", cert: certValid(t0, t0.Add(5*time.Second)), want: t0.Add(2500 * time.Millisecond)},
		{name: "already expired", cert: certValid(t0.Add(-time.Hour), t0.Add(-time.Minute)), want: t0.Add(-30*time.Minute - 30*time.Second)},
		{name: "zero lifetime", cert: certValid(t0, t0), want: t0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, renewAt(tt.cert))
		})
	}
}

func TestKeyHolderCurrent(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	held := certValid(t0, t0.Add(5*time.Minute))
	tests := []struct {
		name   string
		held   *signingCert
		now    time.Time
		wantOK bool
	}{
		{name: "nothing held", held: nil, now: t0, wantOK: false},
		{name: "before NotBefore", held: held, now: t0.Add(-time.Nanosecond), wantOK: false},
		{name: "at NotBefore", held: held, now: t0, wantOK: true},
		{name: "mid life", held: held, now: t0.Add(150 * time.Second), wantOK: true},
		{name: "just before NotAfter", held: held, now: t0.Add(5*time.Minute - time.Nanosecond), wantOK: true},
		{name: "at NotAfter", held: held, now: t0.Add(5 * time.Minute), wantOK: false},
		{name: "after NotAfter", held: held, now: t0.Add(time.Hour), wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h keyHolder
			if tt.held != nil {
				h.cur.Store(tt.held)
			}
			got, ok := h.current(tt.now)
			require.Equal(t, tt.wantOK, ok)
			if tt.wantOK {
				require.Same(t, tt.held, got)
			} else {
				require.Nil(t, got)
			}
		})
	}
}

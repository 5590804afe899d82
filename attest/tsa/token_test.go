package tsa

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/hex"
	"io"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"
)

// signOnce signs each digest once and answers the same signature when
// asked to sign it again, so that two writers of the same bytes write the
// same token even though ECDSA signatures are randomized.
type signOnce struct {
	crypto.Signer
	mu   sync.Mutex
	sigs map[[sha256.Size]byte][]byte
}

func (s *signOnce) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sig, ok := s.sigs[[sha256.Size]byte(digest)]; ok {
		return sig, nil
	}
	sig, err := s.Signer.Sign(r, digest, opts)
	if err == nil {
		s.sigs[[sha256.Size]byte(digest)] = sig
	}
	return sig, err
}

// digitorusToken is the token github.com/digitorus/timestamp writes for
// Signer's settings, as Signer.Timestamp issued them until it wrote its
// own (token.go).
func digitorusToken(t testing.TB, s *Signer, signature []byte, at time.Time) []byte {
	t.Helper()
	h := sha256.Sum256(signature)
	ts := timestamp.Timestamp{
		HashAlgorithm:     crypto.SHA256,
		HashedMessage:     h[:],
		Time:              at.UTC().Truncate(time.Millisecond),
		Accuracy:          time.Second,
		Policy:            oidAnyPolicy,
		AddTSACertificate: true,
	}
	resp, err := ts.CreateResponseWithOpts(s.chain[0], s.key, crypto.SHA256)
	require.NoError(t, err)
	return resp
}

// TestTokenIsWhatDigitorusWrites: given the same serial number, signing
// time and signature, Signer's token is byte for byte the one
// github.com/digitorus/timestamp (Sigstore's TSA library, which Signer
// used before) writes with Signer's settings: so every verifier that
// accepted those accepts these.
func TestTokenIsWhatDigitorusWrites(t *testing.T) {
	base := newSigner(t, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s, err := NewSigner(&signOnce{Signer: base.key, sigs: map[[sha256.Size]byte][]byte{}}, base.chain)
	require.NoError(t, err)
	for _, at := range []time.Time{
		time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 25, 12, 0, 0, 999_999_999, time.UTC),
		time.Date(2031, 2, 28, 23, 59, 59, 500_000_000, time.FixedZone("east", 5*3600)),
	} {
		for _, sig := range [][]byte{[]byte("a DSSE signature"), make([]byte, 512)} {
			want := digitorusToken(t, s, sig, at)
			ref, err := timestamp.ParseResponse(want)
			require.NoError(t, err)
			_, attrs, _ := tokenParts(t, want)
			var signingTime time.Time
			for _, a := range attrs {
				if typeIs(a, oidSigningTime) {
					var attr struct {
						Type   asn1.ObjectIdentifier
						Values []time.Time `asn1:"set"`
					}
					_, err := asn1.Unmarshal(a, &attr)
					require.NoError(t, err)
					signingTime = attr.Values[0]
				}
			}
			require.False(t, signingTime.IsZero(), "digitorus wrote no signingTime")
			// Timestamp passes its caller's time, in any zone: the
			// signingTime written is still UTC, as digitorus's.
			signingTime = signingTime.In(time.FixedZone("west", -7*3600))

			got, err := s.token(tokenFields{imprint: sha256.Sum256(sig), genTime: at, serial: ref.SerialNumber, signingTime: signingTime}, rand.Reader)
			require.NoError(t, err)
			require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(got), "at %s", at)
		}
	}
}

// TestSigningTimeIsWhatEncodingASN1Writes: digitorus/pkcs7 writes
// signingTime as asn1.Marshal(time.Now().UTC()), so UTCTime from 1950
// through 2049 and GeneralizedTime outside; addTime must agree for every
// time Signer may be given, which TestTokenIsWhatDigitorusWrites (whose
// signingTime is digitorus's clock) cannot reach. (The reviewer's test.)
func TestSigningTimeIsWhatEncodingASN1Writes(t *testing.T) {
	for _, y := range []int{1, 1949, 1950, 2049, 2050, 9999} {
		for _, zone := range []int{-12, 0, 14} {
			loc := time.FixedZone("z", zone*3600)
			for _, at := range []time.Time{
				time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC).In(loc),
				time.Date(y, 12, 31, 23, 59, 59, 999_999_999, time.UTC).In(loc),
			} {
				want, err := asn1.Marshal(at.UTC())
				require.NoError(t, err)
				var b cryptobyte.Builder
				addTime(&b, at)
				got, err := b.Bytes()
				require.NoError(t, err, "%s", at)
				require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(got), "%s", at)
			}
		}
	}
}

// TestTokenSerialNumbers: each token has its own serial number (RFC 3161
// section 2.4.2), positive and of at most 160 bits, and serial numbers
// whose top bit is set (DER then prefixes a zero byte) or that are small
// are written as digitorus writes them.
func TestTokenSerialNumbers(t *testing.T) {
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := newSigner(t, at.Add(-time.Hour))
	seen := map[string]bool{}
	for range 64 {
		resp, err := s.Timestamp([]byte("sig"), at)
		require.NoError(t, err)
		ts, err := timestamp.ParseResponse(resp)
		require.NoError(t, err)
		require.Positive(t, ts.SerialNumber.Sign())
		require.LessOrEqual(t, ts.SerialNumber.BitLen(), 160)
		require.False(t, seen[ts.SerialNumber.String()], "serial number %s issued twice", ts.SerialNumber)
		seen[ts.SerialNumber.String()] = true
	}

	top := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 160), big.NewInt(1))
	for _, serial := range []*big.Int{big.NewInt(1), big.NewInt(127), big.NewInt(128), top} {
		f := tokenFields{imprint: sha256.Sum256([]byte("sig")), genTime: at, serial: serial, signingTime: at}
		resp, err := s.token(f, rand.Reader)
		require.NoError(t, err)
		ts, err := timestamp.ParseResponse(resp)
		require.NoError(t, err, "serial %s", serial)
		require.Zero(t, ts.SerialNumber.Cmp(serial), "serial %s read back as %s", serial, ts.SerialNumber)
	}
}

// BenchmarkTimestamp: a token as Signer writes it, against digitorus
// writing the same (docs/log.md quotes both).
func BenchmarkTimestamp(b *testing.B) {
	s := newSigner(b, time.Now().Add(-time.Hour))
	sig := []byte("a DSSE signature")
	b.Run("Signer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Timestamp(sig, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("digitorus", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			digitorusToken(b, s, sig, time.Now())
		}
	})
}

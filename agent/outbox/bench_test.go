package outbox

import (
	"bytes"
	"testing"
)

// BenchmarkFrame frames records the size of an attestation's: the put of
// a bundle with its certificate, and the settlement that logs it.
func BenchmarkFrame(b *testing.B) {
	bundle := bytes.Repeat([]byte(`{"a":"b"}`), 3500/9)
	cert := bytes.Repeat([]byte{0x30}, 700)
	logged := bytes.Repeat([]byte(`{"x":"y"}`), 6000/9)
	put := record{Op: "put", Item: &Item{ID: "0123456789abcdef0123456789abcdef", Bundle: bundle, Certificate: cert, Created: 1700000000}}
	settle := record{Op: "logged", ID: "0123456789abcdef0123456789abcdef", Logged: logged, At: 1700000001}
	for _, rec := range []record{put, settle} {
		b.Run(rec.Op, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := frame(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

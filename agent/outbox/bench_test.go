package outbox

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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

// BenchmarkPutsAcrossCompactions puts and settles attestation-sized
// items from 64 writers as fast as the disk takes them, everything
// retained, so that the file is rewritten several times, and reports how
// long puts waited: docs/outbox.md cites
//
//	go test -run '^$' -bench PutsAcrossCompactions -benchtime 40000x ./agent/outbox/
func BenchmarkPutsAcrossCompactions(b *testing.B) {
	o, err := Open(privateDir(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	bundle := bytes.Repeat([]byte(`{"a":"b"}`), 3500/9)
	cert := bytes.Repeat([]byte{0x30}, 700)
	logged := bytes.Repeat([]byte(`{"x":"y"}`), 6000/9)
	var (
		next atomic.Int64
		mu   sync.Mutex
		lat  []time.Duration
		wg   sync.WaitGroup
	)
	b.ResetTimer()
	for range 64 {
		wg.Go(func() {
			var mine []time.Duration
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				id := fmt.Sprintf("%032x", i)
				start := time.Now()
				if err := o.Put(Item{ID: id, Bundle: bundle, Certificate: cert}); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(start))
				if err := o.MarkLogged(id, logged); err != nil {
					b.Error(err)
					return
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.999), "p999-ms")
	b.ReportMetric(q(1), "max-ms")
	o.mu.Lock()
	b.ReportMetric(float64(o.size)/(1<<20), "file-MiB")
	o.mu.Unlock()
}

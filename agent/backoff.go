package agent

import (
	"math/rand/v2"
	"time"
)

// backoff yields retry delays that double from base up to max, each drawn
// uniformly from [d/2, d] so that agents restarted together spread out.
type backoff struct {
	base, max time.Duration
	next      time.Duration
	rand      func() float64 // in [0, 1)
}

func newBackoff(base, max time.Duration) *backoff {
	return &backoff{base: base, max: max, next: base, rand: rand.Float64}
}

func (b *backoff) delay() time.Duration {
	d := b.next
	b.next = min(b.next*2, b.max)
	return d/2 + time.Duration(b.rand()*float64(d/2))
}

func (b *backoff) reset() { b.next = b.base }

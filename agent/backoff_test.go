package agent

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackoffDelays(t *testing.T) {
	const almostOne = 1 - 1e-12
	tests := []struct {
		name      string
		base, max time.Duration
		rand      float64
		calls     int
		want      []time.Duration
	}{
		{
			name: "low draw: half of each step", base: time.Second, max: 8 * time.Second, rand: 0,
			want: []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second},
		},
		{
			name: "middle draw", base: time.Second, max: 8 * time.Second, rand: 0.5,
			want: []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second, 6 * time.Second, 6 * time.Second},
		},
		{
			name: "high draw stays below each step", base: time.Second, max: 8 * time.Second, rand: almostOne,
			want: []time.Duration{time.Second - 1, 2*time.Second - 1, 4*time.Second - 1, 8*time.Second - 1, 8*time.Second - 1},
		},
		{
			name: "max not a power-of-two multiple of base", base: 3 * time.Second, max: 10 * time.Second, rand: 0,
			want: []time.Duration{1500 * time.Millisecond, 3 * time.Second, 5 * time.Second, 5 * time.Second},
		},
		{
			name: "base equals max", base: time.Second, max: time.Second, rand: 0,
			want: []time.Duration{500 * time.Millisecond, 500 * time.Millisecond},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(tt.base, tt.max)
			b.rand = func() float64 { return tt.rand }
			var got []time.Duration
			for range tt.want {
				got = append(got, b.delay())
			}
			require.Equal(t, tt.want, got)
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	b := newBackoff(time.Second, 30*time.Second)
	r := rand.New(rand.NewPCG(1, 2))
	b.rand = r.Float64
	step := time.Second
	for i := range 1000 {
		if i%7 == 0 {
			b.reset()
			step = time.Second
		}
		d := b.delay()
		require.GreaterOrEqual(t, d, step/2, "delay %d", i)
		require.Less(t, d, step, "delay %d", i)
		step = min(step*2, 30*time.Second)
	}
}

func TestBackoffReset(t *testing.T) {
	b := newBackoff(time.Second, time.Minute)
	b.rand = func() float64 { return 0 }
	for range 10 {
		b.delay()
	}
	require.Equal(t, 30*time.Second, b.delay(), "at max")
	b.reset()
	require.Equal(t, 500*time.Millisecond, b.delay())
	require.Equal(t, time.Second, b.delay())
}

func TestNewUsesDefaultBackoff(t *testing.T) {
	a := newTestAgent(t, nil)
	require.Equal(t, time.Second, a.backoffBase)
	require.Equal(t, 30*time.Second, a.backoffMax)
}

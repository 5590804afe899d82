//go:build linux

package measure

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Must show: the counters of a Progress end exactly at the totals, over
// one call or several sharing it, with one worker or many, and never go
// backwards or past the totals while a reader samples them.
func TestHashWithProgress(t *testing.T) {
	modes(t, func(t *testing.T) {
		root := t.TempDir()
		sizes := map[string]int{
			"dist/empty":     0,
			"dist/small":     100,
			"dist/buf":       smallBufSize + 1,
			"dist/big":       3*bufSize + 17, // several reads
			"dist/sub/a.bin": 4096,
			"src/main.c":     42,
			"src/lib/x.h":    7,
		}
		for name, n := range sizes {
			writeFile(t, root, name, randomBytes(uint64(n), n))
		}
		for _, tc := range []struct {
			name                string
			products, materials []string
			workers             int
			wantFiles           int64
		}{
			{"products, one worker", []string{"dist"}, nil, 1, 5},
			{"products, many workers", []string{"dist"}, nil, 4, 5},
			{"products and materials", []string{"dist"}, []string{"src"}, 3, 7},
			{"same file twice", []string{"dist/small", "dist/../dist/small"}, nil, 2, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {

				var (
					p       Progress
					stop    = make(chan struct{})
					sampled sync.WaitGroup
					bad     error
				)
				sampled.Go(func() { bad = sample(&p, stop) })

				var wantBytes int64
				prods, mats, err := measureSelf(t, root, tc.products, tc.materials, Limits{Workers: tc.workers}, &p)
				require.NoError(t, err)
				got := append(prods, mats...)
				close(stop)
				sampled.Wait()
				require.NoError(t, bad)

				for _, d := range got {
					wantBytes += int64(sizes[d.Name])
				}
				require.Len(t, got, int(tc.wantFiles))
				require.Equal(t, tc.wantFiles, p.FilesTotal.Load(), "files total")
				require.Equal(t, tc.wantFiles, p.FilesDone.Load(), "files done")
				require.Equal(t, wantBytes, p.BytesTotal.Load(), "bytes total")
				require.Equal(t, wantBytes, p.BytesDone.Load(), "bytes done")
			})
		}
	})
}

// sample reads p until stop is closed and reports counters that went
// backwards or past their totals.
func sample(p *Progress, stop <-chan struct{}) error {
	var lastFiles, lastBytes int64
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		// Done first: the totals, read after, can only have grown.
		fd, bd := p.FilesDone.Load(), p.BytesDone.Load()
		ft, bt := p.FilesTotal.Load(), p.BytesTotal.Load()
		switch {
		case fd < lastFiles || bd < lastBytes:
			return fmt.Errorf("went backwards: files %d after %d, bytes %d after %d", fd, lastFiles, bd, lastBytes)
		case fd > ft || bd > bt:
			return fmt.Errorf("past the totals: files %d/%d, bytes %d/%d", fd, ft, bd, bt)
		}
		lastFiles, lastBytes = fd, bd
		runtime.Gosched()
	}
}

// Must show: a failed call leaves the done counts short of the totals,
// and the nil Progress of Hash counts nothing without failing.
func TestHashWithProgressFailure(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "a", []byte("a"))
	var p Progress
	_, _, err := measureSelf(t, root, []string{"a"}, []string{"missing"}, Limits{}, &p)
	require.ErrorIs(t, err, ErrNotFound)
	require.Zero(t, p.FilesTotal.Load(), "the walk failed before listing anything")

	_, _, err = measureSelf(t, root, []string{"a"}, nil, Limits{}, nil)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	root, err = filepath.EvalSymlinks(root)
	require.NoError(t, err)
	_, _, err = Measure(ctx, asSelf(t), root, []string{"a"}, nil, Limits{}, &p)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, p.FilesDone.Load())
}

// BenchmarkHashWithProgress is BenchmarkHash counting into a Progress: the
// cost is one atomic add per read of up to 1 MiB, lost in the noise.
func BenchmarkHashWithProgress(b *testing.B) {
	const files, size = 64, 1 << 20
	root := b.TempDir()
	for i := range files {
		writeFile(b, root, fmt.Sprintf("d/f%02d", i), randomBytes(uint64(i), size))
	}
	c := asSelf(b)
	for _, withProgress := range []bool{false, true} {
		b.Run(fmt.Sprintf("progress=%v", withProgress), func(b *testing.B) {
			b.SetBytes(files * size)
			for b.Loop() {
				var p *Progress
				if withProgress {
					p = &Progress{}
				}
				got, _, err := Measure(context.Background(), c, root, []string{"."}, nil, Limits{}, p)
				if err != nil || len(got) != files {
					b.Fatal(len(got), err)
				}
			}
		})
	}
}

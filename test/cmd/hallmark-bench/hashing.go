package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hallmark-dev/hallmark/agent/measure"
)

// Sizes of the hashing figure's tree: 1 GiB in 1024 files of 1 MiB, in 32
// directories.
const (
	hashFiles    = 1024
	hashFileSize = 1 << 20
	hashDirs     = 32
	hashRuns     = 3 // best of
)

// benchHashing measures measure.Hash (default limits and workers) over 1 GiB
// of warm files against the floor of sha256sum over the same files, split
// across GOMAXPROCS concurrent sha256sum processes. It also reports, as a
// stricter floor for the confinement's cost, plain Go (os.Open and
// crypto/sha256, as many goroutines) over the same files.
func benchHashing(ctx context.Context, dir string) ([]Result, error) {
	sha256sum, err := exec.LookPath("sha256sum")
	if err != nil {
		return nil, err
	}
	names, err := writeHashTree(dir)
	if err != nil {
		return nil, err
	}
	// Warm the page cache: every run reads from memory.
	if _, err := plainHash(ctx, dir, names, 1); err != nil {
		return nil, err
	}
	procs := runtime.GOMAXPROCS(0)

	var digests []measure.Digest
	var sums []byte
	best := [3]time.Duration{1 << 62, 1 << 62, 1 << 62} // measure, sha256sum, plain Go
	for range hashRuns {
		start := time.Now()
		digests, err = measure.Hash(ctx, dir, []string{"."}, measure.Limits{})
		if err != nil {
			return nil, err
		}
		best[0] = min(best[0], time.Since(start))

		start = time.Now()
		sums, err = sha256sumParallel(ctx, sha256sum, dir, names, procs)
		if err != nil {
			return nil, err
		}
		best[1] = min(best[1], time.Since(start))

		start = time.Now()
		if _, err := plainHash(ctx, dir, names, procs); err != nil {
			return nil, err
		}
		best[2] = min(best[2], time.Since(start))
	}
	if err := sameDigests(digests, sums); err != nil {
		return nil, err
	}

	secs, floor, plain := best[0].Seconds(), best[1].Seconds(), best[2].Seconds()
	mib := float64(hashFiles*hashFileSize) / (1 << 20)
	perCore := func(s float64) float64 { return mib / s / float64(procs) }
	return []Result{
		{Name: "hash_1GiB_many_files", Value: secs, Unit: "s", Floor: floor},
		{Name: "hash_per_core", Value: perCore(secs), Unit: "MiB/s", Floor: perCore(floor), Rate: true},
		{Name: "hash_1GiB_vs_plain_go", Value: secs, Unit: "s", Floor: plain, MaxRatio: 1.1}, // issue #15
	}, nil
}

// writeHashTree writes the figure's files of random content in dir and
// returns their slash-separated names relative to dir.
func writeHashTree(dir string) ([]string, error) {
	rng := rand.NewChaCha8([32]byte{'h', 'a', 's', 'h'})
	buf := make([]byte, hashFileSize)
	names := make([]string, hashFiles)
	for i := range names {
		names[i] = fmt.Sprintf("d%02d/f%04d", i%hashDirs, i)
		p := filepath.Join(dir, filepath.FromSlash(names[i]))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		_, _ = rng.Read(buf)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			return nil, err
		}
	}
	return names, nil
}

// sha256sumParallel runs procs sha256sum processes at once, each over its
// share of names, and returns their output in the order of names.
func sha256sumParallel(ctx context.Context, bin, dir string, names []string, procs int) ([]byte, error) {
	outs := make([]bytes.Buffer, procs)
	cmds := make([]*exec.Cmd, 0, procs)
	for i := range procs {
		lo, hi := i*len(names)/procs, (i+1)*len(names)/procs
		if lo == hi {
			continue
		}
		cmd := exec.CommandContext(ctx, bin, names[lo:hi]...)
		cmd.Dir = dir
		cmd.Stdout = &outs[i]
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		cmds = append(cmds, cmd)
	}
	var firstErr error
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("sha256sum: %w", err)
		}
	}
	var all []byte
	for i := range outs {
		all = append(all, outs[i].Bytes()...)
	}
	return all, firstErr
}

// plainHash hashes names in dir with os.Open and crypto/sha256 on workers
// goroutines: no confinement, no limits.
func plainHash(ctx context.Context, dir string, names []string, workers int) ([]string, error) {
	sums := make([]string, len(names))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for i := w; i < len(names); i += workers {
				if err := ctx.Err(); err != nil {
					errs[w] = err
					return
				}
				f, err := os.Open(filepath.Join(dir, filepath.FromSlash(names[i])))
				if err != nil {
					errs[w] = err
					return
				}
				h := sha256.New()
				_, err = io.CopyBuffer(h, f, buf)
				f.Close()
				if err != nil {
					errs[w] = err
					return
				}
				sums[i] = hex.EncodeToString(h.Sum(nil))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return sums, nil
}

// sameDigests checks that measure.Hash and sha256sum agree on every file.
func sameDigests(digests []measure.Digest, sums []byte) error {
	want := make(map[string]string, len(digests))
	sc := bufio.NewScanner(bytes.NewReader(sums))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			return fmt.Errorf("sha256sum printed %q", sc.Text())
		}
		want[name] = sum
	}
	if len(digests) != len(want) {
		return fmt.Errorf("measure.Hash found %d files, sha256sum %d", len(digests), len(want))
	}
	for _, d := range digests {
		if want[d.Name] != d.SHA256 {
			return fmt.Errorf("%s: measure.Hash says %s, sha256sum %s", d.Name, d.SHA256, want[d.Name])
		}
	}
	return nil
}

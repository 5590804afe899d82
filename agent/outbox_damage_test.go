package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hallmark-dev/hallmark/agent/outbox"
)

// queuedOutbox writes an outbox of n queued attestations into dir, and
// returns the file's bytes and each attestation's envelope, in order.
// The envelopes are small: the runs below read the file thousands of
// times, and what they test is the framing, not the content.
func queuedOutbox(t *testing.T, dir string, n int) ([]byte, [][]byte) {
	t.Helper()
	ob, err := outbox.Open(dir, outbox.Options{})
	require.NoError(t, err)
	var envs [][]byte
	for i := range n {
		env := fmt.Appendf(nil, `{"payload":"%s","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"%s"}]}`,
			base64.StdEncoding.EncodeToString(fmt.Appendf(nil, `{"_type":"https://in-toto.io/Statement/v1","n":%d}`, i)),
			base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{byte(i)}, 71)))
		require.NoError(t, ob.Put(outbox.Item{ID: fmt.Sprintf("inv-%03d", i), Envelope: env, Certificate: bytes.Repeat([]byte{0x30}, 64)}))
		envs = append(envs, env)
	}
	require.NoError(t, ob.Close())
	data, err := os.ReadFile(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)
	return data, envs
}

// newHeldCert is a signing certificate for the test agent's SPIFFE ID
// from a throwaway CA, as renewal installs it.
func newHeldCert(t *testing.T) *signingCert {
	t.Helper()
	key := newP256(t)
	var chain []*x509.Certificate
	for _, der := range newTestCA(t).issue(t, key.Public(), []spiffeid.ID{agentID}, time.Now().Add(-time.Minute), time.Hour) {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		chain = append(chain, c)
	}
	return &signingCert{key: key, chain: chain, received: time.Now()}
}

// recordBounds lists where each record of a version 2 outbox file lies,
// read as docs/outbox.md specifies: a 16-byte header, then per record a
// 16-byte head (marker, length, body CRC, head CRC) and length bytes of
// body.
func recordBounds(t *testing.T, data []byte) [][2]int {
	t.Helper()
	require.GreaterOrEqual(t, len(data), 16)
	require.Equal(t, "\x89HMOUTB\n", string(data[:8]), "magic")
	require.Equal(t, uint32(2), binary.LittleEndian.Uint32(data[8:12]), "version")
	var out [][2]int
	for pos := 16; pos < len(data); {
		require.Equal(t, []byte{0xff, 0xfe, 'H', 'M'}, data[pos:pos+4], "marker at %d", pos)
		end := pos + 16 + int(binary.LittleEndian.Uint32(data[pos+4:]))
		out = append(out, [2]int{pos, end})
		pos = end
	}
	return out
}

// openDamaged writes data as the outbox file of a fresh directory and
// opens it as the agent does, then drains it into a fresh log.
func openDamaged(t *testing.T, data []byte) (*Agent, *testLog, string, *observer.ObservedLogs) {
	t.Helper()
	dir := filepath.Join(fastTempDir(t), "outbox")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "outbox.log"), data, 0o600))
	a, logs := outboxAgentIn(t, dir)
	l := newTestLog()
	drain(t, a, direct{l}, 5)
	return a, l, dir, logs
}

// Must show: one byte flipped at a random offset of an outbox holding 100
// records, 1,000 times (one flip per run): every intact record is
// delivered exactly once every time, and the damaged one is moved aside,
// kept byte for byte, and counted (metric, status). A flip in the file
// header loses no record; the header is what is moved aside.
func TestOutboxByteFlipLosesOnlyTheDamagedRecord(t *testing.T) {
	const records, runs = 100, 1000
	data, envs := queuedOutbox(t, filepath.Join(t.TempDir(), "outbox"), records)
	bounds := recordBounds(t, data)
	require.Len(t, bounds, records)

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, file of %d bytes", seed, len(data))
	r := rand.New(rand.NewPCG(seed, 0))
	headerHits := 0
	// A few offsets chosen (the file header, the first record's head,
	// the last byte), the rest at random.
	chosen := []int{0, 7, 9, 13, 16, 19, 21, 25, 31, 32, len(data) - 1}
	for run := range runs {
		off, flip := r.IntN(len(data)), byte(1+r.IntN(255))
		if run < len(chosen) {
			off = chosen[run]
		}
		damaged := bytes.Clone(data)
		damaged[off] ^= flip
		hit, span := -1, [2]int{0, 16} // the header, unless a record
		for i, b := range bounds {
			if b[0] <= off && off < b[1] {
				hit, span = i, b
			}
		}
		if hit < 0 {
			headerHits++
		}
		what := fmt.Sprintf("run %d (seed %d): byte %d ^= %#x, in record %d", run, seed, off, flip, hit)

		a, l, dir, logs := openDamaged(t, damaged)
		for i, env := range envs {
			want := 1
			if i == hit {
				want = 0
			}
			require.Equal(t, want, l.times(env), "%s: record %d delivered", what, i)
		}
		d := a.outbox.Damaged()
		require.Len(t, d, 1, what)
		require.Equal(t, int64(span[0]), d[0].Offset, what)
		kept, err := os.ReadFile(d[0].File)
		require.NoError(t, err, what)
		require.Equal(t, damaged[span[0]:span[1]], kept, "%s: the damaged record kept as it was", what)
		require.Equal(t, 1.0, metricValue(t, a.metrics.outboxDamaged), what)
		require.Equal(t, 1, a.Status().Outbox.Damaged, what)
		// docs/outbox.md: an error in the agent's log for the stretch.
		said := logs.FilterMessage("A damaged outbox record was moved aside; the records before and after it are kept").All()
		require.Len(t, said, 1, what)
		require.Equal(t, zapcore.ErrorLevel, said[0].Level, what)
		require.Equal(t, map[string]any{"offset": int64(span[0]), "bytes": int64(span[1] - span[0]), "kept_in": d[0].File}, said[0].ContextMap(), what)
		require.NoError(t, a.outbox.Close())
		require.NoError(t, os.RemoveAll(dir))
	}
	t.Logf("%d runs, %d flips in the file header", runs, headerHits)
}

// Must show: a final record cut short anywhere (a crash mid-write) loses
// only that record: the 99 before it are delivered once each, nothing is
// counted as damaged.
func TestOutboxTruncatedLastRecordLosesOnlyIt(t *testing.T) {
	const records = 100
	data, envs := queuedOutbox(t, filepath.Join(t.TempDir(), "outbox"), records)
	last := recordBounds(t, data)[records-1]
	cuts := []int{last[0] + 1, last[0] + 4, last[0] + 15, last[0] + 16, last[0] + 17, last[1] - 1}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	for range 50 {
		cuts = append(cuts, last[0]+1+r.IntN(last[1]-last[0]-1))
	}
	for _, cut := range cuts {
		a, l, dir, _ := openDamaged(t, data[:cut])
		for i, env := range envs {
			want := 1
			if i == records-1 {
				want = 0
			}
			require.Equal(t, want, l.times(env), "cut at %d (last record %v): record %d delivered", cut, last, i)
		}
		require.Empty(t, a.outbox.Damaged(), "cut at %d", cut)
		require.Zero(t, metricValue(t, a.metrics.outboxDamaged))
		require.NoError(t, a.outbox.Close())
		require.NoError(t, os.RemoveAll(dir))
	}
}

// fastTempDir is a temporary directory on tmpfs (/dev/shm) when there is
// one: these tests check what is read back from many damaged files, not
// durability, and fsync would take most of their time on a disk.
func fastTempDir(t *testing.T) string {
	t.Helper()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "hallmark-outbox-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// The agent refuses to start on an outbox it cannot read (a newer format
// version), says why, and leaves the file as it was.
func TestAgentRefusesAnOutboxItCannotRead(t *testing.T) {
	dataDir := t.TempDir()
	path := filepath.Join(dataDir, "outbox", "outbox.log")
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o700))
	newer := []byte("\x89HMOUTB\n\x03\x00\x00\x00")
	newer = binary.LittleEndian.AppendUint32(newer, crc32.Checksum(newer, crc32.MakeTable(crc32.Castagnoli)))
	newer = append(newer, "records of a format from the future"...)
	require.NoError(t, os.WriteFile(path, newer, 0o600))

	a := newTestAgent(t, nil)
	a.cfg.DataDir = dataDir
	err := a.Run(context.Background())
	require.ErrorIs(t, err, outbox.ErrUnknownFormat)
	require.ErrorContains(t, err, "format version 3 is not one this agent reads (1 to 2)")
	after, rerr := os.ReadFile(path)
	require.NoError(t, rerr)
	require.Equal(t, newer, after, "left as it was")
}

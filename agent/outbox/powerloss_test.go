package outbox

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// A power loss at any moment loses nothing the outbox acknowledged: what
// an fsync made durable holds every acknowledged put and settlement, and
// Open reads it whatever the unsynced bytes after it became.
//
// The outbox runs on the real file system, with its fsyncs, its rename
// and its directory's fsync followed by a model of what a power loss
// keeps (disk): a file's content as of its last fsync, and the directory's
// names as of its last fsync. Before each of those steps, and once all is
// closed, the test records the directory as a power loss then would leave
// it, in several ways:
//
//   - each file as of its last fsync;
//   - with every byte written since (what a process crash leaves);
//   - with half of them (a write cut short);
//   - with as many zero bytes (blocks allocated, never written);
//   - after a rename not yet made durable by the directory's fsync, with
//     the new names too (a file system may commit the rename first).
//
// Each recorded directory is then opened as an outbox and checked against
// what had been acknowledged when it was recorded (checkPowerLoss).
// TestKilledMidCompaction covers process crashes, which lose nothing the
// kernel holds.
func TestPowerLossLosesNothingAcknowledged(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 16 << 10})
	require.NoError(t, err)
	d := followDisk(t, o, dir)

	const writers, perWriter = 4, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				id := fmt.Sprintf("w%d-%d", w, i)
				d.said.record(func(s *said) { s.putting[id] = true })
				if err := o.Put(crashItem(id)); err != nil {
					t.Error(err)
					return
				}
				d.said.record(func(s *said) { s.acked[id] = true })
				if i%4 != 3 {
					continue
				}
				// Settle the last four, one by one or as a batch.
				var ss []Settlement
				for j := i - 3; j <= i; j++ {
					sid := fmt.Sprintf("w%d-%d", w, j)
					if j%2 == 0 {
						ss = append(ss, Settlement{ID: sid, Logged: crashLogged(sid)})
					} else {
						ss = append(ss, Settlement{ID: sid, Reason: "refused " + sid})
					}
				}
				if w%2 == 1 {
					ss = ss[:1] // and leave the rest pending
				}
				d.said.record(func(s *said) {
					for _, st := range ss {
						s.settling[st.ID] = settlementKind(st)
					}
				})
				if err := o.Settle(ss); err != nil {
					t.Error(err)
					return
				}
				d.said.record(func(s *said) {
					for _, st := range ss {
						s.settled[st.ID] = settlementKind(st)
					}
				})
			}
		})
	}
	wg.Wait()
	require.NoError(t, o.Close())
	d.capture("after Close")

	kinds := map[string]int{}
	torn := 0
	for _, c := range d.crashes {
		kinds[c.at]++
		if checkPowerLoss(t, c) {
			torn++
		}
	}
	t.Logf("%d directories a power loss could leave, by the step it came before: %v; %d ended in a record cut short", len(d.crashes), kinds, torn)
	for _, at := range []string{"before an fsync", "before a rename", "before the directory's fsync", "after the rename, its directory not yet synced"} {
		require.NotZero(t, kinds[at], "no power loss %s: the workload did not reach it", at)
	}
	require.NotZero(t, torn, "no power loss left a record cut short")
}

func settlementKind(s Settlement) string {
	if s.Logged != nil {
		return "logged"
	}
	return "refused"
}

// said is what the writers were told and asked, as a power loss finds
// it: what the crash test's children report, and the puts asked for.
type said struct {
	childSaid                 // expired stays empty: retention drops nothing
	putting   map[string]bool // Put called
}

// saidLog is said under a lock.
type saidLog struct {
	mu sync.Mutex
	s  said
}

func newSaidLog() *saidLog {
	return &saidLog{s: said{childSaid: newChildSaid(), putting: map[string]bool{}}}
}

func (l *saidLog) record(f func(*said)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.s)
}

func (l *saidLog) copy() said {
	l.mu.Lock()
	defer l.mu.Unlock()
	return said{
		childSaid: childSaid{acked: maps.Clone(l.s.acked), settling: maps.Clone(l.s.settling), settled: maps.Clone(l.s.settled), expired: map[string]bool{}},
		putting:   maps.Clone(l.s.putting),
	}
}

// powerLoss is a directory as a power loss would leave it, and what had
// been acknowledged by then.
type powerLoss struct {
	at, variant string
	files       map[string][]byte // name in the outbox's directory: content
	said        said
}

// disk follows what the outbox's fsyncs made durable.
type disk struct {
	t    *testing.T
	dir  string
	said *saidLog

	mu      sync.Mutex
	durable map[uint64][]byte   // a file's content as of its last fsync
	handles map[uint64]*os.File // to read what was written after it
	names   map[string]uint64   // the directory as of its last fsync
	renamed map[string]uint64   // the directory after the renames since, if any
	crashes []powerLoss
}

// followDisk installs disk's hooks in o, opened in dir with nothing
// written since.
func followDisk(t *testing.T, o *Outbox, dir string) *disk {
	d := &disk{t: t, dir: dir, said: newSaidLog(), durable: map[uint64][]byte{}, handles: map[uint64]*os.File{}}
	o.mu.Lock()
	defer o.mu.Unlock()
	d.names = d.listDir() // Open synced the directory and the file
	for _, ino := range d.names {
		d.durable[ino] = d.readAll(o.file)
		d.handles[ino] = o.file
	}
	o.syncFile, o.rename, o.syncDir, o.openAppend = d.syncFile, d.rename, d.syncDir, d.openAppend
	return d
}

func (d *disk) syncFile(f *os.File) error {
	d.capture("before an fsync")
	if err := f.Sync(); err != nil {
		return err
	}
	// f's writer is the caller, which waits: nothing is written to f
	// meanwhile.
	b := d.readAll(f)
	d.mu.Lock()
	defer d.mu.Unlock()
	ino := inoOf(d.t, f)
	d.durable[ino], d.handles[ino] = b, f
	return nil
}

func (d *disk) rename(from, to string) error {
	d.capture("before a rename")
	if err := os.Rename(from, to); err != nil {
		return err
	}
	d.mu.Lock()
	d.renamed = d.listDir()
	d.mu.Unlock()
	d.capture("after the rename, its directory not yet synced")
	return nil
}

func (d *disk) syncDir(dir string) error {
	d.capture("before the directory's fsync")
	if err := syncDirOf(dir); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names, d.renamed = d.listDir(), nil
	return nil
}

func (d *disk) openAppend(path string) (*os.File, error) {
	f, err := openAppendOf(path)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.handles[inoOf(d.t, f)] = f
	return f, nil
}

// capture records the directory as a power loss now would leave it, in
// each way the test's comment lists.
func (d *disk) capture(at string) {
	// What was acknowledged, before the files are read: it was made
	// durable before; what was asked, after: whatever the files hold was
	// asked for by then.
	acked := d.said.copy()
	d.mu.Lock()
	defer d.mu.Unlock()
	var crashes []powerLoss
	defer func() {
		asked := d.said.copy()
		for _, c := range crashes {
			c.said.putting, c.said.settling = asked.putting, asked.settling
			d.crashes = append(d.crashes, c)
		}
	}()
	add := func(variant string, names map[string]uint64, tail func(synced, written []byte) []byte) {
		files := map[string][]byte{}
		for name, ino := range names {
			synced := d.durable[ino]
			written := d.readAll(d.handles[ino])
			if tail == nil || len(written) <= len(synced) || !bytes.HasPrefix(written, synced) {
				files[name] = synced
				continue
			}
			files[name] = append(bytes.Clone(synced), tail(synced, written)...)
		}
		crashes = append(crashes, powerLoss{at: at, variant: variant, files: files, said: acked})
	}
	add("as of the last fsyncs", d.names, nil)
	add("with every byte written since", d.names, func(synced, written []byte) []byte { return written[len(synced):] })
	add("with half of them", d.names, func(synced, written []byte) []byte {
		return written[len(synced) : len(synced)+(len(written)-len(synced))/2]
	})
	add("with as many zero bytes", d.names, func(synced, written []byte) []byte { return make([]byte, len(written)-len(synced)) })
	if d.renamed != nil {
		add("renamed, as of the last fsyncs", d.renamed, nil)
		add("renamed, with every byte written since", d.renamed, func(synced, written []byte) []byte { return written[len(synced):] })
	}
}

// listDir returns the regular files of the outbox's directory.
func (d *disk) listDir() map[string]uint64 {
	entries, err := os.ReadDir(d.dir)
	require.NoError(d.t, err)
	names := map[string]uint64{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		require.NoError(d.t, err)
		names[e.Name()] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return names
}

// readAll returns what f holds now, or nil when f is closed (the outbox
// closed a file it replaced).
func (d *disk) readAll(f *os.File) []byte {
	if f == nil {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	b := make([]byte, fi.Size())
	n, err := f.ReadAt(b, 0)
	if err != nil && err != io.EOF {
		return nil
	}
	return b[:n]
}

func inoOf(t *testing.T, f *os.File) uint64 {
	fi, err := f.Stat()
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

// checkPowerLoss opens c's directory as an outbox and checks it against
// what had been acknowledged, as checkAfterKill does after a kill: it
// opens, nothing is moved aside as damaged (what follows the last fsync
// is a tail), and nothing is there that was never put. It reports
// whether Open found a record cut short.
func checkPowerLoss(t *testing.T, c powerLoss) (torn bool) {
	t.Helper()
	where := fmt.Sprintf("power loss %s, %s", c.at, c.variant)
	dir := privateDir(t)
	for name, b := range c.files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
	o, err := Open(dir, Options{})
	require.NoError(t, err, where)
	defer o.Close()
	require.Empty(t, o.Damaged(), where)
	_, torn = o.Torn()
	for id := range snapshot(t, o) {
		require.True(t, c.said.putting[id], "%s: %s is there and was never put", where, id)
	}
	checkAfterKill(t, o, where, c.said.childSaid)
	return torn
}

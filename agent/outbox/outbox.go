// Package outbox is hallmark-agent's durable queue of signed envelopes on
// their way to the transparency log. An attestation is answered only after
// its envelope is on disk (fsync), so a crash or kill -9 loses nothing; the
// submitter drains the queue in batches, and the server's deduplication
// makes a resubmission after a crash return the entry already logged, so
// nothing is logged twice.
//
// The queue is one append-only file of checksummed records with group
// commit: concurrent Puts share one write and one fsync. The format is
// versioned and specified in docs/outbox.md. Damage isolates: a record
// that fails its checksum is moved aside into the damaged/ directory (kept
// for inspection, reported by Damaged) and every intact record before and
// after it is kept. A record cut short at the end (a crash mid-write,
// never acknowledged) is dropped, its bytes kept aside too (reported by
// Torn, not counted as damage). A file in a format this package does not
// know is left as it is and Open fails, and so does a directory or file
// that is not the agent's alone (ErrNotPrivate). The file is rewritten
// with only live records when it grows past a threshold; what the rewrite
// copies from the old file is checked first.
package outbox

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/internal/privdir"
)

// State of an item.
type State int

// States an item goes through.
const (
	Pending State = iota // on disk, not yet logged
	Logged               // the log accepted it
	Refused              // the log refused it; final
)

// Item is one signed envelope and what became of it.
type Item struct {
	ID          string `json:"id"`          // the invocation ID
	Bundle      []byte `json:"bundle"`      // the bundle as returned to the step (no tlog entry)
	Envelope    []byte `json:"envelope"`    // the DSSE envelope, protojson
	Certificate []byte `json:"certificate"` // the signing certificate, DER
	Created     int64  `json:"created"`     // Unix seconds

	State  State  `json:"-"`
	Logged []byte `json:"-"` // what logging added (see agent.loggedMaterial), when Logged
	Reason string `json:"-"` // why, when Refused
}

type record struct {
	Op     string `json:"op"` // put, logged, refused
	Item   *Item  `json:"item,omitempty"`
	ID     string `json:"id,omitempty"`
	Logged []byte `json:"tlog,omitempty"`
	Reason string `json:"reason,omitempty"`
	At     int64  `json:"at,omitempty"`
}

// Options tune an Outbox.
type Options struct {
	// Retention is how long logged and refused items stay readable
	// (GetBundle) before compaction drops them. Default 24h.
	Retention time.Duration
	// CompactAt is the file size that triggers a rewrite. Default 64 MiB.
	CompactAt int64
	Now       func() time.Time
	// Log receives what the outbox cannot return to a caller: a torn
	// tail dropped at Open (Warn), a compaction that failed or a record
	// found damaged by one, the outbox refusing every write (Error).
	// Nil: nothing is logged.
	Log *zap.Logger
	// OnBroken, when set, is called once, with Broken's error, when the
	// outbox comes to refuse every write. It runs with the outbox locked:
	// it must not block or call the Outbox.
	OnBroken func(error)
}

// Outbox is the durable queue. Its methods are safe for concurrent use.
//
// Pending items are held in memory whole, for the submitter. A settled
// item keeps only its ID, state, reason and time in memory: its bytes
// (bundle, envelope, certificate, what logging added) are read back from
// the file when asked for, so the memory an outbox takes does not grow
// with the items it retains.
type Outbox struct {
	path string
	opts Options
	log  *zap.Logger
	torn *Damage // the torn tail Open dropped, kept aside

	// syncDir and openAppend are syncDirOf and openAppendOf, replaced
	// by tests to make the steps after a compaction's rename fail; rename
	// is os.Rename, replaced by tests to look at the file as a crash right
	// after a compaction's rename would leave it (called under o.mu).
	syncDir    func(dir string) error
	openAppend func(path string) (*os.File, error)
	rename     func(from, to string) error
	// syncFile is (*os.File).Sync, replaced by tests to follow what an
	// fsync made durable (a power loss keeps only that).
	syncFile func(f *os.File) error
	// pause, when not nil, is called by a compaction in the background
	// at each step, without o.mu: "copying" (before it copies what it
	// keeps), "copied" (before it catches up with what was appended
	// meanwhile) and "catching up" (in each round, before it copies what
	// the round found); tests stop it there. It is also called with
	// "swapping" under o.mu, before the last step, where it must not
	// block.
	pause func(step string)
	// expiring, when not nil, is called under o.mu with the IDs of the
	// settled items a compaction drops as past retention, when it begins
	// (before it writes anything); it must be quick, and neither keep nor
	// change ids.
	expiring func(ids []string)

	mu       sync.Mutex
	cond     *sync.Cond // broadcast when an item changes state
	items    map[string]*slot
	order    []string // IDs in arrival order; settled ones are skipped lazily
	npending int
	// pendingBytes is the size of the pending items' bundles, envelopes
	// and certificates, which memory holds until they are settled.
	pendingBytes int64
	nrefused     int // refused items retained
	// compactAt is the size that triggers the next rewrite: at least
	// twice what the last rewrite kept, so retained items never make
	// every write a rewrite.
	compactAt int64
	file      *os.File // read and appended to
	size      int64
	queue     []pendingWrite
	// writing: a flush goroutine runs; writeInFlight: it is writing a
	// batch, without o.mu.
	writing       bool
	writeInFlight bool
	// compacting: a compaction runs in the background (one at a time);
	// swapping: it is swapping the file, and the flush loop waits.
	compacting bool
	swapping   bool
	closed     bool
	closing    atomic.Bool // set first by Close, read without o.mu
	// broken says why writes are refused after a failure that left
	// the file in memory and the one on disk apart.
	broken error
	// damaged: what Open and compactions moved aside.
	damaged []Damage
	// compactFailures counts compactions that failed.
	compactFailures int
	// waiting counts Wait calls under way.
	waiting int
}

// slot is an item and where its records lie in the file.
type slot struct {
	Item
	put, settle span
	// onDisk: the item's bytes were dropped from memory; read them
	// from put and settle.
	onDisk bool
}

// span is where a frame lies in the file; n is 0 when it is not there.
type span struct {
	off int64
	n   int
}

type pendingWrite struct {
	rec   []byte
	ends  []int           // where each record framed in rec ends
	apply func(at []span) // the in-memory change, made under mu once on disk
	done  chan error
}

// DamagedDir is the directory, in the outbox's, where damaged records are
// kept.
const DamagedDir = "damaged"

// ErrUnknownFormat is returned by Open for a file it cannot read: a
// format version it does not know, or no format at all. The file is left
// untouched.
var ErrUnknownFormat = errors.New("outbox: unknown format")

// ErrNotPrivate is returned by Open when the outbox directory or file is
// not the agent's alone: a symbolic link, or owned by another user, or
// open to group or others. Whoever can write there could make the agent
// drop or rewrite signed attestations, or (through links) write over any
// file the agent can.
var ErrNotPrivate = errors.New("outbox: not private to the agent")

// tornSuffix ends the name of a torn tail's file in DamagedDir; those are
// kept but not counted as damaged records.
const tornSuffix = ".torn"

// Open opens (or creates) the outbox in dir (created 0700) and replays it.
// The directory and file must be the agent's alone (ErrNotPrivate).
// Damaged records are moved aside first (see Damaged), and so is a torn
// tail (see Torn); a file Open cannot read fails it with
// ErrUnknownFormat, left as it is.
func Open(dir string, opts Options) (*Outbox, error) {
	if opts.Retention <= 0 {
		opts.Retention = 24 * time.Hour
	}
	if opts.CompactAt <= 0 {
		opts.CompactAt = 64 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	// data_dir and up (found by an outside review with data_dir 0777).
	if err := privdir.CheckAncestors(filepath.Dir(dir), "move the outbox aside, and the agent would drop what it queued"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotPrivate, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	o := &Outbox{
		path: filepath.Join(dir, "outbox.log"), opts: opts, log: opts.Log, items: map[string]*slot{},
		syncDir: syncDirOf, openAppend: openAppendOf, rename: os.Rename, syncFile: (*os.File).Sync,
	}
	o.cond = sync.NewCond(&o.mu)
	if err := checkPrivate(dir, true); err != nil {
		return nil, err
	}
	if err := checkPrivate(o.path, false); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := o.replay(); err != nil {
		return nil, err
	}
	if err := o.rewrite(); err != nil { // drop what replay cut or expired
		return nil, err
	}
	return o, nil
}

// replay reads every intact record, any version, and moves damaged ones
// aside; a torn tail is left for the rewrite that follows to drop.
func (o *Outbox) replay() error {
	data, err := os.ReadFile(o.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	s, err := scanFile(data)
	if err != nil {
		return fmt.Errorf("%w: %s: %w (the file is left as it is; move it aside to start with an empty outbox)", ErrUnknownFormat, o.path, err)
	}
	if err := o.keepDamaged(data, s.damaged); err != nil {
		return err
	}
	if s.torn > 0 {
		off := len(data) - s.torn
		name, err := o.keepAside(off, data[off:], tornSuffix)
		if err != nil {
			return fmt.Errorf("outbox: keep the torn tail: %w", err)
		}
		o.torn = &Damage{Offset: int64(off), Length: int64(s.torn), File: name}
		o.log.Warn("The outbox ended in a record cut short (a crash mid-write, never acknowledged); it was dropped and its bytes kept",
			zap.Int64("offset", o.torn.Offset), zap.Int64("bytes", o.torn.Length), zap.String("kept_in", name))
	}
	for _, rec := range s.records {
		o.apply(rec, span{}) // where they lie once rewritten
	}
	return nil
}

// keepDamaged writes each damaged stretch of data to a file of its own in
// DamagedDir, durably, before the rewrite drops it from the outbox.
func (o *Outbox) keepDamaged(data []byte, damaged [][2]int) error {
	for _, d := range damaged {
		name, err := o.keepAside(d[0], data[d[0]:d[1]], ".bin")
		if err != nil {
			return fmt.Errorf("outbox: keep damaged records: %w", err)
		}
		o.damaged = append(o.damaged, Damage{Offset: int64(d[0]), Length: int64(d[1] - d[0]), File: name})
	}
	return nil
}

// keepAside writes b, found at off of the file, durably to a file of its
// own in DamagedDir, named for the time, off and suffix.
func (o *Outbox) keepAside(off int, b []byte, suffix string) (string, error) {
	dir := filepath.Join(filepath.Dir(o.path), DamagedDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	stamp := o.opts.Now().UTC().Format("20060102T150405.000000000Z")
	name := filepath.Join(dir, fmt.Sprintf("%s-offset-%d%s", stamp, off, suffix))
	err := writeSynced(name, b)
	for i := 1; errors.Is(err, os.ErrExist) && i < 100; i++ { // the same stretch kept again
		name = filepath.Join(dir, fmt.Sprintf("%s-offset-%d-%d%s", stamp, off, i, suffix))
		err = writeSynced(name, b)
	}
	if err != nil {
		return "", err
	}
	return name, syncDirOf(dir)
}

// checkPrivate returns nil when path (a directory when dir, else a
// regular file) is not a symbolic link, is owned by the agent's effective
// user and is closed to group and others; else an ErrNotPrivate naming
// what is wrong and how to fix it. A path that does not exist is
// os.ErrNotExist.
func checkPrivate(path string, dir bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	perm, want, euid := fi.Mode().Perm(), os.FileMode(0o600), os.Geteuid()
	if dir {
		want = 0o700
	}
	uid := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid = int(st.Uid)
	}
	var problem, fix string
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		problem, fix = "is a symbolic link", "remove the link; the agent creates what it needs"
	case dir && !fi.IsDir():
		problem, fix = "is not a directory", "move it aside; the agent creates the directory"
	case !dir && !fi.Mode().IsRegular():
		problem, fix = "is not a regular file", "move it aside; the agent creates the file"
	case uid != euid:
		problem = fmt.Sprintf("is owned by uid %d, not by the agent (euid %d)", uid, euid)
	case perm&0o077 != 0:
		problem = "is open to group or others"
	default:
		return nil
	}
	if fix == "" {
		fix = fmt.Sprintf("chown %d %s && chmod %04o %s", euid, path, want, path)
	}
	return fmt.Errorf("%w: %s %s (owner uid %d, mode %04o): it must be the agent's alone, as whoever can write it can make the agent drop attestations or write over other files; fix: %s",
		ErrNotPrivate, path, problem, uid, perm, fix)
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Damaged lists the damaged records moved aside: by Open, and by
// compactions that found a settled item's record damaged since.
func (o *Outbox) Damaged() []Damage {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.damaged)
}

// Torn reports the torn tail Open dropped (a write cut short by a crash,
// never acknowledged) and where its bytes were kept; ok is false when
// the file ended cleanly. A torn tail is not a damaged record.
func (o *Outbox) Torn() (d Damage, ok bool) {
	if o.torn == nil {
		return Damage{}, false
	}
	return *o.torn, true
}

// CompactionFailures counts the compactions that failed since Open; each
// was logged, and the file kept growing until the next one.
func (o *Outbox) CompactionFailures() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.compactFailures
}

// DamagedFiles counts the damaged records kept in the damaged directory,
// from this Open and earlier ones, until an operator removes them (torn
// tails kept there are not counted).
func (o *Outbox) DamagedFiles() (dir string, n int) {
	dir = filepath.Join(filepath.Dir(o.path), DamagedDir)
	entries, _ := os.ReadDir(dir) // none yet: 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), tornSuffix) {
			n++
		}
	}
	return dir, n
}

// apply makes rec's change in memory; at is where rec lies in the file
// (n 0: not in the current file yet).
func (o *Outbox) apply(rec record, at span) {
	switch rec.Op {
	case "put":
		if rec.Item == nil || o.items[rec.Item.ID] != nil {
			return
		}
		sl := &slot{Item: *rec.Item, put: at}
		sl.State = Pending
		o.items[sl.ID] = sl
		o.order = append(o.order, sl.ID)
		o.npending++
		o.pendingBytes += sl.size()
	case "logged", "refused":
		sl := o.items[rec.ID]
		if sl == nil || sl.State != Pending {
			return
		}
		if rec.Op == "logged" {
			sl.State, sl.Logged = Logged, rec.Logged
		} else {
			sl.State, sl.Reason = Refused, rec.Reason
			o.nrefused++
		}
		if rec.At != 0 {
			sl.Created = rec.At // retention counts from settlement
		}
		sl.settle = at
		o.npending--
		o.pendingBytes -= sl.size()
		sl.dropBytes()
		// Drop settled IDs from the front; the rest are skipped lazily.
		for len(o.order) > 0 {
			if head := o.items[o.order[0]]; head != nil && head.State == Pending {
				break
			}
			o.order = o.order[1:]
		}
	}
}

// dropBytes forgets a settled item's bytes once both its records are in
// the file.
func (sl *slot) dropBytes() {
	if sl.State == Pending || sl.put.n == 0 || sl.settle.n == 0 {
		return
	}
	sl.Bundle, sl.Envelope, sl.Certificate, sl.Logged = nil, nil, nil, nil
	sl.onDisk = true
}

// load returns sl's item whole, reading its bytes from the file when
// they are not in memory. Callers hold o.mu.
func (o *Outbox) load(sl *slot) (Item, error) {
	if !sl.onDisk {
		return sl.Item, nil
	}
	put, err := o.readFrame(sl.put)
	if err != nil {
		return sl.Item, err
	}
	settle, err := o.readFrame(sl.settle)
	if err != nil {
		return sl.Item, err
	}
	if put.Item == nil || put.Item.ID != sl.ID || settle.ID != sl.ID {
		return sl.Item, fmt.Errorf("outbox: the records at %d and %d are not %s's", sl.put.off, sl.settle.off, sl.ID)
	}
	it := *put.Item
	it.State, it.Created, it.Logged, it.Reason = sl.State, sl.Created, settle.Logged, sl.Reason
	return it, nil
}

// readFrame reads and checks the frame at sp of the current file.
func (o *Outbox) readFrame(sp span) (record, error) {
	b := make([]byte, sp.n)
	if _, err := o.file.ReadAt(b, sp.off); err != nil {
		return record{}, fmt.Errorf("outbox: read the record at %d: %w", sp.off, err)
	}
	rec, _, _, intact := frameAt(b, 0)
	if !intact {
		return record{}, fmt.Errorf("outbox: the record at %d is damaged", sp.off)
	}
	return rec, nil
}

func frame(rec record) ([]byte, error) {
	return appendFrame(make([]byte, 0, frameSize(rec)), rec)
}

// frameSize is about the size of rec framed: exact unless its strings
// need escapes.
func frameSize(rec record) int {
	enc := base64.StdEncoding.EncodedLen
	n := frameHead + 96 + len(rec.Op) + len(rec.ID) + len(rec.Reason) + enc(len(rec.Logged))
	if it := rec.Item; it != nil {
		n += len(it.ID) + enc(len(it.Bundle)) + enc(len(it.Envelope)) + enc(len(it.Certificate))
	}
	return n
}

func syncDirOf(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// write appends rec durably. Concurrent writers are committed together:
// the first becomes the leader and writes and fsyncs everyone's records.
func (o *Outbox) write(rec record, apply func(at []span)) error {
	return o.writeMany([]record{rec}, apply)
}

func (o *Outbox) writeMany(recs []record, apply func(at []span)) error {
	n := 0
	for _, rec := range recs {
		n += frameSize(rec)
	}
	b := make([]byte, 0, n)
	ends := make([]int, len(recs))
	for i, rec := range recs {
		var err error
		if b, err = appendFrame(b, rec); err != nil {
			return err
		}
		ends[i] = len(b)
	}
	done := make(chan error, 1)
	o.mu.Lock()
	if o.broken != nil {
		err := o.refusal()
		o.mu.Unlock()
		return err
	}
	if o.closed {
		o.mu.Unlock()
		return errors.New("outbox: closed")
	}
	o.queue = append(o.queue, pendingWrite{rec: b, ends: ends, apply: apply, done: done})
	if !o.writing {
		o.writing = true
		go o.flush()
	}
	o.mu.Unlock()
	return <-done
}

// flush writes queued records until the queue is empty (group commit).
func (o *Outbox) flush() {
	for {
		o.mu.Lock()
		for o.swapping { // a compaction is swapping the file
			o.cond.Wait()
		}
		batch := o.queue
		o.queue = nil
		if len(batch) == 0 {
			o.writing = false
			o.cond.Broadcast() // Close may be waiting
			o.mu.Unlock()
			return
		}
		if o.broken != nil { // since these were queued
			err := o.refusal()
			o.mu.Unlock()
			for _, w := range batch {
				w.done <- err
			}
			continue
		}
		f, base, syncFile := o.file, o.size, o.syncFile
		o.writeInFlight = true
		o.mu.Unlock()
		buf := batch[0].rec
		if len(batch) > 1 {
			n := 0
			for _, w := range batch {
				n += len(w.rec)
			}
			buf = make([]byte, 0, n)
			for _, w := range batch {
				buf = append(buf, w.rec...)
			}
		}
		_, err := f.Write(buf)
		if err == nil {
			err = syncFile(f)
		}
		cutBack := false
		if err != nil {
			err = fmt.Errorf("outbox: write: %w", err)
			// A full disk, most often. Cut the file back to where this
			// batch began, which needs no free space, so that the next
			// write appends after the last good record: the batch fails,
			// and nothing else does. Else the rewrite below.
			cutBack = truncateTo(f, base, syncFile) == nil
		}
		o.mu.Lock()
		o.writeInFlight = false
		// A compaction waiting to swap the file goes on (the rewrite
		// below, after a failed write, waits for it to end).
		o.cond.Broadcast()
		if err == nil {
			o.size += int64(len(buf))
			// Before a compaction can run: it rewrites from memory
			// and from where records lie.
			for _, w := range batch {
				at, start := make([]span, len(w.ends)), 0
				for i, end := range w.ends {
					at[i] = span{off: base + int64(start), n: end - start}
					start = end
				}
				base += int64(len(w.rec))
				w.apply(at)
			}
			o.maybeCompact()
		} else if !cutBack {
			// A partial record may sit mid-file, where replay would stop:
			// rebuild from memory, or refuse to go on appending after it,
			// the writes already queued included (broken, not just
			// closed: those would be acknowledged after the partial
			// record, which swallows them on replay).
			if rerr := o.rewrite(); rerr != nil {
				o.setBroken(fmt.Errorf("a write failed and rewriting the file after it failed too: %w", rerr))
				err = errors.Join(err, rerr)
			}
		}
		o.cond.Broadcast()
		o.mu.Unlock()
		for _, w := range batch {
			w.done <- err
		}
	}
}

// setBroken makes the outbox refuse every write from now on, for why
// (the first reason is kept); the first time, it logs that and calls
// Options.OnBroken. Callers hold o.mu.
func (o *Outbox) setBroken(why error) {
	o.closed = true
	if o.broken != nil {
		return
	}
	o.broken = why
	o.log.Error("The outbox refuses every write, so every attestation is refused until the agent restarts (nothing acknowledged is lost: the restart reads the file)", zap.Error(why))
	if o.opts.OnBroken != nil {
		o.opts.OnBroken(o.refusal())
	}
}

// truncateTo cuts f back to size bytes and makes that durable.
func truncateTo(f *os.File, size int64, syncFile func(*os.File) error) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	return syncFile(f)
}

// Broken returns why the outbox refuses every write, or nil when it
// takes them: after a write failed and neither cutting it back off the
// file nor rewriting the file worked, the file on disk and the one in
// memory may differ, and only a restart (which reads the file) mends it.
func (o *Outbox) Broken() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.broken == nil {
		return nil
	}
	return o.refusal()
}

// refusal is the error of a write refused because the outbox is broken.
// Callers hold o.mu.
func (o *Outbox) refusal() error {
	return fmt.Errorf("outbox: refusing writes: %w", o.broken)
}

// maybeCompact starts a compaction in the background once the file has
// grown past compactAt (see compact.go). Callers hold o.mu.
func (o *Outbox) maybeCompact() {
	if o.size <= o.compactAt || o.compacting || o.closed || o.broken != nil {
		return
	}
	o.compacting = true
	c := o.beginCompaction()
	c.background = true
	go o.compactInBackground(c)
}

// Put stores it durably; it returns once the record is on disk.
func (o *Outbox) Put(it Item) error {
	if it.ID == "" {
		return errors.New("outbox: item without ID")
	}
	it.Created = o.opts.Now().Unix()
	it.State = Pending
	rec := record{Op: "put", Item: &it}
	return o.write(rec, func(at []span) { o.apply(rec, at[0]) })
}

// MarkLogged records the log's entry for id.
func (o *Outbox) MarkLogged(id string, tlogJSON []byte) error {
	return o.Settle([]Settlement{{ID: id, Logged: tlogJSON}})
}

// MarkRefused records that the log refused id, for good.
func (o *Outbox) MarkRefused(id, reason string) error {
	return o.Settle([]Settlement{{ID: id, Reason: reason}})
}

// Pending returns up to max pending items, oldest first.
func (o *Outbox) Pending(max int) []Item {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]Item, 0, min(max, o.npending))
	for _, id := range o.order {
		if len(out) == max {
			break
		}
		if sl := o.items[id]; sl != nil && sl.State == Pending {
			out = append(out, sl.Item)
		}
	}
	return out
}

// size is what the item's bytes take in memory.
func (sl *slot) size() int64 {
	return int64(len(sl.Bundle) + len(sl.Envelope) + len(sl.Certificate))
}

// PendingBytes is the size of the pending items' bundles, envelopes and
// certificates, held in memory until they are settled.
func (o *Outbox) PendingBytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pendingBytes
}

// Len is the number of pending items.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.npending
}

// RefusedLen is the number of refused items retained.
func (o *Outbox) RefusedLen() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.nrefused
}

// Refused returns up to max of the refused items retained, newest first,
// without their bytes (ID, reason, time).
func (o *Outbox) Refused(max int) []Item {
	o.mu.Lock()
	var out []Item
	for _, sl := range o.items {
		if sl.State == Refused {
			out = append(out, Item{ID: sl.ID, State: sl.State, Reason: sl.Reason, Created: sl.Created})
		}
	}
	o.mu.Unlock()
	slices.SortFunc(out, func(a, b Item) int { return cmp.Or(cmp.Compare(b.Created, a.Created), cmp.Compare(a.ID, b.ID)) })
	return out[:min(max, len(out))]
}

// Settlement is what the log said of one item: its entry, or a refusal.
type Settlement struct {
	ID     string
	Logged []byte // set when logged
	Reason string // set when refused
}

// Settle records many outcomes with one write and one fsync.
func (o *Outbox) Settle(ss []Settlement) error {
	if len(ss) == 0 {
		return nil
	}
	at := o.opts.Now().Unix()
	recs := make([]record, len(ss))
	for i, st := range ss {
		if st.Reason != "" {
			recs[i] = record{Op: "refused", ID: st.ID, Reason: st.Reason, At: at}
		} else {
			recs[i] = record{Op: "logged", ID: st.ID, Logged: st.Logged, At: at}
		}
	}
	return o.writeMany(recs, func(spans []span) {
		for i, rec := range recs {
			o.apply(rec, spans[i])
		}
	})
}

// Get returns the item with id, its bytes read back from the file when it
// is settled; an error when they cannot be (the disk failed since).
func (o *Outbox) Get(id string) (Item, bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	sl, ok := o.items[id]
	if !ok {
		return Item{}, false, nil
	}
	it, err := o.load(sl)
	return it, true, err
}

// Wait blocks until id is no longer pending or ctx ends, and returns it
// as Get does.
func (o *Outbox) Wait(ctx context.Context, id string) (Item, error) {
	stop := context.AfterFunc(ctx, func() {
		o.mu.Lock()
		o.cond.Broadcast()
		o.mu.Unlock()
	})
	defer stop()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.waiting++
	defer func() { o.waiting-- }()
	for {
		sl, ok := o.items[id]
		if !ok {
			return Item{}, fmt.Errorf("outbox: no attestation %s", id)
		}
		if sl.State != Pending {
			return o.load(sl)
		}
		if err := ctx.Err(); err != nil {
			return sl.Item, err
		}
		o.cond.Wait()
	}
}

// Waiting returns how many Wait calls are waiting.
func (o *Outbox) Waiting() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.waiting
}

// Close stops accepting writes and closes the file.
func (o *Outbox) Close() error {
	o.closing.Store(true) // a compaction under way stops
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	for o.writing || o.compacting {
		o.cond.Wait()
	}
	if o.file == nil {
		return nil
	}
	return o.file.Close()
}

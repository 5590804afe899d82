package outbox

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// A compaction rewrites the file with only the live records: the pending
// items, and the settled ones still within retention. In the background
// (once the file passes compactAt) it runs in four steps, so that
// attestations go on while it copies:
//
//  1. beginCompaction, under o.mu: what to keep, as it is now. Every
//     record below o.size has been applied (the size and the in-memory
//     change move together, under o.mu), so this is the state of the file
//     up to its current end, and nothing below that end changes again.
//  2. writeCompaction, without o.mu: the kept records to a new file,
//     copied from the old one (checked first) or framed from memory.
//     Writes go on meanwhile, appended to the old file.
//  3. catchUp, without o.mu but for a moment each round: the records
//     appended meanwhile that took effect (those an item's span points
//     at), copied after them, checked, in rounds; then a sync.
//  4. finishCompaction, under o.mu with no write in flight: what the last
//     round left, a sync, the rename and the directory's sync; the old
//     file is closed after.
//
// Steps 2 and 3 copy without holding up writers; steps 1 and 3's look at
// the items (in time with their number, not their bytes) and step 4 hold
// them. rewrite runs steps 1, 2 and 4 in one go under o.mu, at Open and
// after a failed write.

// compaction is one rewrite of the file.
type compaction struct {
	from  *os.File // the file compacted
	start time.Time
	// background: it runs beside writes (maybeCompact), not under o.mu
	// (rewrite); only then does closing the outbox end it early.
	background bool
	// keep are copies of the kept items' slots as they were: settled
	// items by settlement, then the pending ones in their order (a
	// reopened outbox drains oldest first). A pending item's bytes are
	// dropped from its copy once written, so that the copy does not hold
	// them in memory after the item is settled.
	keep     []slot
	expired  []string // settled items past retention, dropped
	tmp      *os.File
	syncFile func(*os.File) error // o.syncFile
	w        *bufio.Writer        // to tmp
	size     int64                // bytes written to tmp
	moved    [][2]span            // where keep[i]'s put and settle records lie in tmp
	// tail are the records appended to the old file since the
	// compaction began (at the file's size then, tailEnd's first value),
	// copied after the kept ones, up to tailEnd.
	tail    []tailRecord
	tailEnd int64
	old     *os.File // the file replaced, to close
	// lost are kept items whose records were found damaged, kept aside
	// in damaged and dropped.
	lost    []string
	damaged []Damage
}

// errClosing ends a compaction in the background when the outbox closes.
var errClosing = errors.New("outbox: closing")

// rewrite compacts the file in one go. Callers hold o.mu with no write in
// flight (Open, which holds no lock, has none to race).
func (o *Outbox) rewrite() error {
	for o.compacting { // one compaction at a time: they share a file name
		o.cond.Wait()
	}
	c := o.beginCompaction()
	if err := o.writeCompaction(c); err != nil {
		c.abandon()
		return err
	}
	err := o.finishCompaction(c)
	c.closeOld()
	return err
}

// Catching up: a compaction in the background copies what was appended
// while it copied, without o.mu, for at most catchUpRounds rounds or until
// a round finds less than catchUpBytes; finishCompaction copies the rest.
const (
	catchUpRounds = 8
	catchUpBytes  = 1 << 20
)

// catchUp copies, without o.mu, what was appended to the old file while c
// copied, and makes the new file durable so far.
func (o *Outbox) catchUp(c *compaction) error {
	for range catchUpRounds {
		if o.closing.Load() {
			return errClosing
		}
		o.mu.Lock()
		recs, n := o.tailOf(c)
		o.mu.Unlock()
		o.pauseAt("catching up")
		if err := c.copyTail(recs); err != nil {
			return err
		}
		if n < catchUpBytes {
			break
		}
	}
	return c.sync()
}

// compactInBackground runs c, which beginCompaction began, to its end and
// clears o.compacting.
func (o *Outbox) compactInBackground(c *compaction) {
	err := o.writeCompaction(c)
	if err == nil {
		o.pauseAt("copied")
		err = o.catchUp(c)
	}
	if err != nil {
		c.abandon()
	}
	o.mu.Lock()
	switch {
	case err != nil:
	case o.closed:
		c.abandon()
		err = errClosing
	default:
		o.swapping = true // the flush loop waits until we are done
		for o.writeInFlight {
			o.cond.Wait()
		}
		o.pauseAt("swapping")
		err = o.finishCompaction(c)
		o.swapping = false
	}
	if err != nil && !errors.Is(err, errClosing) {
		o.compactionFailed(err)
	}
	o.compacting = false
	o.cond.Broadcast()
	// The replaced file is closed once writes go on, and nothing of c is
	// held meanwhile (its copies of the kept slots).
	old := c.old
	o.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// compactionFailed counts and logs a failed compaction; the next is tried
// once the file has grown as much again. Callers hold o.mu.
func (o *Outbox) compactionFailed(err error) {
	o.compactFailures++
	o.compactAt = 2 * o.size
	o.log.Error("Compacting the outbox failed; it keeps growing until the next attempt",
		zap.Error(err), zap.Int64("bytes", o.size), zap.Int64("next_attempt_at_bytes", o.compactAt),
		zap.Bool("writes_refused", o.broken != nil))
}

// beginCompaction takes what a compaction keeps and drops. Callers hold
// o.mu.
func (o *Outbox) beginCompaction() *compaction {
	c := &compaction{from: o.file, tailEnd: o.size, start: time.Now(), syncFile: o.syncFile}
	cutoff := o.opts.Now().Add(-o.opts.Retention).Unix()
	for id, sl := range o.items {
		switch {
		case sl.State == Pending:
		case sl.Created < cutoff:
			c.expired = append(c.expired, id)
		default:
			c.keep = append(c.keep, *sl)
		}
	}
	if o.expiring != nil && len(c.expired) > 0 {
		o.expiring(c.expired)
	}
	slices.SortFunc(c.keep, func(a, b slot) int { return cmp.Or(cmp.Compare(a.Created, b.Created), cmp.Compare(a.ID, b.ID)) })
	for _, id := range o.order {
		if sl := o.items[id]; sl != nil && sl.State == Pending {
			c.keep = append(c.keep, *sl)
		}
	}
	return c
}

// pauseAt calls o.pause, the tests' hook, in a compaction in the
// background.
func (o *Outbox) pauseAt(step string) {
	if o.pause != nil {
		o.pause(step)
	}
}

// writeCompaction writes c's kept records to the new file (buffered in
// c.w; made durable by sync). It reads only what beginCompaction copied
// and c.from below the size it began at, which nothing changes, so it
// needs no lock; in
// the background it stops early with errClosing when the outbox closes
// (rewrite, which holds o.mu, goes on: Close waits for it anyway, and the
// rewrite after a failed write drops the partial record that write left).
// On a failure the caller abandons c.
func (o *Outbox) writeCompaction(c *compaction) error {
	tmp := o.path + ".tmp"
	// A stale tmp (a crash mid-rewrite) is removed, and the new one
	// created exclusively, never through a link someone left there.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("outbox: remove a stale %s: %w", tmp, err)
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	c.tmp = f
	c.w = bufio.NewWriterSize(f, 256<<10)
	w := c.w
	hdr, _ := w.Write(fileHeader())
	c.size = int64(hdr)
	c.moved = make([][2]span, len(c.keep))
	if c.background {
		o.pauseAt("copying")
	}
	for i := range c.keep {
		if c.background && o.closing.Load() {
			return errClosing
		}
		sl := &c.keep[i]
		var frames [2][]byte
		if sl.onDisk {
			frames, err = copyFrames(c.from, sl)
			if errors.Is(err, errNotItsRecord) {
				// Kept aside before the file that holds it goes.
				d, kerr := o.keepLost(c.from, sl)
				if kerr != nil {
					return kerr
				}
				c.lost = append(c.lost, sl.ID)
				c.damaged = append(c.damaged, d...)
				continue
			}
			if err != nil {
				return err
			}
		} else {
			if frames, err = framesOf(sl); err != nil {
				return err
			}
			// Framed: the copy need not hold the bytes any longer (the
			// item may be settled, its bytes dropped, before c ends).
			sl.Bundle, sl.Envelope, sl.Certificate, sl.Logged = nil, nil, nil, nil
		}
		for j, b := range frames {
			if b == nil {
				continue
			}
			c.moved[i][j] = span{off: c.size, n: len(b)}
			w.Write(b) //nolint:errcheck // Flush reports it
			c.size += int64(len(b))
		}
	}
	return nil
}

// framesOf frames an item held in memory: its put and, once settled, its
// settlement.
func framesOf(sl *slot) ([2][]byte, error) {
	var frames [2][]byte
	recs := []record{{Op: "put", Item: &sl.Item}}
	switch sl.State {
	case Logged:
		recs = append(recs, record{Op: "logged", ID: sl.ID, Logged: sl.Logged, At: sl.Created})
	case Refused:
		recs = append(recs, record{Op: "refused", ID: sl.ID, Reason: sl.Reason, At: sl.Created})
	}
	for j, rec := range recs {
		b, err := frame(rec)
		if err != nil {
			return frames, err
		}
		frames[j] = b
	}
	return frames, nil
}

// finishCompaction copies the records appended since c began that took
// effect, in file order, and swaps the new file in. Callers hold o.mu
// with no write in flight.
//
// A failure before the rename leaves the file and o as they were. One
// after it (the new file may not be durable, or cannot be opened) leaves
// o reading the old, unlinked file: writes are refused from then on.
func (o *Outbox) finishCompaction(c *compaction) error {
	held := time.Now()
	if o.file != c.from {
		c.abandon()
		return errors.New("outbox: the file was replaced during the compaction")
	}
	recs, _ := o.tailOf(c)
	if err := c.copyTail(recs); err != nil {
		c.abandon()
		return err
	}
	if err := c.sync(); err != nil {
		c.abandon()
		return err
	}
	if err := o.rename(c.tmp.Name(), o.path); err != nil {
		c.abandon()
		return fmt.Errorf("outbox: %w", err)
	}
	c.tmp.Close()
	nf, err := o.afterRename()
	if err != nil {
		// o.file is the old file, unlinked: what it holds stays
		// readable, but nothing appended to it would last.
		o.setBroken(fmt.Errorf("a compaction replaced the file but %w", err))
		return err
	}
	// The old file is closed by the caller, once writes go on: closing
	// the last descriptor of a large unlinked file frees its blocks,
	// which takes a while.
	c.old, o.file = o.file, nf
	o.damaged = append(o.damaged, c.damaged...)
	for _, id := range slices.Concat(c.expired, c.lost) {
		if sl := o.items[id]; sl != nil {
			delete(o.items, id)
			if sl.State == Refused {
				o.nrefused--
			}
		}
	}
	for _, t := range c.tail {
		*t.sp = t.to
	}
	for i, kept := range c.keep {
		sl := o.items[kept.ID]
		if sl == nil { // lost
			continue
		}
		sl.put = c.moved[i][0]
		if c.moved[i][1].n != 0 { // else settled since: in the tail
			sl.settle = c.moved[i][1]
		}
		sl.dropBytes()
	}
	order := make([]string, 0, o.npending)
	for _, id := range o.order {
		if sl := o.items[id]; sl != nil && sl.State == Pending {
			order = append(order, id)
		}
	}
	o.order = order
	before := o.size
	o.size = c.size
	o.compactAt = max(o.opts.CompactAt, 2*o.size)
	if c.from == nil { // at Open: nothing to tell
		return nil
	}
	o.log.Info("Compacted the outbox",
		zap.Int64("bytes_before", before), zap.Int64("bytes", o.size), zap.Int("items", len(o.items)),
		zap.Int("items_expired", len(c.expired)), zap.Int("records_appended_meanwhile", len(c.tail)),
		zap.Duration("took", time.Since(c.start)), zap.Duration("writes_held_for", time.Since(held)))
	return nil
}

// tailRecord is a record appended since a compaction began that took
// effect: the slot's span that points at it (set to to once the new file
// is swapped in), where it lies in the old file, and where in the new.
type tailRecord struct {
	sp       *span
	from, to span
}

// tailOf returns the records appended to the old file since c last
// looked, up to its end, in file order, and their size; c looks from
// there next. Only a record an item's span points at took effect; the
// spans of records below the end are final. Callers hold o.mu.
func (o *Outbox) tailOf(c *compaction) ([]tailRecord, int64) {
	var recs []tailRecord
	var n int64
	for _, sl := range o.items {
		for _, sp := range []*span{&sl.put, &sl.settle} {
			if sp.n != 0 && sp.off >= c.tailEnd {
				recs = append(recs, tailRecord{sp: sp, from: *sp})
				n += int64(sp.n)
			}
		}
	}
	slices.SortFunc(recs, func(a, b tailRecord) int { return cmp.Compare(a.from.off, b.from.off) })
	c.tailEnd = o.size
	return recs, n
}

// copyTail appends recs, read from the old file below c.tailEnd (which
// nothing changes) and checked, to the new file.
func (c *compaction) copyTail(recs []tailRecord) error {
	for _, r := range recs {
		b := make([]byte, r.from.n)
		if _, err := c.from.ReadAt(b, r.from.off); err != nil {
			return fmt.Errorf("outbox: read the record at %d: %w", r.from.off, err)
		}
		if _, end, _, intact := frameAs[recordIdentity](b, 0); !intact || end != len(b) {
			return fmt.Errorf("outbox: the record at %d is damaged", r.from.off)
		}
		r.to = span{off: c.size, n: len(b)}
		c.w.Write(b) //nolint:errcheck // Flush reports it
		c.size += int64(len(b))
		c.tail = append(c.tail, r)
	}
	return nil
}

// sync makes what c wrote to the new file durable.
func (c *compaction) sync() error {
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := c.syncFile(c.tmp); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// closeOld closes the file c replaced, if it did.
func (c *compaction) closeOld() {
	if c.old != nil {
		c.old.Close()
	}
}

// abandon removes c's new file, if any (once).
func (c *compaction) abandon() {
	if c.tmp != nil {
		c.tmp.Close()
		os.Remove(c.tmp.Name())
		c.tmp = nil
	}
}

// afterRename makes a rename of the rewritten file durable and opens it.
func (o *Outbox) afterRename() (*os.File, error) {
	if err := o.syncDir(filepath.Dir(o.path)); err != nil {
		return nil, err
	}
	nf, err := o.openAppend(o.path)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	return nf, nil
}

func openAppendOf(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
}

// errNotItsRecord: a settled item's span in the file no longer holds its
// record, intact.
var errNotItsRecord = errors.New("outbox: not the item's record")

// copyFrames reads a settled item's put and settle frames from file for
// a compaction, and checks that each is intact and the item's.
func copyFrames(file *os.File, sl *slot) ([2][]byte, error) {
	var frames [2][]byte
	for j, sp := range []span{sl.put, sl.settle} {
		b := make([]byte, sp.n)
		if _, err := file.ReadAt(b, sp.off); err != nil {
			return frames, fmt.Errorf("outbox: rewrite: read the record at %d: %w", sp.off, err)
		}
		// The CRC vouches for the bytes, written by this outbox; their
		// identity is checked without decoding the bundle again.
		rec, end, _, intact := frameAs[recordIdentity](b, 0)
		ok := intact && end == len(b)
		if j == 0 {
			ok = ok && rec.Op == "put" && rec.Item != nil && rec.Item.ID == sl.ID
		} else {
			ok = ok && (rec.Op == "logged" || rec.Op == "refused") && rec.ID == sl.ID
		}
		if !ok {
			return frames, errNotItsRecord
		}
		frames[j] = b
	}
	return frames, nil
}

// keepLost moves a settled item's damaged records aside, before a
// compaction drops them, and says so loudly.
func (o *Outbox) keepLost(file *os.File, sl *slot) ([]Damage, error) {
	var ds []Damage
	for _, sp := range []span{sl.put, sl.settle} {
		b := make([]byte, sp.n)
		n, _ := file.ReadAt(b, sp.off) // what is there, to inspect
		name, err := o.keepAside(int(sp.off), b[:n], ".bin")
		if err != nil {
			return nil, fmt.Errorf("outbox: keep damaged records: %w", err)
		}
		ds = append(ds, Damage{Offset: sp.off, Length: int64(n), File: name})
		o.log.Error("A settled outbox record was found damaged by a compaction and moved aside; the item is dropped",
			zap.String("invocation_id", sl.ID), zap.Int64("offset", sp.off), zap.Int("bytes", n), zap.String("kept_in", name))
	}
	return ds, nil
}

// Package exedigest hashes callers' executables (SHA-256) for the workload
// attestors, and remembers a digest only for files that nothing but root
// can change and whose every change the kernel records.
//
// A digest is looked up by the file's device and inode and is valid only
// while its size, modification time and status-change time (ctime) are
// those it was computed for. That is sound only where every change of
// content moves ctime and nobody can move it back, so a digest is kept, and
// a kept one used, only for a file that is, each time it is looked up
// (otherwise it is hashed on every call, as without a cache):
//
//   - a regular file owned by root that neither its group nor others may
//     write (st_mode & 022 == 0; with POSIX ACLs the group bits are the
//     mask, so no ACL entry may write either): no build step that is not
//     root can open it for writing, and root is the runner's owner;
//   - on ext2/3/4, XFS or Btrfs, which set ctime on every write(2),
//     truncation and attribute change, and on every write fault of a
//     shared mapping; not on tmpfs or overlayfs (writes through a mapping
//     leave times alone), nor on network or FUSE file systems (their times
//     are what a server says);
//   - on a mount without nosuid: every mount an unprivileged user can make
//     (udisks, FUSE, a user namespace's) is nosuid, and such a file
//     system's image, times and inode numbers included, is the user's to
//     craft, and may reuse the device number of one unmounted since;
//
// and whose ctime and mtime were at least RacyWindow older than the moment
// hashing began, when it was hashed (timestamps come from a clock that
// ticks coarsely, so a change in the same tick as the last one could leave
// them as they were: git's "racily clean" entries, the same cure), with the
// same status before and after hashing.
//
// A shared writable mapping changes the file without a time update while
// its page stays dirty, so a writer that opened the file before it became
// root's and read-only could change it unseen. Sum is given the executable
// of a running process (/proc/PID/exe while PID runs): execve refuses a
// file that anyone has open for writing, and while it runs nobody may open
// it for writing (ETXTBSY), so when its digest is taken no such writer
// exists, and a later one must first be let write, by root or by a chmod or
// chown that moves ctime.
//
// ctime cannot be set by any system call; only setting the system clock
// back (root) could forge one.
package exedigest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// RacyWindow is how long a file must have been left alone before its
// digest is kept.
const RacyWindow = 2 * time.Second

// DefaultEntries bounds a cache: executables remembered at once.
const DefaultEntries = 1024

// ErrChanged means the file changed while it was hashed.
var ErrChanged = errors.New("exedigest: executable changed while it was hashed")

// Cache remembers executables' digests; the zero value is not usable, a
// nil *Cache hashes every time. Safe for concurrent use.
type Cache struct {
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[fileKey]entry
	hashed  int // files read whole, for tests
}

type fileKey struct{ dev, ino uint64 }

// entry is a digest and the status it was computed for.
type entry struct {
	size         int64
	mtime, ctime unix.Timespec
	sum          string
}

// New returns a cache of at most maxEntries digests (DefaultEntries if 0).
func New(maxEntries int) *Cache {
	if maxEntries <= 0 {
		maxEntries = DefaultEntries
	}
	return &Cache{max: maxEntries, now: time.Now, entries: map[fileKey]entry{}}
}

// Sum returns the lower-case hex SHA-256 of the file f, read from its
// start, or "" when it is larger than limit bytes (limit > 0). f is the
// executable of a running process, opened through /proc/PID/exe (see the
// package documentation). A remembered digest is returned when the file's
// status matches it. Reading stops when ctx ends: a caller's executable of
// hundreds of MiB is not hashed on for a call that gave up (found by an
// outside review).
func (c *Cache) Sum(ctx context.Context, f *os.File, limit int64) (string, error) {
	var start time.Time
	if c != nil {
		start = c.now()
	}
	var before unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &before); err != nil {
		return "", fmt.Errorf("exedigest: fstat %s: %w", f.Name(), err)
	}
	if before.Size > limit {
		return "", nil
	}
	key := fileKey{dev: before.Dev, ino: before.Ino}
	trusted := c != nil && trustworthy(f, &before)
	if trusted {
		c.mu.Lock()
		e, ok := c.entries[key]
		c.mu.Unlock()
		if ok && e.matches(&before) {
			return e.sum, nil
		}
	}
	h := sha256.New()
	readLimit := limit
	if readLimit < math.MaxInt64 {
		readLimit++ // to see a file that grew past limit
	}
	n, err := io.Copy(h, ctxReader{ctx, io.NewSectionReader(f, 0, readLimit)})
	if err != nil {
		return "", fmt.Errorf("exedigest: read %s: %w", f.Name(), err)
	}
	if n > limit {
		return "", nil // grew past the limit while read
	}
	var after unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &after); err != nil {
		return "", fmt.Errorf("exedigest: fstat %s: %w", f.Name(), err)
	}
	e := entry{size: before.Size, mtime: before.Mtim, ctime: before.Ctim, sum: hex.EncodeToString(h.Sum(nil))}
	if !e.matches(&after) || n != before.Size {
		return "", fmt.Errorf("%w: %s", ErrChanged, f.Name())
	}
	if c == nil {
		return e.sum, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hashed++
	if !trusted {
		return e.sum, nil // a digest kept for where it is trusted stays
	}
	if !settled(&before, start) {
		delete(c.entries, key)
		return e.sum, nil
	}
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k := range c.entries { // any one: the map's order is random
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = e
	return e.sum, nil
}

// ctxReader is r until ctx ends, then ctx's error.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (cr ctxReader) Read(p []byte) (int, error) {
	if err := cr.ctx.Err(); err != nil {
		return 0, err
	}
	return cr.r.Read(p)
}

func (e entry) matches(st *unix.Stat_t) bool {
	return st.Size == e.size && st.Mtim == e.mtime && st.Ctim == e.ctime
}

// Filesystems whose kernel drivers set ctime on every change of a file's
// content, writes through shared mappings included.
var keepableFS = map[int64]bool{
	unix.EXT4_SUPER_MAGIC:  true, // ext2, ext3 and ext4 share it
	unix.XFS_SUPER_MAGIC:   true,
	unix.BTRFS_SUPER_MAGIC: true,
}

// trustworthy reports whether f, whose status is st, is a file whose
// digest may be remembered or a remembered one used: only root may change
// it, and the kernel records every change in its ctime.
func trustworthy(f *os.File, st *unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != 0 || st.Mode&0o022 != 0 {
		return false
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return false
	}
	return keepableFS[int64(fs.Type)] && fs.Flags&unix.ST_NOSUID == 0
}

// settled reports whether st's times were RacyWindow old when hashing
// began at start.
func settled(st *unix.Stat_t, start time.Time) bool {
	before := start.Add(-RacyWindow)
	return time.Unix(st.Ctim.Unix()).Before(before) && time.Unix(st.Mtim.Unix()).Before(before)
}

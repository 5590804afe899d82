//go:build linux

package measure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// maxDepth bounds how deep directories nest, so that a walk holds a bounded
// number of descriptors.
const maxDepth = 512

// Read buffers of the hashing workers: large ones for throughput, small
// ones for requests whose files are all small (the common case of a step
// attesting a few files), so that those neither allocate nor clear a large
// buffer whenever a garbage collection has emptied the pool.
const (
	bufSize      = 1 << 20
	smallBufSize = 32 << 10
)

var (
	bufPool      = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}
	smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
)

// hashOwn is Hash with the agent's own view and rights.
func hashOwn(ctx context.Context, root string, rels []string, lim Limits) ([]Digest, []Digest, error) {
	fd, err := openDir(unix.AT_FDCWD, root)
	if err != nil {
		if err == unix.ENOENT {
			err = ErrNotFound
		}
		return nil, nil, fmt.Errorf("measure: open root %q: %w", root, err)
	}
	defer unix.Close(fd)
	r, err := newResolver(fd)
	if err != nil {
		return nil, nil, fmt.Errorf("measure: open root %q: %w", root, err)
	}
	w, err := walkAll(ctx, r, rels, nil, lim, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := hashFiles(ctx, r, w.files(), lim, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	return w.split(out)
}

// inlineBytes is how much a measurement hashes on the thread that walked,
// without handing work to parallel threads: handing over to a locked
// thread costs tens of microseconds.
const inlineBytes = 1 << 20

// measureAs is Measure once the request is checked: on one measuring
// thread with c's credentials it opens the workspace, walks both lists and,
// for a small measurement, hashes it too; a larger one is hashed by
// parallel measuring threads afterwards.
func measureAs(ctx context.Context, c Caller, dir string, prels, mrels []string, lim Limits, p *Progress, read WorkspaceReader) (prods, mats []Digest, err error) {
	cr := newCreds(c)
	var (
		fd    = -1
		r     *resolver
		w     *walk
		files []file
		out   []Digest
	)
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	err = cr.run(ctx, func() error {
		var err error
		if fd, err = openWorkspace(c.Root, dir); err != nil {
			return err
		}
		if r, err = newResolver(fd); err != nil {
			return fmt.Errorf("measure: workspace %q: %w", dir, err)
		}
		if w, err = walkAll(ctx, r, prels, mrels, lim, true); err != nil {
			return err
		}
		if read != nil {
			if err := readWorkspace(fd, read); err != nil {
				return err
			}
		}
		files = w.files()
		if p != nil {
			p.FilesTotal.Add(int64(len(files)))
			p.BytesTotal.Add(w.b.total)
		}
		if lim.Workers > 1 && len(files) > 1 && w.b.total > inlineBytes {
			return nil
		}
		// On this thread, the one holding c's credentials: one worker,
		// since hashFiles with nil credentials runs more on goroutines
		// that hold the agent's own.
		inline := lim
		inline.Workers = 1
		out, err = hashFiles(ctx, r, files, inline, p, nil)
		return err
	})
	if err == nil && out == nil {
		out, err = hashFiles(ctx, r, files, lim, p, cr)
	}
	if err != nil {
		return nil, nil, err
	}
	if p != nil {
		// The files are measured as they were when read: the total
		// becomes what was read.
		var read int64
		for _, d := range out {
			read += d.Size
		}
		p.BytesTotal.Add(read - w.b.total)
	}
	return w.split(out)
}

// readWorkspace calls read with the open workspace fd as an os.Root, on
// the calling (measuring) thread: the thread's own descriptor link, which
// this process may always follow.
func readWorkspace(fd int, read WorkspaceReader) error {
	ws, err := os.OpenRoot("/proc/thread-self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("measure: reopen the workspace: %w", err)
	}
	defer ws.Close()
	return read(ws)
}

func openDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// openWorkspace opens dir, clean and absolute, in the caller's root, with
// the thread's credentials, refusing links and pseudo file systems.
func openWorkspace(rootfd int, dir string) (int, error) {
	fd, err := openInRoot(rootfd, dir)
	if err != nil {
		return -1, workspaceError(dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		unix.Close(fd)
		return -1, workspaceError(dir, err)
	}
	if st.Type == unix.PROC_SUPER_MAGIC || st.Type == unix.SYSFS_MAGIC {
		unix.Close(fd)
		return -1, workspaceError(dir, errPseudoFS)
	}
	return fd, nil
}

// errPseudoFS means a workspace is on procfs or sysfs.
var errPseudoFS = errors.New("on procfs or sysfs")

func workspaceError(dir string, err error) error {
	switch err {
	case unix.ELOOP:
		return fmt.Errorf("measure: workspace %q: %w: a symbolic link or magic link is on the way (name the workspace by its real path)", dir, ErrEscapes)
	case errPseudoFS:
		return fmt.Errorf("measure: workspace %q: %w: it is %v", dir, ErrEscapes, err)
	case unix.ENOENT:
		return fmt.Errorf("measure: workspace %q: %w", dir, ErrNotFound)
	case unix.ENOTDIR:
		return fmt.Errorf("measure: workspace %q: not a directory", dir)
	case unix.EACCES, unix.EPERM:
		return fmt.Errorf("measure: workspace %q: %w", dir, ErrNoAccess)
	}
	return fmt.Errorf("measure: workspace %q: %w", dir, err)
}

// openComponent opens name in dirfd as itself (O_PATH, never following
// a link) and returns its descriptor and what fstat says of it.
func openComponent(dirfd int, name string) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, err
	}
	return fd, st, nil
}

// openInRoot opens dir, clean and absolute, as a directory from rootfd as
// if rootfd were "/", following no symbolic or magic link and crossing
// mount points as the caller's mount namespace has them. It fails with
// ELOOP at a link.
func openInRoot(rootfd int, dir string) (int, error) {
	if !disableOpenat2 && openat2Support.Load() != 2 {
		how := unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		for {
			fd, err := unix.Openat2(rootfd, dir, &how)
			switch err {
			case unix.EINTR, unix.EAGAIN:
				continue
			case unix.ENOSYS:
				// No openat2 after all: walk.
			default:
				return fd, err
			}
			break
		}
	}
	// One component at a time: O_NOFOLLOW opens a link as itself, which
	// is refused; a clean absolute path has no "." or "..".
	cur, err := openDir(rootfd, ".")
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		if c == "" {
			continue
		}
		fd, st, err := openComponent(cur, c)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			cur = fd
		case unix.S_IFLNK:
			unix.Close(fd)
			return -1, unix.ELOOP
		default:
			unix.Close(fd)
			return -1, unix.ENOTDIR
		}
	}
	return cur, nil
}

// walk is what the walks of one measurement found.
type walk struct {
	b        *budget
	products *walker
	mats     *walker
}

// walkAll walks prels and then mrels with one budget; with access, every
// file is checked for read access with the thread's credentials.
func walkAll(ctx context.Context, r *resolver, prels, mrels []string, lim Limits, access bool) (*walk, error) {
	b := &budget{lim: lim}
	w := &walk{
		b:        b,
		products: &walker{r: r, b: b, access: access, seen: make(map[string]bool, len(prels))},
		mats:     &walker{r: r, b: b, access: access, seen: make(map[string]bool, len(mrels))},
	}
	for _, rel := range prels {
		if err := w.products.add(ctx, rel); err != nil {
			return nil, err
		}
	}
	for _, rel := range mrels {
		if err := w.mats.add(ctx, rel); err != nil {
			return nil, err
		}
	}
	byName := func(a, b file) int { return strings.Compare(a.name, b.name) }
	slices.SortFunc(w.products.files, byName)
	slices.SortFunc(w.mats.files, byName)
	return w, nil
}

// files lists the products' files, then the materials'.
func (w *walk) files() []file {
	return append(w.products.files[:len(w.products.files):len(w.products.files)], w.mats.files...)
}

// split cuts the digests of files() into products and materials.
func (w *walk) split(out []Digest) (prods, mats []Digest, err error) {
	n := len(w.products.files)
	return out[:n:n], out[n:], nil
}

// file is a regular file found by the walk.
type file struct {
	name string
	size int64 // when walked; the file is measured as it is when read
}

// dirID identifies a directory, to notice symbolic links that loop.
type dirID struct{ dev, ino uint64 }

// budget is what the walks of one measurement may still take.
type budget struct {
	lim   Limits
	files int   // regular files listed
	names int   // directories and symbolic links met
	total int64 // bytes of the files listed
}

// name counts a directory or symbolic link.
func (b *budget) name(name string) error {
	b.names++
	if b.names > b.lim.MaxFiles {
		return fmt.Errorf("measure: %q: %w: more than %d directories and symbolic links", name, ErrTooManyFiles, b.lim.MaxFiles)
	}
	return nil
}

// walker lists the regular files that the paths name, enforcing the limits
// before anything is read.
type walker struct {
	r *resolver
	b *budget
	// access checks every file for read access with the thread's
	// credentials, before any is read.
	access bool
	files  []file
	seen   map[string]bool
}

// add lists the files that rel names.
func (w *walker) add(ctx context.Context, rel string) error {
	fd, err := w.r.open(rel, unix.O_PATH)
	if err != nil {
		return pathError(rel, err)
	}
	return w.addOpened(ctx, rel, fd, nil)
}

// addOpened lists the files that name, opened as fd with O_PATH, names.
// It closes fd.
func (w *walker) addOpened(ctx context.Context, name string, fd int, parents []dirID) error {
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return pathError(name, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := w.readable(fd, "", name); err != nil {
			return err
		}
		return w.addFile(name, st.Size)
	case unix.S_IFDIR:
		id := dirID{uint64(st.Dev), st.Ino}
		if slices.Contains(parents, id) {
			return nil // a symbolic link back to a directory being walked
		}
		dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return pathError(name, err)
		}
		return w.walk(ctx, name, dfd, append(parents, id))
	default:
		return fmt.Errorf("measure: %q: %w (%s)", name, ErrNotRegular, kind(st.Mode))
	}
}

// readable fails with ErrNoAccess unless the thread may open name in dirfd
// (or dirfd itself, when name is empty) for reading: the kernel's own
// check, with the thread's file-system ids, groups and capabilities.
func (w *walker) readable(dirfd int, name, path string) error {
	if !w.access {
		return nil
	}
	flags := unix.AT_EACCESS | unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	for {
		err := unix.Faccessat2(dirfd, name, unix.R_OK, flags)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.ENOSYS:
			return w.readableByOpen(dirfd, name, path)
		}
		return pathError(path, err)
	}
}

// readableByOpen is readable on kernels without faccessat2 (before 5.8):
// it opens the file for reading and closes it.
func (w *walker) readableByOpen(dirfd int, name, path string) error {
	if name == "" {
		// A file opened O_PATH is reopened through /proc/self/fd.
		fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(dirfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return pathError(path, err)
		}
		return unix.Close(fd)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathError(path, err)
	}
	return unix.Close(fd)
}

// direntBuf is how much of a directory one getdents call reads: the walk
// acts on each batch before reading the next, so it stops at a limit
// without reading the rest of a huge directory.
const direntBuf = 8 << 10

// direntReads counts getdents calls, for tests of where walks stop.
var direntReads atomic.Int64

// walk lists the files in directory dfd, named name, recursively. parents
// are the directories being walked, dfd's last. It closes dfd.
func (w *walker) walk(ctx context.Context, name string, dfd int, parents []dirID) error {
	defer unix.Close(dfd)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	if err := w.b.name(name); err != nil {
		return err
	}
	if len(parents) > maxDepth {
		return fmt.Errorf("measure: %q: directories nested more than %d deep", name, maxDepth)
	}
	buf := make([]byte, direntBuf)
	var entries []string
	for {
		direntReads.Add(1)
		n, err := unix.ReadDirent(dfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return pathError(name, err)
		}
		if n <= 0 {
			return nil
		}
		_, _, entries = unix.ParseDirent(buf[:n], -1, entries[:0])
		for _, e := range entries {
			if err := w.entry(ctx, name, dfd, e, parents); err != nil {
				return err
			}
		}
	}
}

// entry lists what e, an entry of directory dfd named name, names.
func (w *walker) entry(ctx context.Context, name string, dfd int, e string, parents []dirID) error {
	child := join(name, e)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, e, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathError(child, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := w.readable(dfd, e, child); err != nil {
			return err
		}
		return w.addFile(child, st.Size)
	case unix.S_IFDIR:
		cfd, err := w.r.openChild(dfd, e, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			if err == unix.ELOOP || err == unix.ENOTDIR {
				return fmt.Errorf("measure: %q: changed while it was walked", child)
			}
			return pathError(child, err)
		}
		var cst unix.Stat_t
		if err := unix.Fstat(cfd, &cst); err != nil {
			unix.Close(cfd)
			return pathError(child, err)
		}
		id := dirID{uint64(cst.Dev), cst.Ino}
		if slices.Contains(parents, id) {
			unix.Close(cfd) // reached again through a symbolic link above
			return w.b.name(child)
		}
		return w.walk(ctx, child, cfd, append(parents, id))
	case unix.S_IFLNK:
		if err := w.b.name(child); err != nil {
			return err
		}
		// Resolve from the root, not from dfd, so that a link may lead
		// anywhere beneath the root, and nowhere else.
		fd, err := w.r.open(child, unix.O_PATH)
		if err != nil {
			err = pathError(child, err)
			if errors.Is(err, ErrEscapes) || errors.Is(err, ErrNotFound) {
				if target, lerr := readlinkAt(dfd, e); lerr == nil {
					err = fmt.Errorf("%w (symbolic link to %q)", err, target)
				}
			}
			return err
		}
		return w.addOpened(ctx, child, fd, parents)
	default:
		return fmt.Errorf("measure: %q: %w (%s)", child, ErrNotRegular, kind(st.Mode))
	}
}

// addFile lists one regular file, enforcing the limits.
func (w *walker) addFile(name string, size int64) error {
	if w.seen[name] {
		return nil
	}
	w.seen[name] = true
	b := w.b
	b.files++
	if b.files > b.lim.MaxFiles {
		return fmt.Errorf("measure: %q: %w: more than %d files", name, ErrTooManyFiles, b.lim.MaxFiles)
	}
	if size > b.lim.MaxFileBytes {
		return fmt.Errorf("measure: %q: %w: %d bytes, more than %d per file", name, ErrTooLarge, size, b.lim.MaxFileBytes)
	}
	b.total += size
	if b.total > b.lim.MaxTotalBytes {
		return fmt.Errorf("measure: %q: %w: files total more than %d bytes", name, ErrTooLarge, b.lim.MaxTotalBytes)
	}
	w.files = append(w.files, file{name: name, size: size})
	return nil
}

// hashFiles hashes files in parallel, in their order, counting into p
// when it is not nil, with credentials c (nil: the agent's own).
func hashFiles(ctx context.Context, r *resolver, files []file, lim Limits, p *Progress, c *creds) ([]Digest, error) {
	out := make([]Digest, len(files))
	pool := &bufPool
	if !slices.ContainsFunc(files, func(f file) bool { return f.size > smallBufSize }) {
		pool = &smallBufPool
	}
	var total atomic.Int64
	workers := min(lim.Workers, len(files))
	if c != nil {
		// A worker holds its thread until no file is left: one beyond
		// the uid's share would get a thread only when there is nothing
		// left to hash.
		workers = min(workers, measuring.get().share)
	}
	if workers <= 1 {
		err := c.run(ctx, func() error {
			bp := pool.Get().(*[]byte)
			defer pool.Put(bp)
			for i, f := range files {
				d, err := hashFile(ctx, r, f.name, *bp, lim, &total, p)
				if err != nil {
					return err
				}
				out[i] = d
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		return out, nil
	}
	g, gctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range workers {
		g.Go(func() error {
			return c.run(gctx, func() error {
				bp := pool.Get().(*[]byte)
				defer pool.Put(bp)
				for {
					i := int(next.Add(1) - 1)
					if i >= len(files) {
						return nil
					}
					d, err := hashFile(gctx, r, files[i].name, *bp, lim, &total, p)
					if err != nil {
						return err
					}
					out[i] = d
				}
			})
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// hashFile opens name beneath the root again (the tree may have changed
// since the walk) and hashes it, counting what it reads into total and,
// when it is not nil, p: one atomic add per read of up to bufSize bytes.
func hashFile(ctx context.Context, r *resolver, name string, buf []byte, lim Limits, total *atomic.Int64, p *Progress) (Digest, error) {
	if err := ctx.Err(); err != nil {
		return Digest{}, fmt.Errorf("measure: %w", err)
	}
	// O_NONBLOCK so that a file replaced by a fifo cannot block the open.
	fd, err := r.open(name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return Digest{}, pathError(name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Digest{}, pathError(name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Digest{}, fmt.Errorf("measure: %q: %w (%s)", name, ErrNotRegular, kind(st.Mode))
	}
	tooLarge := func() error {
		return fmt.Errorf("measure: %q: %w: more than %d bytes per file", name, ErrTooLarge, lim.MaxFileBytes)
	}
	if st.Size > lim.MaxFileBytes {
		return Digest{}, tooLarge()
	}
	h := sha256.New()
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return Digest{}, fmt.Errorf("measure: %w", err)
		}
		k, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Digest{}, pathError(name, err)
		}
		if k == 0 {
			break
		}
		n += int64(k)
		if n > lim.MaxFileBytes {
			return Digest{}, tooLarge()
		}
		if total.Add(int64(k)) > lim.MaxTotalBytes {
			return Digest{}, fmt.Errorf("measure: %q: %w: files total more than %d bytes", name, ErrTooLarge, lim.MaxTotalBytes)
		}
		h.Write(buf[:k])
		if p != nil {
			p.BytesDone.Add(int64(k))
		}
	}
	if p != nil {
		p.FilesDone.Add(1)
	}
	return Digest{Name: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

// readlinkAt reads the target of the symbolic link name in dirfd.
func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// pathError turns a system error about name into the package's errors.
func pathError(name string, err error) error {
	switch err {
	case unix.EXDEV:
		return fmt.Errorf("measure: %q: %w: a symbolic link, \"..\" or mount point in it leads outside the root", name, ErrEscapes)
	case unix.ENOENT, unix.ENOTDIR:
		return fmt.Errorf("measure: %q: %w", name, ErrNotFound)
	case unix.EACCES, unix.EPERM:
		return fmt.Errorf("measure: %q: %w", name, ErrNoAccess)
	case unix.ELOOP:
		return fmt.Errorf("measure: %q: too many levels of symbolic links", name)
	}
	return fmt.Errorf("measure: %q: %w", name, err)
}

// kind names a file type for error messages.
func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	}
	return fmt.Sprintf("file mode %#o", mode)
}

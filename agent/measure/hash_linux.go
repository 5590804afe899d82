//go:build linux

package measure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
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

// rootSys is the open root directory.
type rootSys struct {
	fd int
	r  *resolver
}

// openRoot opens root, an absolute path, as a directory; with resolve, the
// Root's path is the kernel's name of the directory opened.
func openRoot(root string, resolve bool) (*Root, error) {
	fd, path, err := openRootDir(root, resolve)
	if err != nil {
		if err == unix.ENOENT {
			err = ErrNotFound
		}
		return nil, fmt.Errorf("measure: open root %q: %w", root, err)
	}
	r, err := newResolver(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("measure: open root %q: %w", root, err)
	}
	if resolve && path == "" {
		if path, err = fdPath(fd); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("measure: resolve root %q: %w", root, err)
		}
	}
	if path == "" {
		path = root
	}
	return &Root{path: path, sys: rootSys{fd: fd, r: r}}, nil
}

// openRootDir opens root as an O_PATH directory. With resolve, when root
// is clean and no symbolic link is on the way, it returns root as the
// directory's resolved path; otherwise the path is empty and openRoot asks
// the kernel. (A clean absolute path without symbolic links is the one the
// kernel would give.)
func openRootDir(root string, resolve bool) (int, string, error) {
	const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	if resolve && filepath.Clean(root) == root && !disableOpenat2 && openat2Support.Load() != 2 {
		how := unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for {
			fd, err := unix.Openat2(unix.AT_FDCWD, root, &how)
			switch err {
			case nil:
				return fd, root, nil
			case unix.EINTR, unix.EAGAIN:
				continue
			case unix.ELOOP, unix.ENOSYS, unix.EPERM:
				// A symbolic link on the way, or no openat2: open as usual.
			default:
				return -1, "", err
			}
			break
		}
	}
	for {
		fd, err := unix.Open(root, flags, 0)
		if err != unix.EINTR {
			return fd, "", err
		}
	}
}

// fdPath is the absolute path by which the kernel names the directory open
// as fd: every symbolic link resolved, "." and ".." gone.
func fdPath(fd int) (string, error) {
	link := "/proc/self/fd/" + strconv.Itoa(fd)
	var small [256]byte
	buf := small[:]
	for {
		n, err := unix.Readlink(link, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		if len(buf) >= unix.PathMax {
			return "", unix.ENAMETOOLONG
		}
		buf = make([]byte, unix.PathMax)
	}
	p := string(buf)
	switch {
	case strings.HasSuffix(p, " (deleted)"):
		return "", errors.New("the directory has been removed")
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		// Such as a directory out of reach of the process's root.
		return "", fmt.Errorf("the kernel names it %q, not an absolute path", p)
	}
	return p, nil
}

func (root *Root) close() error {
	if root.sys.fd < 0 {
		return nil
	}
	err := unix.Close(root.sys.fd)
	root.sys.fd = -1
	return err
}

func (root *Root) hash(ctx context.Context, rels []string, lim Limits, p *Progress) ([]Digest, error) {
	if root.sys.fd < 0 {
		return nil, errors.New("measure: root is closed")
	}
	w := &walker{r: root.sys.r, lim: lim, seen: make(map[string]bool, len(rels))}
	for _, rel := range rels {
		if err := w.add(ctx, rel); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(w.files, func(a, b file) int { return strings.Compare(a.name, b.name) })
	if p == nil {
		return hashFiles(ctx, root.sys.r, w.files, lim, nil)
	}
	p.FilesTotal.Add(int64(len(w.files)))
	p.BytesTotal.Add(w.total)
	out, err := hashFiles(ctx, root.sys.r, w.files, lim, p)
	if err != nil {
		return nil, err
	}
	// The files are measured as they were when read: the total becomes
	// what was read.
	var read int64
	for _, d := range out {
		read += d.Size
	}
	p.BytesTotal.Add(read - w.total)
	return out, nil
}

// file is a regular file found by the walk.
type file struct {
	name string
	size int64 // when walked; the file is measured as it is when read
}

// dirID identifies a directory, to notice symbolic links that loop.
type dirID struct{ dev, ino uint64 }

// walker lists the regular files that the paths name, enforcing the limits
// before anything is read.
type walker struct {
	r     *resolver
	lim   Limits
	files []file
	seen  map[string]bool
	dirs  int
	total int64
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

// walk lists the files in directory dfd, named name, recursively. parents
// are the directories being walked, dfd's last. It closes dfd.
func (w *walker) walk(ctx context.Context, name string, dfd int, parents []dirID) error {
	defer unix.Close(dfd)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("measure: %w", err)
	}
	w.dirs++
	if w.dirs > w.lim.MaxFiles {
		return fmt.Errorf("measure: %q: %w: more than %d directories", name, ErrTooManyFiles, w.lim.MaxFiles)
	}
	if len(parents) > maxDepth {
		return fmt.Errorf("measure: %q: directories nested more than %d deep", name, maxDepth)
	}
	entries, err := readDirNames(dfd)
	if err != nil {
		return pathError(name, err)
	}
	for _, e := range entries {
		child := join(name, e)
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, e, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return pathError(child, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if err := w.addFile(child, st.Size); err != nil {
				return err
			}
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
				continue
			}
			if err := w.walk(ctx, child, cfd, append(parents, id)); err != nil {
				return err
			}
		case unix.S_IFLNK:
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
			if err := w.addOpened(ctx, child, fd, parents); err != nil {
				return err
			}
		default:
			return fmt.Errorf("measure: %q: %w (%s)", child, ErrNotRegular, kind(st.Mode))
		}
	}
	return nil
}

// addFile lists one regular file, enforcing the limits.
func (w *walker) addFile(name string, size int64) error {
	if w.seen[name] {
		return nil
	}
	w.seen[name] = true
	if len(w.files) >= w.lim.MaxFiles {
		return fmt.Errorf("measure: %q: %w: more than %d files", name, ErrTooManyFiles, w.lim.MaxFiles)
	}
	if size > w.lim.MaxFileBytes {
		return fmt.Errorf("measure: %q: %w: %d bytes, more than %d per file", name, ErrTooLarge, size, w.lim.MaxFileBytes)
	}
	w.total += size
	if w.total > w.lim.MaxTotalBytes {
		return fmt.Errorf("measure: %q: %w: files total more than %d bytes", name, ErrTooLarge, w.lim.MaxTotalBytes)
	}
	w.files = append(w.files, file{name: name, size: size})
	return nil
}

// hashFiles hashes files in parallel, in their order, counting into p
// when it is not nil. One file, or one worker, is hashed on the calling
// goroutine.
func hashFiles(ctx context.Context, r *resolver, files []file, lim Limits, p *Progress) ([]Digest, error) {
	out := make([]Digest, len(files))
	pool := &bufPool
	if !slices.ContainsFunc(files, func(f file) bool { return f.size > smallBufSize }) {
		pool = &smallBufPool
	}
	var total atomic.Int64
	workers := min(lim.Workers, len(files))
	if workers <= 1 {
		bp := pool.Get().(*[]byte)
		defer pool.Put(bp)
		for i, f := range files {
			d, err := hashFile(ctx, r, f.name, *bp, lim, &total, p)
			if err != nil {
				return nil, err
			}
			out[i] = d
		}
		return out, nil
	}
	g, gctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range workers {
		g.Go(func() error {
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

// readDirNames lists directory dfd, without "." and "..".
func readDirNames(dfd int) ([]string, error) {
	buf := make([]byte, 32<<10)
	var names []string
	for {
		n, err := unix.ReadDirent(dfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
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

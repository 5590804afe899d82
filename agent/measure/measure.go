// Package measure hashes the files a build step names as its products and
// materials. The agent does this itself, so a step cannot report a digest
// for something it did not build, and it does it confined to the step's
// workspace, so a step cannot make the agent read (and sign a digest of)
// anything outside it.
//
// Every path is resolved beneath the workspace root by the kernel, with
// openat2(2) and RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS and RESOLVE_NO_XDEV:
// neither "..", a symbolic link nor a mount point can lead outside the root,
// even while the step changes the tree under the agent. Symbolic links that
// stay inside the root are followed. On kernels without openat2 (before
// Linux 5.6) the same rules are enforced by opening one component at a time
// with O_NOFOLLOW and resolving symbolic links by hand; there a mount point
// is recognized by a directory's device number. Directories are read
// through the file descriptors opened beneath the root, never by path name.
//
// Only regular files are hashed. Directories are walked recursively; a
// symbolic link that leads back to a directory already being walked is not
// walked again.
package measure

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
)

// Defaults for the zero fields of Limits.
const (
	DefaultMaxFiles      = 100000
	DefaultMaxFileBytes  = 64 << 30
	DefaultMaxTotalBytes = 256 << 30
)

// Limits bounds the work Hash does for one call. A zero (or negative) field
// takes its default.
type Limits struct {
	// MaxFiles bounds the number of files hashed, and separately the number
	// of directories walked. Default DefaultMaxFiles.
	MaxFiles int
	// MaxFileBytes bounds the size of any one file. Default
	// DefaultMaxFileBytes.
	MaxFileBytes int64
	// MaxTotalBytes bounds the total size of all files. Default
	// DefaultMaxTotalBytes.
	MaxTotalBytes int64
	// Workers is how many files are hashed at once. Default
	// runtime.GOMAXPROCS(0).
	Workers int
}

func (l Limits) withDefaults() Limits {
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = DefaultMaxFileBytes
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if l.Workers <= 0 {
		l.Workers = runtime.GOMAXPROCS(0)
	}
	return l
}

// Digest is the measurement of one regular file.
type Digest struct {
	// Name is the file's slash-separated path relative to the root, cleaned.
	// A file reached through a symbolic link is named by the link's path.
	Name string
	// SHA256 is the lowercase hex SHA-256 of the file's content.
	SHA256 string
	// Size is the number of bytes hashed.
	Size int64
}

// Errors that callers branch on. Hash wraps them with the offending path;
// test with errors.Is.
var (
	// ErrEscapes means a path leads outside the root: it is absolute, its
	// ".." components climb above the root, or a symbolic link or mount
	// point in it leads elsewhere.
	ErrEscapes = errors.New("path escapes the root")
	// ErrTooManyFiles means more than Limits.MaxFiles files (or
	// directories) would be measured.
	ErrTooManyFiles = errors.New("too many files")
	// ErrTooLarge means a file exceeds Limits.MaxFileBytes or all files
	// together exceed Limits.MaxTotalBytes.
	ErrTooLarge = errors.New("too large")
	// ErrNotFound means a path (or a symbolic link's target) does not exist.
	ErrNotFound = errors.New("no such file or directory")
	// ErrNotRegular means a path is a device, fifo, socket or other file
	// that is neither a regular file nor a directory.
	ErrNotRegular = errors.New("not a regular file")
)

// Hash opens root, an absolute path to a directory, and hashes every regular
// file named by paths: files or directories relative to root, directories
// walked recursively. The digests are sorted by Name with no Name twice.
//
// Every path is checked before anything is opened: absolute paths and paths
// whose ".." climbs above root fail with ErrEscapes. Limits are checked while
// the tree is walked, before any content is read. Cancelling ctx stops the
// work and Hash returns ctx's error.
func Hash(ctx context.Context, root string, paths []string, lim Limits) ([]Digest, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("measure: root %q is not an absolute path", root)
	}
	rels, err := cleanRels(paths)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("measure: %w", err)
	}
	r, err := openRoot(root, false)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.hash(ctx, rels, lim.withDefaults(), nil)
}

// Root is a directory opened for measuring. Whatever later happens to the
// path it was opened by, its Hash resolves paths beneath the directory that
// was opened.
type Root struct {
	path string
	sys  rootSys
}

// OpenRoot opens dir, an absolute path to a directory, for measuring. The
// Root's Path is the directory's own absolute path, free of symbolic links,
// "." and "..", as the kernel names the directory it opened: what a policy
// about where the measured files are should look at. Close the Root when
// done.
func OpenRoot(dir string) (*Root, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("measure: root %q is not an absolute path", dir)
	}
	return openRoot(dir, true)
}

// Path is the root directory's absolute path, symbolic links resolved.
func (r *Root) Path() string { return r.path }

// Hash is the package's Hash beneath r.
func (r *Root) Hash(ctx context.Context, paths []string, lim Limits) ([]Digest, error) {
	return r.HashWithProgress(ctx, paths, lim, nil)
}

// HashWithProgress is Hash that counts its work into p as it goes; a nil p
// counts nothing.
func (r *Root) HashWithProgress(ctx context.Context, paths []string, lim Limits, p *Progress) ([]Digest, error) {
	rels, err := cleanRels(paths)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("measure: %w", err)
	}
	return r.hash(ctx, rels, lim.withDefaults(), p)
}

// Progress counts the work of hashing while it happens, for whoever shows
// it: once the walk has listed the files, before any content is read, it
// adds their number and size to the totals; the hashing workers then add to
// the done counts as they read. The counters are atomic: read them at any
// time from any goroutine, while the hashing goes on undisturbed.
//
// A Progress may be shared by several calls one after another (products,
// then materials); the totals then grow as each call's walk ends. When a
// call succeeds, the done counts have caught up with the totals exactly,
// even when a file changed size between the walk and the read.
type Progress struct {
	FilesTotal, FilesDone atomic.Int64
	BytesTotal, BytesDone atomic.Int64
}

// Close closes the root directory. A closed Root hashes nothing. Hash may
// be called from several goroutines at once, but not together with Close.
func (r *Root) Close() error { return r.close() }

// cleanRels checks every path lexically and returns them cleaned, without
// duplicates.
func cleanRels(paths []string) ([]string, error) {
	rels := make([]string, 0, len(paths))
	seen := make(map[string]bool, len(paths))
	for _, p := range paths {
		rel, err := cleanRel(p)
		if err != nil {
			return nil, err
		}
		if !seen[rel] {
			seen[rel] = true
			rels = append(rels, rel)
		}
	}
	return rels, nil
}

// cleanRel checks p lexically and returns it cleaned. It fails with
// ErrEscapes for absolute paths and paths that climb above the root.
func cleanRel(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("measure: %q: invalid path: contains a NUL byte", p)
	}
	if path.IsAbs(p) {
		return "", fmt.Errorf("measure: %q: %w: absolute path", p, ErrEscapes)
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("measure: %q: %w: \"..\" climbs above the root", p, ErrEscapes)
	}
	return c, nil
}

// join names child inside dir, both cleaned relative paths.
func join(dir, child string) string {
	if dir == "." {
		return child
	}
	return dir + "/" + child
}

// Package measure hashes the files a build step names as its products and
// materials. The agent does this itself, so a step cannot report a digest
// for something it did not build, and it does it in the step's own world
// and with the step's own rights, so a step cannot make the agent read (and
// sign a digest of) anything the step could not read itself.
//
// OpenWorkspace resolves the workspace from the caller's root directory
// (the agent opens the caller's /proc/PID/root, reached through the
// caller's pidfd): the path is the one the caller names, in the caller's
// mount namespace, and it may hold no symbolic link, magic link ("/proc/PID/
// root") or procfs directory on the way. Every product and material is then
// resolved beneath the workspace by the kernel, with openat2(2) and
// RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS and RESOLVE_NO_XDEV: neither "..",
// a symbolic link nor a mount point can lead outside it, even while the step
// changes the tree under the agent. Symbolic links that stay inside are
// followed. On kernels without openat2 (before Linux 5.6) the same rules are
// enforced by opening one component at a time with O_NOFOLLOW and resolving
// symbolic links by hand; there a mount point is recognized by a directory's
// device number. Directories are read through the file descriptors opened
// beneath the workspace, never by path name.
//
// Every directory and file is opened, and every file checked for read
// access before any content is read, on threads that took the caller's
// file-access credentials (fsuid, fsgid, supplementary groups; the
// capabilities the agent holds and the caller does not are dropped): the
// kernel's own permission checks (mode bits, ACLs, LSMs) decide what the
// agent may measure.
//
// Only regular files are hashed. Directories are walked recursively; a
// symbolic link that leads back to a directory already being walked is not
// walked again. The limits hold for products and materials together, and a
// walk stops as soon as it reaches one, without reading further.
package measure

import (
	"context"
	"errors"
	"fmt"
	"os"
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

// Limits bounds the work one measurement does, products and materials
// together. A zero (or negative) field takes its default.
type Limits struct {
	// MaxFiles bounds the number of files hashed, and separately the number
	// of directories and symbolic links the walk meets. The walk stops at
	// the first name over either bound. Default DefaultMaxFiles.
	MaxFiles int
	// MaxFileBytes bounds the size of any one file. Default
	// DefaultMaxFileBytes.
	MaxFileBytes int64
	// MaxTotalBytes bounds the total size of all files. Default
	// DefaultMaxTotalBytes.
	MaxTotalBytes int64
	// Workers is how many files are hashed at once. Default
	// runtime.GOMAXPROCS(0). Measure uses at most the caller's uid's
	// share of the measuring threads (see Measure), which is never less
	// than the default.
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
	// point in it leads elsewhere; or a workspace path goes through a
	// symbolic link, a magic link or procfs.
	ErrEscapes = errors.New("path escapes the root")
	// ErrNoAccess means the caller could not have read a file or searched
	// a directory on the way: the agent reads nothing for it.
	ErrNoAccess = errors.New("not accessible to the caller")
	// ErrTooManyFiles means more than Limits.MaxFiles files (or
	// directories and symbolic links) would be measured.
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
// It uses the agent's own view of the file system and its own rights: the
// local API measures with Measure instead.
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
	out, _, err := hashOwn(ctx, root, rels, lim.withDefaults())
	return out, err
}

// Caller is the process a measurement is for: its root directory and the
// credentials the kernel checks its file access with.
type Caller struct {
	// Root is an open directory (O_PATH is enough): the caller's root
	// directory, in the caller's mount namespace, as the agent opened it
	// (its /proc/PID/root). Measure resolves the workspace from it and
	// does not keep it.
	Root int
	// UID, GID and Groups are the caller's user, group and supplementary
	// groups, as the agent's user namespace sees them.
	UID, GID uint32
	Groups   []uint32
	// Caps are the capabilities the caller holds (its permitted set, as
	// in /proc/PID/status, bit N for capability N). While measuring, the
	// agent drops every capability the caller lacks.
	Caps uint64
}

// Measure hashes, on c's behalf, every regular file that products and
// materials name beneath workspace, as Hash does, with one set of limits
// for both lists together, counting its work into p (nil counts nothing).
//
// workspace is the directory as c names it: absolute and clean, resolved
// from c.Root with c's rights; it may hold no symbolic link (the caller
// names a directory by its real path) or magic link and may not be on
// procfs or sysfs: those fail with ErrEscapes. Every name in both lists is
// walked, and every file checked for access by c, before any content is
// read: a file c could not read fails with ErrNoAccess.
//
// The measuring threads are shared by all callers: one uid holds at most
// half of them at once (at least GOMAXPROCS) and its further work waits for
// its own share, so that one uid's large measurements cannot keep another
// uid's waiting. Measure waits for a thread only while ctx lasts; then it
// fails with ctx's error, wrapped.
func Measure(ctx context.Context, c Caller, workspace string, products, materials []string, lim Limits, p *Progress) (prods, mats []Digest, err error) {
	return measure(ctx, c, workspace, products, materials, lim, p, nil)
}

func measure(ctx context.Context, c Caller, workspace string, products, materials []string, lim Limits, p *Progress, read WorkspaceReader) (prods, mats []Digest, err error) {
	if !path.IsAbs(workspace) || path.Clean(workspace) != workspace {
		return nil, nil, fmt.Errorf("measure: workspace %q is not a clean absolute path", workspace)
	}
	prels, err := cleanRels(products)
	if err != nil {
		return nil, nil, err
	}
	mrels, err := cleanRels(materials)
	if err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("measure: %w", err)
	}
	return measureAs(ctx, c, workspace, prels, mrels, lim.withDefaults(), p, read)
}

// A WorkspaceReader reads more of a workspace for a measurement (its git
// work trees, say). MeasureAndRead calls it once the walk is done, on the
// measuring thread, with the caller's credentials, and with the workspace
// that was walked as ws: an os.Root opened from the workspace's descriptor
// (its path is not resolved again), beneath which every name is confined.
// What it reads is what the caller could read.
type WorkspaceReader func(ws *os.Root) error

// MeasureAndRead is Measure that also lets read (when not nil) read the
// workspace on the caller's behalf; its error fails the measurement.
func MeasureAndRead(ctx context.Context, c Caller, workspace string, products, materials []string, lim Limits, p *Progress, read WorkspaceReader) (prods, mats []Digest, err error) {
	return measure(ctx, c, workspace, products, materials, lim, p, read)
}

// Progress counts the work of hashing while it happens, for whoever shows
// it: once the walk has listed the files, before any content is read, it
// adds their number and size to the totals; the hashing workers then add to
// the done counts as they read. The counters are atomic: read them at any
// time from any goroutine, while the hashing goes on undisturbed.
//
// When a measurement succeeds, the done counts have caught up with the
// totals exactly, even when a file changed size between the walk and the
// read.
type Progress struct {
	FilesTotal, FilesDone atomic.Int64
	BytesTotal, BytesDone atomic.Int64
}

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

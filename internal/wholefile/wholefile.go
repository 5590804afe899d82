// Package wholefile writes the files Hallmark's commands leave for their
// users (bundles, trusted roots, VSAs) so that a file of the user's own
// holds what it held before or the whole of what was written, never part
// of it.
package wholefile

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Write writes data to path. Where path is nothing yet, or plainly the
// caller's own file (replaceable), data goes to a new file beside it,
// which is then renamed over it: a command killed while it writes (a
// runner's timeout), or a write that fails (a full disk, a file size
// limit), leaves what path held before, and no file cut short for a later
// step to upload, verify or trust. A command killed mid-write may leave
// the new file beside it, hidden: .NAME.RANDOM.tmp.
//
// The new file has the group and mode of the file it replaces, or 0644
// less the umask, as os.WriteFile gives either; not its ACLs or other
// extended attributes. Anything else at path is written in place by
// os.WriteFile, as before, so that what guarded it still does: a device,
// a FIFO, /dev/fd/N from a shell's process substitution or a symlink
// (renaming would replace the node itself), another user's file (its
// owner and mode, and the kernel's fs.protected_regular in a sticky
// directory), a file without its owner's write bit, a file with other
// links. So is a file whose directory takes no new file, that cannot be
// renamed over (a file bind-mounted into a container), or whose group
// and mode the new file cannot take (vfat; a group its user is no member
// of). Any other error (a full disk) fails the write, the previous file
// untouched. Nothing is synced: what a power loss may take, the command
// can write again (a bundle is rebuilt from the log).
func Write(path string, data []byte) error {
	fi, err := os.Lstat(path)
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("write %s: %w", path, bare(err))
	case err == nil && !replaceable(fi):
		return os.WriteFile(path, data, 0o644)
	}
	err = replace(path, data, fi)
	if errors.Is(err, errInPlace) {
		return os.WriteFile(path, data, 0o644)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, bare(err))
	}
	return nil
}

// replaceable reports whether fi, at the path Write was given, is plainly
// the caller's to replace: a regular file of its effective uid, with its
// owner's write bit, and no other link to it.
func replaceable(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && fi.Mode().IsRegular() && st.Uid == uint32(os.Geteuid()) &&
		fi.Mode().Perm()&0o200 != 0 && st.Nlink == 1
}

// errInPlace means that path could not be replaced, and nothing was done:
// Write writes it in place instead.
var errInPlace = errors.New("wholefile: write in place")

// replace writes data to a new file beside path, then renames it over
// path. old is what path holds (nil: nothing), whose mode the new file
// takes.
func replace(path string, data []byte, old fs.FileInfo) error {
	// A new file gets 0644 less the umask, as os.WriteFile creates it.
	// One that replaces a file stays 0600 until its data is written and
	// its mode set: the file it replaces may be more private than 0644,
	// and one who opens the new file early keeps what the open allowed.
	perm := fs.FileMode(0o644)
	if old != nil {
		perm = 0o600
	}
	f, err := createBeside(path, perm)
	if isErrno(err, syscall.EACCES, syscall.EPERM, syscall.EROFS) {
		return errInPlace // a directory that takes no new file
	}
	if err != nil {
		return err
	}
	created(f)
	_, err = f.Write(data)
	if err == nil && old != nil {
		err = keep(f, old)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
		if isErrno(err, syscall.EBUSY, syscall.EXDEV) {
			err = errInPlace // a mount point: a file bind-mounted into a container
		}
	}
	if err != nil {
		os.Remove(f.Name()) //nolint:errcheck // best effort; err says what failed
	}
	return err
}

// keep gives f the group and mode of old, the file it replaces: the group
// first, so that the group bits never apply to another group. Where the
// file system or the caller's groups do not allow it (vfat; a group the
// caller is no member of), errInPlace.
func keep(f *os.File, old fs.FileInfo) error {
	err := f.Chown(-1, int(old.Sys().(*syscall.Stat_t).Gid))
	if err == nil {
		err = f.Chmod(old.Mode().Perm())
	}
	if isErrno(err, syscall.EPERM, syscall.ENOTSUP) {
		return errInPlace
	}
	return err
}

// isErrno reports whether err is one of errnos.
func isErrno(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// bare is err without the operation and path of an *fs.PathError or
// *os.LinkError, which name the new file beside the path, not the path.
func bare(err error) error {
	var pe *fs.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		return pe.Err
	case errors.As(err, &le):
		return le.Err
	}
	return err
}

// maxTempBase bounds the part of the new file's name taken from path's,
// so that it stays under NAME_MAX (255) with its prefix and suffix.
const maxTempBase = 200

// createBeside creates a new file with perm (less the umask) in path's
// directory, named after path and hidden (tempName). O_EXCL: it never
// opens what another process put there, file or symlink; a name taken is
// another try.
func createBeside(path string, perm fs.FileMode) (*os.File, error) {
	dir, base := filepath.Split(path)
	if len(base) > maxTempBase {
		base = base[:maxTempBase]
	}
	for try := 0; ; try++ {
		f, err := os.OpenFile(filepath.Join(dir, tempName(base)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) && try < 100 {
			continue
		}
		return f, err
	}
}

// tempName is the name of a new file beside base: .BASE.RANDOM.tmp. A
// variable for tests, which plant what another process could.
var tempName = func(base string) string {
	return "." + base + "." + strconv.FormatUint(rand.Uint64(), 36) + ".tmp"
}

// created is called with each new file beside a path as soon as it is
// created, before anything is written to it. For tests.
var created = func(*os.File) {}

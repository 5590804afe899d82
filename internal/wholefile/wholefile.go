// Package wholefile writes the files Hallmark's commands leave for their
// users (bundles, trusted roots, VSAs) so that a file holds what it held
// before or the whole of what was written, never part of it.
package wholefile

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
)

// Write writes data to path so that path holds what it held before or the
// whole of data, never part of it: a command killed while it writes (a
// runner's timeout) or a write that fails (a full disk, a file size
// limit) leaves no file cut short for a later step to upload, verify or
// trust. Where path is a regular file or nothing yet, data is written to
// a new file beside it, then renamed over it; it has the mode of the file
// it replaces, or 0644 less the umask, as os.WriteFile gives either.
// Anything else at path (a device, a FIFO, /dev/fd/N from a shell's
// process substitution, a symlink) is written through in place, as
// os.WriteFile does: renaming would replace the node itself. Nothing is
// synced: what a power loss may take, the command can write again (a
// bundle is rebuilt from the log).
func Write(path string, data []byte) error {
	fi, err := os.Lstat(path)
	switch {
	case err == nil && !fi.Mode().IsRegular():
		return os.WriteFile(path, data, 0o644)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	f, err := createBeside(path)
	if err != nil {
		return err
	}
	if fi != nil {
		err = f.Chmod(fi.Mode().Perm()) // the mode it replaces, as os.WriteFile keeps it
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name()) //nolint:errcheck // best effort; err says what failed
		return err
	}
	return nil
}

// createBeside creates a new file in path's directory, named after path
// and hidden (.NAME.RANDOM.tmp). O_EXCL: it never opens what another
// process put there, file or symlink.
func createBeside(path string) (*os.File, error) {
	dir, base := filepath.Split(path)
	for try := 0; ; try++ {
		name := filepath.Join(dir, "."+base+"."+strconv.FormatUint(rand.Uint64(), 36)+".tmp")
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) && try < 100 {
			continue
		}
		return f, err
	}
}

package gitrepo

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// errNotRegular is a file the reader expected that is a FIFO, a device or
// a socket.
var errNotRegular = errors.New("not a regular file or directory")

// FS returns the file system Read needs of a directory on disk: root's
// own (confined beneath it, symbolic links that climb out refused), with
// every file opened non-blocking and only regular files and directories
// opened at all, so that a FIFO planted where the repository or the work
// tree has a file (or swapped in after it was looked at) fails the read
// at once instead of blocking it until someone writes to it.
func FS(root *os.Root) fs.FS { return rootFS{root: root, fsys: root.FS()} }

// rootFS has no ReadDir of its own: Read lists directories a batch at a
// time (fs.ReadDir still works, listing whole and sorting).
type rootFS struct {
	root *os.Root
	fsys fs.FS // root.FS(): Stat, Lstat and ReadLink, which open nothing
}

func (r rootFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	f, err := r.root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() && !fi.IsDir() {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: name, Err: errNotRegular}
	}
	return f, nil
}

func (r rootFS) Stat(name string) (fs.FileInfo, error) { return fs.Stat(r.fsys, name) }

func (r rootFS) Lstat(name string) (fs.FileInfo, error) { return fs.Lstat(r.fsys, name) }

func (r rootFS) ReadLink(name string) (string, error) { return fs.ReadLink(r.fsys, name) }

//go:build linux

package measure

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// OSRoot opens the very directory r measures (through its descriptor,
// not its path, which may have changed since) as an os.Root: a file
// system confined beneath it, for readers that take an io/fs.FS (the git
// work tree reader). Close it when done.
func (r *Root) OSRoot() (*os.Root, error) {
	root, err := os.OpenRoot("/proc/self/fd/" + strconv.Itoa(r.sys.fd))
	if err != nil {
		return nil, fmt.Errorf("measure: reopen root: %w", err)
	}
	return root, nil
}

// Exists reports whether rel, a clean slash-separated relative path,
// names anything beneath r, resolved as Hash resolves paths (one
// openat2 with O_PATH: cheap enough to ask on every attestation).
func (r *Root) Exists(rel string) bool {
	fd, err := r.sys.r.open(rel, unix.O_PATH)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

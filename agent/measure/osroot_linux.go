//go:build linux

package measure

import (
	"fmt"
	"os"
	"strconv"
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

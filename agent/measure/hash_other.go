//go:build !linux

package measure

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// rootSys is empty: measuring needs openat2(2) or the Linux fallback walk;
// other systems are not supported.
type rootSys struct{}

func openRoot(string, bool) (*Root, error) {
	return nil, fmt.Errorf("measure: %w", errors.ErrUnsupported)
}

func (*Root) close() error { return nil }

func (*Root) hash(context.Context, []string, Limits, *Progress) ([]Digest, error) {
	return nil, fmt.Errorf("measure: %w", errors.ErrUnsupported)
}

// OSRoot is not supported on this system.
func (*Root) OSRoot() (*os.Root, error) {
	return nil, fmt.Errorf("measure: %w", errors.ErrUnsupported)
}

// Exists is not supported on this system: nothing exists.
func (*Root) Exists(string) bool { return false }

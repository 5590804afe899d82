//go:build !linux

package measure

import (
	"context"
	"errors"
	"fmt"
)

// hash needs openat2(2) or the Linux fallback walk; other systems are not
// supported.
func hash(context.Context, string, []string, Limits) ([]Digest, error) {
	return nil, fmt.Errorf("measure: %w", errors.ErrUnsupported)
}

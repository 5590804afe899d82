//go:build !linux

package measure

import (
	"context"
	"errors"
	"fmt"
)

// Measuring needs openat2(2) or the Linux fallback walk, and per-thread
// credentials: other systems are not supported.

func hashOwn(context.Context, string, []string, Limits) ([]Digest, []Digest, error) {
	return nil, nil, fmt.Errorf("measure: %w", errors.ErrUnsupported)
}

func measureAs(context.Context, Caller, string, []string, []string, Limits, *Progress, WorkspaceReader) ([]Digest, []Digest, error) {
	return nil, nil, fmt.Errorf("measure: %w", errors.ErrUnsupported)
}

// Package logstate remembers, for a verifier, the latest checkpoint it has
// seen of each transparency log, and refuses any checkpoint that is not
// consistent with it: the client's half of a log's promise that it never
// drops or rewrites an entry (C2SP tlog-checkpoint; RFC 6962 section
// 2.1.2, consistency proofs), as Go's checksum database client keeps its
// latest note.
//
// A bundle carries its entry's inclusion proof under a checkpoint the
// log's key signed; verifying it says nothing of whether that checkpoint
// is one every other reader of the log sees. A holder of the log key can
// sign a forked checkpoint and hand one consumer a bundle on the fork.
// State catches that fork as soon as the consumer meets the log's real
// history, or its own earlier view, of which the fork is no extension:
// two checkpoints of one size must have one root, and of two sizes the
// larger must extend the smaller, as a consistency proof from the log
// shows. The proof need not be trusted: it is checked against both signed
// roots.
package logstate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/internal/wholefile"
)

// ErrInconsistent means a checkpoint is not consistent with the one
// remembered: the log, or what was shown of it, forked or was rewritten.
var ErrInconsistent = errors.New("logstate: checkpoints of the log are not consistent")

// ErrNoProof means two checkpoints of different sizes met and no
// consistency proof could be had to compare them.
var ErrNoProof = errors.New("logstate: no consistency proof")

// Proofs gives consistency proofs (RFC 6962 section 2.1.2) between two
// sizes of a log, as GET /log/proof/consistency does.
type Proofs interface {
	Consistency(ctx context.Context, origin string, from, to uint64) ([][]byte, error)
}

// maxFileSize bounds the state file.
const maxFileSize = 1 << 20

// State is the latest checkpoint seen of each log, by origin.
type State struct {
	path    string
	logs    map[string]verify.Checkpoint
	changed bool
}

// fileV1 is the state file: JSON, written whole, mode 0600.
type fileV1 struct {
	Version int                 `json:"version"`
	Logs    []verify.Checkpoint `json:"logs"`
}

// Load reads the state at path; a missing file is an empty state, which
// trusts the first checkpoint of each log it meets.
func Load(path string) (*State, error) {
	s := &State{path: path, logs: map[string]verify.Checkpoint{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("logstate: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("logstate: %s is larger than %d bytes", path, maxFileSize)
	}
	var f fileV1
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("logstate: %s: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("logstate: %s: version %d, want 1", path, f.Version)
	}
	for _, cp := range f.Logs {
		if cp.Origin == "" || len(cp.Root) != 32 {
			return nil, fmt.Errorf("logstate: %s: a checkpoint without an origin or a 32-byte root", path)
		}
		if _, dup := s.logs[cp.Origin]; dup {
			return nil, fmt.Errorf("logstate: %s: log %q twice", path, cp.Origin)
		}
		s.logs[cp.Origin] = cp
	}
	return s, nil
}

// Latest returns the checkpoint remembered for origin.
func (s *State) Latest(origin string) (verify.Checkpoint, bool) {
	cp, ok := s.logs[origin]
	return cp, ok
}

// Observe checks cp, a checkpoint whose signature was verified, against
// the one remembered of its log, and remembers it when it is the larger.
// proofs may be nil (offline): then only a checkpoint of the remembered
// size, or of a log not seen before, can be checked; another fails with
// ErrNoProof.
func (s *State) Observe(ctx context.Context, cp verify.Checkpoint, proofs Proofs) error {
	prev, ok := s.logs[cp.Origin]
	if !ok {
		s.remember(cp)
		return nil
	}
	if cp.Size == prev.Size {
		if !bytes.Equal(cp.Root, prev.Root) {
			return fmt.Errorf("%w: %s of size %d has root %x here and root %x in %s", ErrInconsistent, cp.Origin, cp.Size, cp.Root, prev.Root, s.path)
		}
		return nil
	}
	small, large := prev, cp
	if cp.Size < prev.Size {
		small, large = cp, prev
	}
	if small.Size == 0 {
		// Every tree extends the empty one.
		s.rememberLarger(cp, prev)
		return nil
	}
	if proofs == nil {
		return fmt.Errorf("%w: %s of size %d, and of size %d in %s: give the log's server (--server) to prove one extends the other",
			ErrNoProof, cp.Origin, cp.Size, prev.Size, s.path)
	}
	hashes, err := proofs.Consistency(ctx, cp.Origin, small.Size, large.Size)
	if err != nil {
		return fmt.Errorf("%w: %s from %d to %d: %w", ErrNoProof, cp.Origin, small.Size, large.Size, err)
	}
	if err := tlog.VerifyConsistency(small.Size, large.Size, hashes, small.Root, large.Root); err != nil {
		return fmt.Errorf("%w: %s of size %d (root %x) is not extended by size %d (root %x): %w",
			ErrInconsistent, cp.Origin, small.Size, small.Root, large.Size, large.Root, err)
	}
	s.rememberLarger(cp, prev)
	return nil
}

func (s *State) rememberLarger(cp, prev verify.Checkpoint) {
	if cp.Size > prev.Size {
		s.remember(cp)
	}
}

func (s *State) remember(cp verify.Checkpoint) {
	s.logs[cp.Origin] = verify.Checkpoint{Origin: cp.Origin, Size: cp.Size, Root: bytes.Clone(cp.Root)}
	s.changed = true
}

// Save writes the state back when it changed, whole (wholefile) and, when
// new, 0600.
func (s *State) Save() error {
	if !s.changed {
		return nil
	}
	f := fileV1{Version: 1}
	for _, cp := range s.logs {
		f.Logs = append(f.Logs, cp)
	}
	slices.SortFunc(f.Logs, func(a, b verify.Checkpoint) int { return strings.Compare(a.Origin, b.Origin) })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("logstate: %w", err)
	}
	if _, err := os.Stat(s.path); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(s.path, nil, 0o600); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("logstate: %w", err)
		}
	}
	if err := wholefile.Write(s.path, append(data, '\n')); err != nil {
		return fmt.Errorf("logstate: %w", err)
	}
	s.changed = false
	return nil
}

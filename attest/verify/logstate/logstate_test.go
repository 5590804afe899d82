package logstate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/testonly"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/verify"
)

const origin = "hallmark.example.org"

// treeProofs serves a tree's consistency proofs, as a log server does;
// a lying server's too (it can only serve proofs of its own tree).
type treeProofs struct{ t *testonly.Tree }

func (p treeProofs) Consistency(_ context.Context, o string, from, to uint64) ([][]byte, error) {
	if o != origin {
		return nil, fmt.Errorf("no log %q", o)
	}
	return p.t.ConsistencyProof(from, to)
}

func tree(entries ...string) *testonly.Tree {
	t := testonly.New(tlog.Hasher)
	for _, e := range entries {
		t.AppendData([]byte(e))
	}
	return t
}

func at(t *testonly.Tree, size uint64) verify.Checkpoint {
	return verify.Checkpoint{Origin: origin, Size: size, Root: t.HashAt(size)}
}

func TestObserve(t *testing.T) {
	ctx := context.Background()
	genuine := tree("a", "b", "c", "d", "e", "f", "g", "h")
	// The log key's holder shows one consumer a fork: the entry at index
	// 2 is another, and the tree grows on from there.
	fork := tree("a", "b", "evil", "d", "e", "f", "g", "h")

	for _, tc := range []struct {
		name     string
		seen     verify.Checkpoint // remembered first
		then     verify.Checkpoint
		proofs   Proofs
		want     error // nil: consistent
		remember uint64
	}{
		{"the same checkpoint", at(genuine, 6), at(genuine, 6), nil, nil, 6},
		{"a later one of the same log", at(genuine, 4), at(genuine, 8), treeProofs{genuine}, nil, 8},
		{"an earlier one of the same log", at(genuine, 8), at(genuine, 4), treeProofs{genuine}, nil, 8},
		{"after the empty tree", at(genuine, 0), at(genuine, 5), nil, nil, 5},
		{"a fork of the same size", at(genuine, 6), at(fork, 6), treeProofs{genuine}, ErrInconsistent, 6},
		{"a fork, larger, with the forker's proofs", at(genuine, 4), at(fork, 8), treeProofs{fork}, ErrInconsistent, 4},
		{"a fork, larger, with the log's proofs", at(genuine, 4), at(fork, 8), treeProofs{genuine}, ErrInconsistent, 4},
		{"a fork, smaller, seen after the real log", at(genuine, 8), at(fork, 4), treeProofs{fork}, ErrInconsistent, 8},
		{"another size, offline", at(genuine, 4), at(genuine, 8), nil, ErrNoProof, 4},
		{"another size, the server refusing", at(genuine, 4), at(genuine, 8), failingProofs{}, ErrNoProof, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Load(filepath.Join(t.TempDir(), "state.json"))
			require.NoError(t, err)
			require.NoError(t, s.Observe(ctx, tc.seen, nil), "the first of a log is remembered")
			err = s.Observe(ctx, tc.then, tc.proofs)
			if tc.want == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.want)
			}
			latest, ok := s.Latest(origin)
			require.True(t, ok)
			require.Equal(t, tc.remember, latest.Size)
		})
	}
}

type failingProofs struct{}

func (failingProofs) Consistency(context.Context, string, uint64, uint64) ([][]byte, error) {
	return nil, errors.New("503 Service Unavailable")
}

func TestSaveLoad(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.json")
	genuine, fork := tree("a", "b", "c", "d"), tree("a", "b", "evil", "d")
	s, err := Load(path)
	require.NoError(t, err)
	require.NoError(t, s.Save(), "nothing to save")
	_, err = os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist)

	require.NoError(t, s.Observe(ctx, at(genuine, 3), nil))
	other := verify.Checkpoint{Origin: "other.example.org", Size: 1, Root: tree("x").HashAt(1)}
	require.NoError(t, s.Observe(ctx, other, nil))
	require.NoError(t, s.Save())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A later run remembers what this one saw: the fork is refused then.
	again, err := Load(path)
	require.NoError(t, err)
	require.ErrorIs(t, again.Observe(ctx, at(fork, 3), nil), ErrInconsistent)
	latest, ok := again.Latest("other.example.org")
	require.True(t, ok)
	require.Equal(t, other, latest)
}

func TestLoadRefuses(t *testing.T) {
	for name, content := range map[string]string{
		"not JSON":        "{",
		"unknown field":   `{"version":1,"logs":[],"extra":1}`,
		"another version": `{"version":2,"logs":[]}`,
		"short root":      `{"version":1,"logs":[{"origin":"o","size":1,"rootHash":"AAAA"}]}`,
		"a log twice": `{"version":1,"logs":[{"origin":"o","size":1,"rootHash":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},` +
			`{"origin":"o","size":2,"rootHash":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			_, err := Load(path)
			require.Error(t, err)
		})
	}
}

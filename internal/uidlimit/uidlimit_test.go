package uidlimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The uid limits: a uid waits for its own slots; other uids never wait
// behind it, even with the shared bound taken up to what one uid may hold.
func TestUIDLimitFair(t *testing.T) {
	l := New(2, 3)
	ctx := context.Background()
	var held []func()
	for range 2 {
		release, err := l.Acquire(ctx, 1000)
		require.NoError(t, err)
		held = append(held, release)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := l.Acquire(short, 1000)
	require.ErrorIs(t, err, context.DeadlineExceeded, "uid 1000 is at its bound")
	release, err := l.Acquire(ctx, 2000)
	require.NoError(t, err, "another uid is served")
	release()
	held[0]()
	release, err = l.Acquire(ctx, 1000)
	require.NoError(t, err, "a slot given back is taken again")
	release()
	held[1]()
	requireIdle(t, l)
}

// A uid waiting for the shared bound gives its own slot back when its ctx
// ends, and is served once the shared bound has room.
func TestUIDLimitSharedBoundWait(t *testing.T) {
	l := New(1, 2)
	ctx := context.Background()
	a, err := l.Acquire(ctx, 1000)
	require.NoError(t, err)
	b, err := l.Acquire(ctx, 2000)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = l.Acquire(short, 3000)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the shared bound is full")
	a()
	c, err := l.Acquire(ctx, 3000)
	require.NoError(t, err, "served once a shared slot is free")
	b()
	c()
	requireIdle(t, l)
}

func requireIdle(t *testing.T, l *Limit) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Empty(t, l.uids, "no state left for idle uids")
}

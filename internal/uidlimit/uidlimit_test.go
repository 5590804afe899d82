package uidlimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The uid limits: a uid waits for its own slots; other uids never wait
// behind it, even with the shared bound taken up to what one uid may hold
// and one more of its requests waiting meanwhile: the waiter holds none of
// the shared bound until it has one of its own slots.
func TestUIDLimitFair(t *testing.T) {
	l := New(2, 3)
	ctx := context.Background()
	var held []func()
	for range 2 {
		release, err := l.Acquire(ctx, 1000)
		require.NoError(t, err)
		held = append(held, release)
	}
	refs := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.uids[1000].refs
	}
	// A third request of uid 1000 waits until its deadline, and is then
	// forgotten.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	_, err := l.Acquire(short, 1000)
	require.ErrorIs(t, err, context.DeadlineExceeded, "uid 1000 is at its bound")
	require.Equal(t, 2, refs(), "the request that gave up holds nothing")

	// Another waits, for as long as it takes.
	served := make(chan func(), 1)
	go func() {
		if release, err := l.Acquire(ctx, 1000); err == nil {
			served <- release
		}
	}()
	require.Eventually(t, func() bool { return refs() == 3 }, 5*time.Second, time.Millisecond, "uid 1000's third request never came")
	time.Sleep(20 * time.Millisecond) // into its wait

	other, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	release, err := l.Acquire(other, 2000)
	require.NoError(t, err, "another uid is served while uid 1000 waits")
	release()
	select {
	case <-served:
		t.Fatal("uid 1000 served beyond its bound")
	default:
	}

	held[0]()
	select {
	case release := <-served:
		release()
	case <-time.After(5 * time.Second):
		t.Fatal("a slot given back is not taken by the waiting request")
	}
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

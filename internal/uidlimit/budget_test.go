package uidlimit

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBudget(t *testing.T) {
	b := NewBudget(100)
	r1, used, ok := b.Take(1000, 60)
	require.True(t, ok)
	require.Zero(t, used)
	r2, used, ok := b.Take(1000, 40)
	require.True(t, ok, "up to the budget")
	require.Equal(t, int64(60), used)
	_, used, ok = b.Take(1000, 1)
	require.False(t, ok, "past it")
	require.Equal(t, int64(100), used)

	r3, _, ok := b.Take(2000, 100)
	require.True(t, ok, "another uid has a budget of its own")
	r3()

	r1()
	r1() // a second release gives nothing back twice
	r4, used, ok := b.Take(1000, 60)
	require.True(t, ok)
	require.Equal(t, int64(40), used)
	r2()
	r4()
	require.Empty(t, b.used, "a uid holding nothing leaves no entry")

	big, _, ok := b.Take(3000, 500)
	require.True(t, ok, "one request larger than the budget is taken when the uid holds nothing")
	_, _, ok = b.Take(3000, 1)
	require.False(t, ok)
	big()
}

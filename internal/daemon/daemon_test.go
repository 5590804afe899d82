package daemon

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

type runnerFunc func(ctx context.Context) error

func (f runnerFunc) Run(ctx context.Context) error { return f(ctx) }

// Must show (from an outside review): a daemon's stop is logged, when it
// began and how long it drained, so a clean stop reads differently from a
// crash; a failure is not called a stop.
func TestRunLoggedLogsTheStop(t *testing.T) {
	for _, tc := range []struct {
		name    string
		runErr  error
		stopped bool
	}{
		{"clean stop", nil, true},
		{"failed while stopping", errors.New("store: closed badly"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			ctx, cancel := context.WithCancel(context.Background())
			err := runLogged(ctx, zap.New(core), runnerFunc(func(ctx context.Context) error {
				cancel()
				<-ctx.Done()
				require.Eventually(t, func() bool { return logs.FilterMessage("Stopping").Len() == 1 }, 5*time.Second, time.Millisecond)
				return tc.runErr
			}))
			require.ErrorIs(t, err, tc.runErr)
			require.Equal(t, 1, logs.FilterMessage("Stopping").Len())
			stopped := logs.FilterMessage("Stopped").All()
			if !tc.stopped {
				require.Empty(t, stopped)
				return
			}
			require.Len(t, stopped, 1)
			require.Contains(t, stopped[0].ContextMap(), "drain")
		})
	}
	// A run that ends on its own, before any signal, logs no stop.
	core, logs := observer.New(zap.InfoLevel)
	err := runLogged(context.Background(), zap.New(core), runnerFunc(func(context.Context) error { return errors.New("boom") }))
	require.Error(t, err)
	require.Zero(t, logs.Len())
}

// The attacker review's race: a runner that returns the moment ctx ends
// raced the logging of the stop; "Stopped" went missing or came first.
func TestRunLoggedOrdersTheStopLines(t *testing.T) {
	for range 500 {
		core, logs := observer.New(zap.InfoLevel)
		ctx, cancel := context.WithCancel(context.Background())
		err := runLogged(ctx, zap.New(core), runnerFunc(func(ctx context.Context) error {
			cancel()
			<-ctx.Done()
			return nil
		}))
		require.NoError(t, err)
		all := logs.All()
		require.Len(t, all, 2)
		require.Equal(t, "Stopping", all[0].Message)
		require.Equal(t, "Stopped", all[1].Message)
	}
}

package attestcmd

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Forwarded are the signals a CI runner sends to cancel a job. While the
// step's command runs each goes to it; see stepSignals for what else each
// does. A signal the process ignores is left alone (Forwardable).
var Forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// Forwardable returns those of sigs that this process does not ignore.
// Call it before registering any of them: registering a signal for
// os/signal stops it being ignored.
//
// A signal ignored when the process started stays ignored, for it and
// for the command, which inherits the disposition across exec: nohup
// ignores SIGHUP, and a shell ignores SIGINT in a job it runs in the
// background. Registered, such a signal would reach the command that was
// meant to be spared it (TestIgnoredSignalStaysIgnored). Go's runtime
// keeps an inherited SIG_IGN only for SIGHUP and SIGINT, so only those can
// be found ignored here.
func Forwardable(sigs ...os.Signal) []os.Signal {
	var out []os.Signal
	for _, s := range sigs {
		if !signal.Ignored(s) {
			out = append(out, s)
		}
	}
	return out
}

// NotifyForwardable registers Forwardable(Forwarded...) on a new
// channel, or returns nil when the process ignores them all: what
// Env.Signals takes. Registered before anything parses the command line,
// as Main and the hallmark CLI do, no signal the process receives misses
// the step: one that comes before Run waits in the channel, and Run's
// dispatch ends the step with it, or forwards it to the command if that
// has started by then.
func NotifyForwardable() chan os.Signal {
	fwd := Forwardable(Forwarded...)
	if len(fwd) == 0 {
		return nil
	}
	c := make(chan os.Signal, len(fwd))
	signal.Notify(c, fwd...)
	return c
}

// cancelsJob reports whether s, received while the command runs, also
// ends the step: CI runners cancel jobs with SIGINT (GitHub Actions, then
// SIGTERM) and SIGTERM (GitLab), so a command that handles them and exits
// 0 is not attested. SIGHUP (a reload, to many programs) and SIGQUIT (a
// thread dump, to a JVM or a Go program) only go to the command: they end
// the step when it dies of them.
func cancelsJob(s os.Signal) bool {
	return s == syscall.SIGINT || s == syscall.SIGTERM
}

// stepSignals dispatches the forwarded signals of one run: while the
// step's command runs, each goes to it (and SIGINT and SIGTERM also end
// the step); at any other time, each ends the step, so that no command
// starts after one and no attestation outlives one. Ending the step
// cancels the run's context with the signal as its cause.
type stepSignals struct {
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	command child // the running command, or nil
}

// newStepSignals dispatches in to cancel and to the command that start
// runs, until stop is called (it returns once the dispatch has ended).
// The dispatch outlives the step's end: a runner that cancels a job with
// SIGINT and then SIGTERM (GitHub Actions, 7.5 s apart) reaches the
// command with both (TestSignalsAfterTheStepEnded).
func newStepSignals(in <-chan os.Signal, cancel context.CancelCauseFunc) (s *stepSignals, stop func()) {
	s = &stepSignals{cancel: cancel}
	done, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case sig := <-in:
				s.dispatch(sig)
			case <-done:
				return
			}
		}
	}()
	return s, func() {
		close(done)
		<-ended
	}
}

func (s *stepSignals) dispatch(sig os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.command != nil {
		s.command.signal(sig)
		if !cancelsJob(sig) {
			return
		}
	}
	s.cancel(errors.New(sig.String() + " signal received"))
}

// start starts the command with startCommand unless a signal ended the
// step first (ctx), and forwards the signals that come afterwards to it
// until stop is called. A signal that comes while the command starts
// waits for it, and goes to it.
func (s *stepSignals) start(ctx context.Context, startCommand func() (child, error)) (c child, stop func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := context.Cause(ctx); err != nil {
		return nil, nil, err
	}
	if c, err = startCommand(); err != nil {
		return nil, nil, err
	}
	s.command = c
	return c, func() {
		s.mu.Lock()
		s.command = nil
		s.mu.Unlock()
	}, nil
}

package attestcmd

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// Forwarded are the signals a CI runner sends to cancel a job; the step's
// command gets them while it runs (see Main for the rest of the time),
// unless the process ignores them (see Forwardable).
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
// itself keeps an inherited SIG_IGN only for SIGHUP and SIGINT, so only
// those can be found ignored here.
func Forwardable(sigs ...os.Signal) []os.Signal {
	var out []os.Signal
	for _, s := range sigs {
		if !signal.Ignored(s) {
			out = append(out, s)
		}
	}
	return out
}

// child is the step's running command.
type child interface {
	// signal sends s to the command; it may have exited.
	signal(s os.Signal)
	// wait waits for the command to exit.
	wait() (syscall.WaitStatus, error)
	// release releases what signal needs, once it is no longer called.
	release()
}

// runCommand runs args with stdio passed through and SIGINT/SIGTERM/SIGHUP/
// SIGQUIT forwarded (those not ignored), and returns its exit code
// (128+signal when killed).
func runCommand(name string, env Env, args []string) int {
	sigs := make(chan os.Signal, 4)
	if fwd := Forwardable(Forwarded...); len(fwd) > 0 {
		signal.Notify(sigs, fwd...)
		defer signal.Stop(sigs)
	}
	c, err := start(env, args)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
		return 127
	}
	done, forwarding := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(forwarding)
		for {
			select {
			case s := <-sigs:
				c.signal(s)
			case <-done:
				return
			}
		}
	}()
	ws, err := c.wait()
	close(done)
	<-forwarding
	c.release()
	switch {
	case err != nil:
		return 1
	case ws.Signaled():
		return 128 + int(ws.Signal())
	default:
		return ws.ExitStatus()
	}
}

// command is args, looked up as exec.Command does, with env's stdio.
func command(env Env, args []string) *exec.Cmd {
	c := exec.Command(args[0], args[1:]...)
	c.Stdout, c.Stderr = env.Stdout, env.Stderr
	if env.Stdin != nil {
		c.Stdin = env.Stdin // a nil *os.File would not be a nil io.Reader
	}
	return c
}

// start starts args with env's stdio: by startPidfd where it can, and by
// os/exec otherwise.
func start(env Env, args []string) (child, error) {
	c := command(env, args)
	if p, ok := startPidfd(c); ok {
		return p, nil
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	return execChild{c}, nil
}

// execChild is a command started by os/exec.
type execChild struct{ c *exec.Cmd }

func (e execChild) signal(s os.Signal) {
	e.c.Process.Signal(s) //nolint:errcheck // it may have exited
}

func (execChild) release() {}

// wait returns the command's status, also when it failed; any other error
// of Wait's (copying stdio) is the error.
func (e execChild) wait() (syscall.WaitStatus, error) {
	var ee *exec.ExitError
	if err := e.c.Wait(); err != nil && !errors.As(err, &ee) {
		return 0, err
	}
	return e.c.ProcessState.Sys().(syscall.WaitStatus), nil
}

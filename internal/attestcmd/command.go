package attestcmd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// child is the step's running command.
type child interface {
	// signal sends s to the command; it may have exited.
	signal(s os.Signal)
	// wait waits for the command to exit.
	wait() (syscall.WaitStatus, error)
	// release releases what signal needs, once it is no longer called.
	release()
}

// runCommand runs args with stdio passed through and the forwarded
// signals dispatched by sigs, and returns its exit code (128+signal when
// killed). A command that cannot start is 127, with the reason; none
// starts once a signal ended the step (ctx), and err is then the signal.
func runCommand(ctx context.Context, env Env, args []string, sigs *stepSignals) (int, error) {
	c, stop, err := sigs.start(ctx, func() (child, error) { return start(env, args) })
	if err != nil {
		return 127, err
	}
	ws, err := c.wait()
	stop()
	c.release()
	switch {
	case err != nil:
		return 1, nil
	case ws.Signaled():
		return 128 + int(ws.Signal()), nil
	default:
		return ws.ExitStatus(), nil
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

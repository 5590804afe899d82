package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/harness"
	"golang.org/x/sys/unix"
)

// Must show: `hallmark attest --progress always` on a few hundred MB of
// products writes progress to stderr, as plain lines when stderr is a pipe
// and as one line rewritten in place and then blanked when it is a
// terminal; by default (auto) with stderr a pipe it writes no progress at
// all; and every bundle verifies for every product with `hallmark verify`.
func TestProgress(t *testing.T) {
	t.Parallel()
	ws := workspace(t, nil)
	t.Cleanup(func() { os.RemoveAll(ws) })
	const files, size = 6, 48 << 20 // 288 MiB
	chunk := make([]byte, 1<<20)
	rand.Read(chunk)
	var names []string
	for i := range files {
		name := filepath.Join("dist", "part"+string(rune('a'+i)))
		names = append(names, name)
		p := filepath.Join(ws, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		f, err := os.Create(p)
		require.NoError(t, err)
		for j := range size / len(chunk) {
			chunk[0], chunk[1] = byte(i), byte(j) // every MiB differs
			_, err = f.Write(chunk)
			require.NoError(t, err)
		}
		require.NoError(t, f.Close())
	}

	root, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	rootFile := filepath.Join(t.TempDir(), "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, root, 0o644))

	// attest runs the CLI with flags and stderr, a pipe when nil, and
	// checks that the bundle verifies for every product.
	attest := func(t *testing.T, stderr *os.File, flags ...string) string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "bundle.json")
		args := append([]string{"attest", "--socket", stack.Agent.Socket, "--step", "build", "--wait-log",
			"--workspace", ws, "--product", "dist", "--out", out}, flags...)
		cmd := exec.Command(stack.Bins.CLI, args...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if stderr != nil {
			cmd.Stderr = stderr
		}
		stdout, err := cmd.Output()
		require.NoError(t, err, "stderr: %s", errb.String())
		require.Empty(t, stdout)
		for _, name := range names {
			v, err := exec.Command(stack.Bins.CLI, "verify", filepath.Join(ws, name), "--bundle", out, "--trusted-root", rootFile, "--builder-id-prefix", harness.AgentID.String()).CombinedOutput()
			require.NoError(t, err, "verify %s: %s", name, v)
		}
		return errb.String()
	}

	t.Run("always", func(t *testing.T) {
		stderr := attest(t, nil, "--progress", "always")
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		require.GreaterOrEqual(t, len(lines), 2, "progress, then the summary: %q", stderr)
		require.NotContains(t, stderr, "\r", "plain lines when stderr is not a terminal")
		for _, l := range lines[:len(lines)-1] {
			require.True(t, strings.HasPrefix(l, "hallmark: hashing ") || strings.HasPrefix(l, "hallmark: hashed "), "line %q", l)
		}
		require.Equal(t, "hallmark: hashed 288.0 MiB in 6 files", lines[len(lines)-2], "the last counts are the totals")
		require.Contains(t, lines[len(lines)-1], "hallmark: attested step build (6 products")
	})
	t.Run("auto, stderr not a terminal", func(t *testing.T) {
		stderr := attest(t, nil)
		require.NotContains(t, stderr, "hashing")
		require.NotContains(t, stderr, "hashed")
		require.Equal(t, 1, strings.Count(stderr, "\n"), "only the summary: %q", stderr)
		require.Contains(t, stderr, "hallmark: attested step build (6 products")
	})
	t.Run("always, stderr a terminal", func(t *testing.T) {
		ptm, pts := openPTY(t)
		var screen bytes.Buffer
		read := make(chan struct{})
		go func() { io.Copy(&screen, ptm); close(read) }() //nolint:errcheck // EIO once the terminal closes
		attest(t, pts, "--progress", "always")
		pts.Close()
		<-read
		got := screen.String()
		// Rewritten in place (padded over longer text), the last counts,
		// then blanked for the summary.
		require.Regexp(t, `^(\rhallmark: hashing [^\r\n]*)*\rhallmark: hashed 288\.0 MiB in 6 files *\r +\rhallmark: attested step build \(6 products[^\r\n]*\r\n$`, got)
	})
}

// openPTY opens a pseudo-terminal: its master, and its slave for a child's
// stdio.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { ptm.Close() })
	fd := int(ptm.Fd())
	require.NoError(t, unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0), "unlockpt")
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	require.NoError(t, err, "ptsname")
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}

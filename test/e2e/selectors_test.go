package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/test/harness"
)

const selectorModePrefix = "spiffe://example.org/selector-mode/"

// selectorModeIDs are the SPIFFE IDs under selectorModePrefix that `prog
// whoami` reports on socket, sorted.
func selectorModeIDs(ctx context.Context, prog, socket string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := withGroup(exec.CommandContext(ctx, prog, "whoami", "--socket", socket)).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("whoami: %w: %s", err, out)
	}
	var ids []string
	for _, l := range strings.Split(string(out), "\n") {
		rest, ok := strings.CutPrefix(l, "SPIFFE IDs:")
		if !ok {
			continue
		}
		for _, id := range strings.Split(rest, ",") {
			if id = strings.TrimSpace(id); strings.HasPrefix(id, selectorModePrefix) {
				ids = append(ids, strings.TrimPrefix(id, selectorModePrefix))
			}
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// waitSelectorModeIDs waits until whoami on socket reports want.
func waitSelectorModeIDs(t *testing.T, prog, socket string, want []string, what string) {
	t.Helper()
	var last []string
	err := harness.WaitFor(context.Background(), what, time.Minute, func() error {
		got, err := selectorModeIDs(context.Background(), prog, socket)
		if err != nil {
			return err
		}
		last = got
		if !slices.Equal(got, want) {
			return fmt.Errorf("SPIFFE IDs %v, want %v", got, want)
		}
		return nil
	})
	require.NoError(t, err, "%s: last %v", what, last)
}

var entryIDLine = regexp.MustCompile(`(?m)^Entry ID\s*:\s*(\S+)$`)

// createSelectorEntry registers selectorModePrefix+name for selectors and
// returns the entry's ID.
func createSelectorEntry(t *testing.T, name string, selectors ...string) string {
	t.Helper()
	args := []string{"entry", "create", "-parentID", stack.SPIRE.AgentID.String(), "-spiffeID", selectorModePrefix + name}
	for _, s := range selectors {
		args = append(args, "-selector", s)
	}
	out, err := stack.SPIRE.ServerCmd(context.Background(), args...)
	require.NoError(t, err, "%s", out)
	m := entryIDLine.FindStringSubmatch(out)
	require.NotNil(t, m, "no entry ID in %q", out)
	return m[1]
}

// selectorAttest runs prog attest of step selector-mode in a fresh
// workspace on socket.
func selectorAttest(t *testing.T, prog, socket string) (string, error) {
	t.Helper()
	ws := workspace(t, nil)
	cmd := exec.Command(prog, "attest", "--socket", socket, "--step", "selector-mode",
		"--product", "out.txt", "--out", filepath.Join(ws, "out.hallmark.json"), "--", "sh", "-c", "echo built > out.txt")
	cmd.Dir = ws
	out, err := withGroup(cmd).CombinedOutput()
	return string(out), err
}

// selectorModeGroup is the supplementary group the test's callers run
// with (nogroup).
const selectorModeGroup = 65534

// withGroup runs cmd as this process's uid and gid with the supplementary
// group selectorModeGroup only (setting groups needs root; CI runs as
// root).
func withGroup(cmd *exec.Cmd) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), Groups: []uint32{selectorModeGroup},
	}}
	return cmd
}

// Must show (issue 15): with attest = "unix_selectors" (and the SPIRE
// agent's unix attestor settings, discover_workload_path = true),
// hallmark-agent derives the selectors SPIRE's unix attestor derives: for
// entries on each unix selector (uid, user, gid, group, supplementary_gid,
// path, sha256), and for entries that must not match (another uid, another
// sha256, a selector of another attestor), a program gets exactly the SPIFFE
// IDs that attest = "pid" (SPIRE attesting the PID itself) gives it; a copy
// of the program at another path, with no entry, gets none and is refused
// an attestation the first is allowed; and the agent follows SPIRE's
// updates on its standing subscription: a deleted entry's SPIFFE ID is gone
// (and with it the attestation), a new entry's appears.
func TestSPIRESelectorModeMatchesPIDMode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ag, err := stack.SPIRE.StartAgent(ctx, stack.Bins.Agent, stack.Dir, "hallmark-agent-selectors", harness.AgentOptions{
		ServerAddr: stack.Server.ServerAddr(), ServerID: harness.ServerID.String(),
		Policy: testPolicy(stack.Dir) + fmt.Sprintf(`
  rule "selector-mode" {
    spiffe_ids      = [%q]
    steps           = ["selector-mode"]
    workspace_roots = [%q]
  }`, selectorModePrefix+"uid", filepath.Join(stack.Dir, "workspaces")),
		SocketGroup: "nogroup", SPIREExtra: "attest = \"unix_selectors\"\n  discover_workload_path = true",
	})
	require.NoError(t, err)
	t.Cleanup(func() { ag.Stop() })

	// The program: a copy of the CLI of its own, so that entries on its
	// path name it alone; and a copy elsewhere that no entry names.
	dir := filepath.Join(stack.Dir, "selector-mode")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	prog, stranger := filepath.Join(dir, "hallmark"), filepath.Join(dir, "stranger")
	copyFile(t, stack.Bins.CLI, prog)
	copyFile(t, stack.Bins.CLI, stranger)
	b, err := os.ReadFile(prog)
	require.NoError(t, err)
	sum := sha256.Sum256(b)

	uid, gid := os.Getuid(), os.Getgid()
	u, err := user.LookupId(strconv.Itoa(uid))
	require.NoError(t, err)
	g, err := user.LookupGroupId(strconv.Itoa(gid))
	require.NoError(t, err)
	require.Zero(t, os.Getuid(), "this test runs callers with a supplementary group of its choice, which needs root (CI runs as root)")
	sg, err := user.LookupGroupId(strconv.Itoa(selectorModeGroup))
	require.NoError(t, err)
	path := "unix:path:" + prog
	entries := []struct {
		name      string
		selectors []string
		match     bool
	}{
		{"uid", []string{"unix:uid:" + strconv.Itoa(uid), path}, true},
		{"user", []string{"unix:user:" + u.Username, path}, true},
		{"gid", []string{"unix:gid:" + strconv.Itoa(gid), path}, true},
		{"group", []string{"unix:group:" + g.Name, path}, true},
		{"supplementary-gid", []string{"unix:supplementary_gid:" + strconv.Itoa(selectorModeGroup), path}, true},
		{"supplementary-group", []string{"unix:supplementary_group:" + sg.Name, path}, true},
		{"another-supplementary-gid", []string{"unix:supplementary_gid:" + strconv.Itoa(selectorModeGroup-1), path}, false},
		{"sha256", []string{"unix:sha256:" + hex.EncodeToString(sum[:]), path}, true},
		{"another-uid", []string{"unix:uid:" + strconv.Itoa(uid+4242), path}, false},
		{"another-sha256", []string{"unix:sha256:" + strings.Repeat("0", 64), path}, false},
		{"another-attestor", []string{"docker:label:ci:yes", path}, false},
	}
	var want []string
	ids := map[string]string{}
	for _, e := range entries {
		ids[e.name] = createSelectorEntry(t, e.name, e.selectors...)
		if e.match {
			want = append(want, e.name)
		}
	}
	slices.Sort(want)

	// SPIRE attesting the PID itself is the reference.
	waitSelectorModeIDs(t, prog, stack.Agent.Socket, want, "pid mode to give the program its entries")
	got, err := selectorModeIDs(ctx, prog, ag.Socket)
	require.NoError(t, err)
	require.Equal(t, want, got, "selector mode gives what pid mode gives")
	for _, socket := range []string{stack.Agent.Socket, ag.Socket} {
		got, err := selectorModeIDs(ctx, stranger, socket)
		require.NoError(t, err)
		require.Empty(t, got, "a program no entry names gets nothing (%s)", socket)
	}

	out, err := selectorAttest(t, prog, ag.Socket)
	require.NoError(t, err, "the program is allowed: %s", out)
	out, err = selectorAttest(t, stranger, ag.Socket)
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "the stranger is refused: %v: %s", err, out)
	require.Contains(t, out, "refused")

	// An update from SPIRE: the entry the policy names goes, another comes.
	_, err = stack.SPIRE.ServerCmd(ctx, "entry", "delete", "-entryID", ids["uid"])
	require.NoError(t, err)
	createSelectorEntry(t, "later", "unix:uid:"+strconv.Itoa(uid), path)
	want = append(slices.DeleteFunc(want, func(s string) bool { return s == "uid" }), "later")
	slices.Sort(want)
	waitSelectorModeIDs(t, prog, ag.Socket, want, "selector mode to follow the entries' change")
	got, err = selectorModeIDs(ctx, prog, stack.Agent.Socket)
	require.NoError(t, err)
	require.Equal(t, want, got, "pid mode agrees")
	out, err = selectorAttest(t, prog, ag.Socket)
	require.True(t, errors.As(err, &ee), "refused once its entry is gone: %v: %s", err, out)
	require.Contains(t, out, "refused")
}

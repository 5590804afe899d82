package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

func self() workloadattestor.Caller {
	return workloadattestor.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
}

// selfSelectors is what Attest should say about the test process, without
// unix:sha256.
func selfSelectors(t *testing.T) []string {
	t.Helper()
	uid, gid := strconv.Itoa(os.Getuid()), strconv.Itoa(os.Getgid())
	want := []string{"unix:uid:" + uid, "unix:gid:" + gid}
	if u, err := user.LookupId(uid); err == nil {
		want = append(want, "unix:user:"+u.Username)
	}
	if g, err := user.LookupGroupId(gid); err == nil {
		want = append(want, "unix:group:"+g.Name)
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	return append(want, "unix:path:"+exe)
}

func fileSHA256(t *testing.T, path string) (string, int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), int64(len(b))
}

func TestAttestSelf(t *testing.T) {
	res, err := New(Config{}, nil).Attest(context.Background(), self())
	require.NoError(t, err)
	require.Empty(t, res.SPIFFEIDs)
	require.Equal(t, selfSelectors(t), res.Selectors)
}

func TestAttestSelfHash(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	sum, size := fileSHA256(t, exe)
	tests := []struct {
		name     string
		maxBytes int64
		wantHash bool
	}{
		{name: "default limit", maxBytes: 0, wantHash: true},
		{name: "limit equal to the size", maxBytes: size, wantHash: true},
		{name: "limit one byte short", maxBytes: size - 1, wantHash: false},
		{name: "small limit", maxBytes: 1024, wantHash: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := New(Config{HashExecutable: true, MaxHashBytes: tt.maxBytes}, nil).Attest(context.Background(), self())
			require.NoError(t, err)
			want := selfSelectors(t)
			if tt.wantHash {
				want = append(want, "unix:sha256:"+sum)
			}
			require.Equal(t, want, res.Selectors)
		})
	}
}

func TestAttestNoHashByDefault(t *testing.T) {
	res, err := New(Config{MaxHashBytes: 1 << 40}, nil).Attest(context.Background(), self())
	require.NoError(t, err)
	for _, s := range res.Selectors {
		require.False(t, strings.HasPrefix(s, "unix:sha256:"), s)
	}
}

func TestAttestCallerIDs(t *testing.T) {
	// uid and gid come from the caller as the kernel reported it, not from
	// the process's /proc entry; ids that name no user or group have no
	// unix:user or unix:group selector.
	const unnamed = 3999999999
	c := self()
	c.UID, c.GID = unnamed, unnamed
	if _, err := user.LookupId(strconv.Itoa(unnamed)); err == nil {
		t.Skip("uid 3999999999 has a name here")
	}
	if _, err := user.LookupGroupId(strconv.Itoa(unnamed)); err == nil {
		t.Skip("gid 3999999999 has a name here")
	}
	res, err := New(Config{}, nil).Attest(context.Background(), c)
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	require.Equal(t, []string{"unix:uid:3999999999", "unix:gid:3999999999", "unix:path:" + exe}, res.Selectors)
}

// fakeProc makes proc/PID/exe a symlink to target.
func fakeProc(t *testing.T, pid int32, target string) string {
	t.Helper()
	proc := t.TempDir()
	dir := filepath.Join(proc, strconv.Itoa(int(pid)))
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Symlink(target, filepath.Join(dir, "exe")))
	return proc
}

func TestAttestFakeProc(t *testing.T) {
	const pid = 4242
	content := []byte("#!/bin/sh\necho hello\n")
	exe := filepath.Join(t.TempDir(), "tool")
	require.NoError(t, os.WriteFile(exe, content, 0o755))
	sum := sha256.Sum256(content)
	size := int64(len(content))
	c := workloadattestor.Caller{PID: pid, UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}

	tests := []struct {
		name     string
		cfg      Config
		target   string
		want     []string // selectors after uid, gid, user and group
		wantErr  string
		noTarget bool
	}{
		{name: "path only", cfg: Config{}, target: exe, want: []string{"unix:path:" + exe}},
		{name: "hashed", cfg: Config{HashExecutable: true}, target: exe, want: []string{"unix:path:" + exe, "unix:sha256:" + hex.EncodeToString(sum[:])}},
		{name: "hashed at the limit", cfg: Config{HashExecutable: true, MaxHashBytes: size}, target: exe, want: []string{"unix:path:" + exe, "unix:sha256:" + hex.EncodeToString(sum[:])}},
		{name: "over the limit", cfg: Config{HashExecutable: true, MaxHashBytes: size - 1}, target: exe, want: []string{"unix:path:" + exe}},
		{name: "executable gone, not hashing", cfg: Config{}, target: "/nonexistent/tool", wantErr: "unix: executable of pid 4242"},
		{name: "executable gone, hashing", cfg: Config{HashExecutable: true}, target: "/nonexistent/tool", wantErr: "unix: executable of pid 4242"},
		{name: "no such pid", cfg: Config{}, noTarget: true, wantErr: "unix: executable of pid 4242"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(tt.cfg, nil)
			if tt.noTarget {
				a.proc = t.TempDir()
			} else {
				a.proc = fakeProc(t, pid, tt.target)
			}
			res, err := a.Attest(context.Background(), c)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Empty(t, res.Selectors)
				return
			}
			require.NoError(t, err)
			self := selfSelectors(t)
			want := append(self[:len(self)-1:len(self)-1], tt.want...)
			require.Equal(t, want, res.Selectors)
		})
	}
}

func TestAttestDeadPID(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exit 0")
	require.NoError(t, cmd.Run())
	reaped := int32(cmd.Process.Pid)

	for _, pid := range []int32{reaped, 1 << 30, -1} {
		t.Run(strconv.Itoa(int(pid)), func(t *testing.T) {
			c := self()
			c.PID = pid
			res, err := New(Config{HashExecutable: true}, nil).Attest(context.Background(), c)
			require.ErrorContains(t, err, "unix: executable of pid "+strconv.Itoa(int(pid))+":")
			require.ErrorIs(t, err, os.ErrNotExist)
			require.Empty(t, res.Selectors)
		})
	}
}

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "agent.hcl")
	require.False(t, diags.HasErrors(), diags.Error())
	return f.Body
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		want    Config
		wantErr string
	}{
		{name: "empty", src: "", want: Config{MaxHashBytes: DefaultMaxHashBytes}},
		{name: "hashing", src: "hash_executable = true\n", want: Config{HashExecutable: true, MaxHashBytes: DefaultMaxHashBytes}},
		{name: "every key", src: "hash_executable = true\nmax_hash_bytes = 1048576\n", want: Config{HashExecutable: true, MaxHashBytes: 1 << 20}},
		{name: "zero means default", src: "max_hash_bytes = 0\n", want: Config{MaxHashBytes: DefaultMaxHashBytes}},
		{name: "unknown key", src: "hash_executable = true\nhash_exe = true\n", wantErr: `unix: agent.hcl:2,1-9: Unsupported argument; An argument named "hash_exe" is not expected here.`},
		{name: "unknown block", src: "selectors {}\n", wantErr: `unix: agent.hcl:1`},
		{name: "negative max_hash_bytes", src: "max_hash_bytes = -1\n", wantErr: "unix: max_hash_bytes must be positive"},
		{name: "wrong type", src: "hash_executable = \"yes\"\n", wantErr: "unix: agent.hcl:1"},
		{name: "fractional max_hash_bytes", src: "max_hash_bytes = 1.5\n", wantErr: "unix: agent.hcl:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(parseBody(t, tt.src))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Zero(t, c)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, c)
		})
	}
}

func TestParseConfigEmptyBody(t *testing.T) {
	c, err := ParseConfig(hcl.EmptyBody())
	require.NoError(t, err)
	require.Equal(t, Config{MaxHashBytes: DefaultMaxHashBytes}, c)
}

// Must show, as an attacker would do it: a step that runs one program
// under another's name, by mounting it over /usr/bin/true in a mount
// namespace of its own, gets no unix:path (before, it got
// unix:path:/usr/bin/true, and a rule on that path granted it what it
// grants true), whether it made the namespace itself, as any user can
// inside a user namespace of its own (unshare -Urm, as uid 65534), or a
// privileged helper made it without one, as a setuid sandbox (bwrap,
// firejail) does: played here by root, which then runs the program as
// uid 65534. unix:sha256 is that of the program it runs (sleep). The
// same program run by the same user without such a namespace gets its
// path.
func TestPathNamesTheFileOnThisHost(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("runs the attacker as uid 65534: needs root")
	}
	sleep, err := exec.LookPath("sleep")
	require.NoError(t, err)
	sleep, err = filepath.EvalSymlinks(sleep)
	require.NoError(t, err)
	sleepSum := sha256File(t, sleep)
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	// start runs cmd and waits until it runs the program it names path.
	start := func(t *testing.T, cmd *exec.Cmd, path string) int {
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		exeLink := fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)
		for deadline := time.Now().Add(10 * time.Second); ; {
			got, err := os.Readlink(exeLink)
			if err == nil && got == path {
				return cmd.Process.Pid
			}
			if time.Now().After(deadline) {
				t.Skipf("could not set up the namespace here (the exe is %q, %v)", got, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	attest := func(t *testing.T, pid int) []string {
		res, err := New(Config{HashExecutable: true}, nil).Attest(context.Background(), workloadattestor.NewCaller(int32(pid), 65534, 65534, nil))
		require.NoError(t, err)
		return res.Selectors
	}
	forge := "mount --bind " + sleep + " /usr/bin/true && exec "
	for _, tc := range []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"user and mount namespace of its own", func() *exec.Cmd {
			cmd := exec.Command("unshare", "-Urm", "sh", "-c", forge+"/usr/bin/true 30")
			cmd.SysProcAttr = nobody
			return cmd
		}},
		{"mount namespace made for it by a privileged helper", func() *exec.Cmd {
			return exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
				forge+"setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/true 30")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sels := attest(t, start(t, tc.cmd(), "/usr/bin/true"))
			t.Logf("the attacker's selectors: %v", sels)
			for _, s := range sels {
				require.False(t, strings.HasPrefix(s, "unix:path:"), "a path the caller chose: %s", s)
			}
			require.Contains(t, sels, "unix:sha256:"+sleepSum, "the program it runs")
		})
	}
	t.Run("no namespace of its own", func(t *testing.T) {
		plain := exec.Command(sleep, "30")
		plain.SysProcAttr = nobody
		sels := attest(t, start(t, plain, sleep))
		require.Contains(t, sels, "unix:path:"+sleep)
		require.Contains(t, sels, "unix:sha256:"+sleepSum)
	})
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

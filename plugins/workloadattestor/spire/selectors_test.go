package spire

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/exedigest"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

func newSelectorAttestor(t *testing.T, addr, extra string) *SelectorAttestor {
	t.Helper()
	c, err := ParseConfig(parseBody(t, "admin_socket = \""+addr+"\"\nattest = \"unix_selectors\"\n"+extra))
	require.NoError(t, err)
	a, err := NewSelectors(c, exedigest.New(0))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	return a
}

// selectorsOf are the selectors of every request fake received, each as
// "type:value" strings.
func (f *fakeDelegatedIdentity) selectorsOf() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]string
	for _, r := range f.requests {
		var sels []string
		for _, s := range r.GetSelectors() {
			sels = append(sels, s.GetType()+":"+s.GetValue())
		}
		out = append(out, sels)
	}
	return out
}

// fakeExe makes proc/PID/exe, for each pid, a symlink to target.
func fakeExe(t *testing.T, target string, pids ...int32) string {
	t.Helper()
	proc := t.TempDir()
	for _, pid := range pids {
		fakeExeOf(t, proc, pid, target)
	}
	return proc
}

// fakeExeOf makes proc/PID/exe a symlink to target.
func fakeExeOf(t *testing.T, proc string, pid int32, target string) {
	t.Helper()
	dir := filepath.Join(proc, strconv.Itoa(int(pid)))
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Symlink(target, filepath.Join(dir, "exe")))
}

func exeFile(t *testing.T, content string) (path, sum string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "step")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o755))
	h := sha256.Sum256([]byte(content))
	return path, hex.EncodeToString(h[:])
}

// The request names the caller by SPIRE's unix selectors, derived from the
// kernel's view of the caller and the file it runs, never by PID; the
// settings mean what SPIRE's unix attestor's of the same names mean.
func TestSelectorAttestorSelectors(t *testing.T) {
	exe, sum := exeFile(t, "a build step") // 12 bytes
	named := func(kind string, name string, err error) []string {
		if err != nil {
			return nil
		}
		return []string{kind + ":" + name}
	}
	var rootUser, rootGroup []string
	if u, err := user.LookupId("0"); err == nil {
		rootUser = named("unix:user", u.Username, nil)
	}
	if g, err := user.LookupGroupId("0"); err == nil {
		rootGroup = append(named("unix:group", g.Name, nil), named("unix:supplementary_group", g.Name, nil)...)
	}
	root := slices.Concat([]string{"unix:uid:0", "unix:gid:0", "unix:supplementary_gid:0", "unix:supplementary_gid:3999999998"}, rootUser, rootGroup)
	rootCaller := workloadattestor.Caller{PID: 4242, UID: 0, GID: 0, Groups: []uint32{0, 3999999998}}
	unnamed := []string{"unix:uid:3999999997", "unix:gid:3999999997"}
	unnamedCaller := workloadattestor.Caller{PID: 4242, UID: 3999999997, GID: 3999999997}
	tests := []struct {
		name    string
		extra   string
		caller  workloadattestor.Caller
		want    []string
		wantErr string // refused, nothing asked
	}{
		{name: "ids and names only, as SPIRE without discover_workload_path", caller: rootCaller, want: root},
		{
			name: "path and sha256", extra: "discover_workload_path = true\n", caller: rootCaller,
			want: slices.Concat(root, []string{"unix:path:" + exe, "unix:sha256:" + sum}),
		},
		{
			name: "ids without names", extra: "discover_workload_path = true\n", caller: unnamedCaller,
			want: slices.Concat(unnamed, []string{"unix:path:" + exe, "unix:sha256:" + sum}),
		},
		{
			name: "within workload_size_limit", extra: "discover_workload_path = true\nworkload_size_limit = 12\n", caller: unnamedCaller,
			want: slices.Concat(unnamed, []string{"unix:path:" + exe, "unix:sha256:" + sum}),
		},
		{
			name: "beyond workload_size_limit: refused, as SPIRE refuses", extra: "discover_workload_path = true\nworkload_size_limit = 11\n", caller: unnamedCaller,
			wantErr: "spire: executable of pid 4242, " + exe + ": larger than workload_size_limit (11 bytes)",
		},
		{
			name: "negative workload_size_limit: no sha256", extra: "discover_workload_path = true\nworkload_size_limit = -1\n", caller: unnamedCaller,
			want: slices.Concat(unnamed, []string{"unix:path:" + exe}),
		},
		{
			name: "executable gone: refused", extra: "discover_workload_path = true\n",
			caller:  workloadattestor.Caller{PID: 99, UID: 0, GID: 0},
			wantErr: "spire: executable of pid 99:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeDelegatedIdentity{subscribe: answer(svid("td", "/ci/step"))}
			a := newSelectorAttestor(t, serve(t, fake), tt.extra)
			a.proc = fakeExe(t, exe, 4242)
			res, err := a.Attest(context.Background(), tt.caller)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Empty(t, res.SPIFFEIDs)
				require.Empty(t, fake.selectorsOf(), "nothing asked")
				return
			}
			require.NoError(t, err)
			require.Equal(t, []string{"spiffe://td/ci/step"}, res.SPIFFEIDs)
			require.Empty(t, res.Selectors)
			got := fake.selectorsOf()
			require.Len(t, got, 1)
			want := slices.Clone(tt.want)
			slices.Sort(want)
			slices.Sort(got[0])
			require.Equal(t, want, got[0])
			require.Equal(t, []int32{0}, fake.pids(), "no PID: SPIRE attests nothing itself")
		})
	}
}

// Callers with the same selectors share one subscription; others get their
// own; a caller whose executable is gone is refused.
func TestSelectorAttestorSharesSubscriptions(t *testing.T) {
	fake := &fakeDelegatedIdentity{subscribe: answer(svid("td", "/ci/step"))}
	a := newSelectorAttestor(t, serve(t, fake), "discover_workload_path = true\n")
	exe, _ := exeFile(t, "the step's program")
	other, _ := exeFile(t, "another program")
	a.proc = fakeExe(t, exe, 10, 11, 12)
	fakeExeOf(t, a.proc, 14, other)

	for _, c := range []workloadattestor.Caller{
		{PID: 10, UID: 1000, GID: 1000}, {PID: 11, UID: 1000, GID: 1000}, {PID: 12, UID: 1000, GID: 1000},
	} {
		res, err := a.Attest(context.Background(), c)
		require.NoError(t, err)
		require.Equal(t, []string{"spiffe://td/ci/step"}, res.SPIFFEIDs)
	}
	require.Len(t, fake.selectorsOf(), 1, "three processes with the same selectors: one subscription")

	_, err := a.Attest(context.Background(), workloadattestor.Caller{PID: 12, UID: 1001, GID: 1000})
	require.NoError(t, err)
	_, err = a.Attest(context.Background(), workloadattestor.Caller{PID: 14, UID: 1000, GID: 1000})
	require.NoError(t, err)
	require.Len(t, fake.selectorsOf(), 3, "another uid, another executable: subscriptions of their own")

	_, err = a.Attest(context.Background(), workloadattestor.Caller{PID: 99, UID: 1000, GID: 1000})
	require.ErrorContains(t, err, "spire: executable of pid 99")
}

// Every update SPIRE sends replaces the answer at once; a subscription
// SPIRE ends is opened anew by the next call.
func TestSelectorAttestorFollowsSPIRE(t *testing.T) {
	updates := make(chan *delegatedidentityv1.SubscribeToX509SVIDsResponse)
	fake := &fakeDelegatedIdentity{}
	fake.subscribe = func(_ *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		if err := stream.Send(&delegatedidentityv1.SubscribeToX509SVIDsResponse{X509Svids: []*delegatedidentityv1.X509SVIDWithKey{svid("td", "/v1")}}); err != nil {
			return err
		}
		if len(fake.selectorsOf()) > 1 { // the next subscription stays
			<-stream.Context().Done()
			return nil
		}
		for {
			select {
			case u, ok := <-updates:
				if !ok {
					return nil // SPIRE ends the stream
				}
				if err := stream.Send(u); err != nil {
					return err
				}
			case <-stream.Context().Done():
				return nil
			}
		}
	}
	a := newSelectorAttestor(t, serve(t, fake), "")
	exe, _ := exeFile(t, "step")
	a.proc = fakeExe(t, exe, 5)
	caller := workloadattestor.Caller{PID: 5, UID: 1000, GID: 1000}
	eventually := func(want []string, msg string) {
		t.Helper()
		require.Eventually(t, func() bool {
			res, err := a.Attest(context.Background(), caller)
			return err == nil && slices.Equal(res.SPIFFEIDs, want)
		}, 5*time.Second, 5*time.Millisecond, msg)
	}

	eventually([]string{"spiffe://td/v1"}, "the first answer")
	updates <- &delegatedidentityv1.SubscribeToX509SVIDsResponse{}
	eventually(nil, "an entry removed: no SPIFFE ID any more")
	updates <- &delegatedidentityv1.SubscribeToX509SVIDsResponse{X509Svids: []*delegatedidentityv1.X509SVIDWithKey{svid("td", "/v2")}}
	eventually([]string{"spiffe://td/v2"}, "an entry added")
	require.Len(t, fake.selectorsOf(), 1, "updates arrive on the one subscription")

	close(updates) // SPIRE ends the subscription
	require.Eventually(t, func() bool {
		res, err := a.Attest(context.Background(), caller)
		return err == nil && slices.Equal(res.SPIFFEIDs, []string{"spiffe://td/v1"}) && len(fake.selectorsOf()) == 2
	}, 5*time.Second, 5*time.Millisecond, "an ended subscription is asked anew, and its first answer counts")
}

// A refusal or a timeout is an error of this call only: the next asks
// again.
func TestSelectorAttestorErrorsAreNotKept(t *testing.T) {
	refuse := true
	fake := &fakeDelegatedIdentity{}
	fake.subscribe = func(req *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
		fake.mu.Lock()
		r := refuse
		fake.mu.Unlock()
		if r {
			return status.Error(codes.PermissionDenied, "caller not configured as an authorized delegate")
		}
		return answer(svid("td", "/ok"))(req, stream)
	}
	a := newSelectorAttestor(t, serve(t, fake), "")
	exe, _ := exeFile(t, "step")
	a.proc = fakeExe(t, exe, 5)
	caller := workloadattestor.Caller{PID: 5, UID: 1000, GID: 1000}
	_, err := a.Attest(context.Background(), caller)
	require.ErrorContains(t, err, "authorized_delegates")
	fake.mu.Lock()
	refuse = false
	fake.mu.Unlock()
	res, err := a.Attest(context.Background(), caller)
	require.NoError(t, err)
	require.Equal(t, []string{"spiffe://td/ok"}, res.SPIFFEIDs)
	require.Len(t, fake.selectorsOf(), 2)
}

func TestSelectorAttestorRoom(t *testing.T) {
	fake := &fakeDelegatedIdentity{subscribe: answer(svid("td", "/x"))}
	a := newSelectorAttestor(t, serve(t, fake), "")
	exe, _ := exeFile(t, "step")
	a.proc = fakeExe(t, exe, 5)
	for uid := range uint32(maxSubscriptions + 10) {
		_, err := a.Attest(context.Background(), workloadattestor.Caller{PID: 5, UID: 5000 + uid, GID: 5000})
		require.NoError(t, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	require.LessOrEqual(t, len(a.subs), maxSubscriptions)
}

// Must show: as the unix attestor (TestPathNamesTheFileOnThisHost), a
// caller running one program under another's name (sleep mounted over
// /usr/bin/true) in a mount namespace of its own is described to SPIRE
// without a path, and by the sha256 of what it runs: whether it made the
// namespace itself inside a user namespace of its own (unshare -Urm, as
// uid 65534), or a privileged helper made it without one, as a setuid
// sandbox does (root's unshare -m, then setpriv to uid 65534).
func TestSelectorAttestorPathNamesTheFileOnThisHost(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("runs the attacker as uid 65534: needs root")
	}
	sleep, err := exec.LookPath("sleep")
	require.NoError(t, err)
	sleep, err = filepath.EvalSymlinks(sleep)
	require.NoError(t, err)
	data, err := os.ReadFile(sleep)
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	forge := "mount --bind " + sleep + " /usr/bin/true && exec "
	for _, tc := range []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"user and mount namespace of its own", func() *exec.Cmd {
			cmd := exec.Command("unshare", "-Urm", "sh", "-c", forge+"/usr/bin/true 30")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			return cmd
		}},
		{"mount namespace made for it by a privileged helper", func() *exec.Cmd {
			return exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
				forge+"setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/true 30")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := tc.cmd()
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			for deadline := time.Now().Add(10 * time.Second); ; {
				got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
				if err == nil && got == "/usr/bin/true" {
					break
				}
				if time.Now().After(deadline) {
					t.Skipf("could not set up the namespace here (the exe is %q, %v)", got, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			fake := &fakeDelegatedIdentity{subscribe: answer(svid("td", "/ci/step"))}
			a := newSelectorAttestor(t, serve(t, fake), "discover_workload_path = true\n")
			_, err := a.Attest(context.Background(), workloadattestor.Caller{PID: int32(cmd.Process.Pid), UID: 65534, GID: 65534})
			require.NoError(t, err)
			got := fake.selectorsOf()
			require.Len(t, got, 1)
			t.Logf("selectors sent to SPIRE: %v", got[0])
			require.Contains(t, got[0], "unix:sha256:"+hex.EncodeToString(sum[:]))
			for _, s := range got[0] {
				require.NotContains(t, s, "unix:path:", "a path the caller chose")
			}
		})
	}
}

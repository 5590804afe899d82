package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// osUser is an ordinary user the suite creates (useradd) for callers that
// are not root, and removes at the end.
type osUser struct {
	name     string
	uid, gid int
}

// The suite's users, all in the agent socket's group (nogroup) so that
// they may connect: stepUser is granted "build" by uid (testPolicy),
// tenantUser is another tenant of the node, abuserUser has no grant.
var stepUser, tenantUser, abuserUser osUser

// createUsers adds the suite's users, with names unique to this process
// (other suites may run beside it), and returns what removes them.
func createUsers() (func(), error) {
	var made []string
	remove := func() {
		for _, name := range made {
			exec.Command("userdel", "--force", name).Run() //nolint:errcheck // best effort
		}
	}
	for _, u := range []*osUser{&stepUser, &tenantUser, &abuserUser} {
		role := map[*osUser]string{&stepUser: "step", &tenantUser: "tenant", &abuserUser: "abuser"}[u]
		name := fmt.Sprintf("hm%s%d", role, os.Getpid())
		out, err := exec.Command("useradd", "--no-create-home", "--user-group", "--groups", "nogroup",
			"--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			remove()
			return nil, fmt.Errorf("useradd %s: %w: %s", name, err, strings.TrimSpace(string(out)))
		}
		made = append(made, name)
		lu, err := user.Lookup(name)
		if err != nil {
			remove()
			return nil, err
		}
		u.name = name
		u.uid, _ = strconv.Atoi(lu.Uid)
		u.gid, _ = strconv.Atoi(lu.Gid)
	}
	return remove, nil
}

// as makes cmd run as u, with the socket's group.
func (u osUser) as(t *testing.T, cmd *exec.Cmd) *exec.Cmd {
	t.Helper()
	if u.uid == 0 {
		t.Fatal(errors.New("this test runs callers as users it creates, which needs root (CI runs as root)"))
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{65534}}
	return cmd
}

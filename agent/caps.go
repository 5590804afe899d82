package agent

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// localAPICaps are the capabilities the local API needs: measuring a
// step as its caller sets a thread's groups, fsgid and fsuid (CAP_SETGID,
// CAP_SETUID; the groups even for a caller of the agent's own uid),
// identifying a caller of another uid opens its /proc/PID/exe and root
// (CAP_SYS_PTRACE), and following execs subscribes to the kernel's
// process events connector (CAP_NET_ADMIN, in the host's namespaces, which
// peercred.WatchExecs finds out by subscribing).
var localAPICaps = []struct {
	bit  int
	name string
}{
	{unix.CAP_SETGID, "CAP_SETGID"},
	{unix.CAP_SETUID, "CAP_SETUID"},
	{unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"},
}

// checkLocalAPICaps refuses an agent whose effective capabilities (which
// its measuring threads start with) lack one of localAPICaps, naming
// every one it lacks: without them, every call, or every call of another
// user, would fail later instead.
func checkLocalAPICaps() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read its capabilities: %w", err)
	}
	effective := uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	var missing []string
	for _, c := range localAPICaps {
		if effective&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("hallmark-agent's effective capabilities lack %s: it measures each step as its caller (CAP_SETGID, CAP_SETUID), "+
			"reads callers' /proc/PID/exe and root (CAP_SYS_PTRACE) and follows execs (CAP_NET_ADMIN); grant all four "+
			"(root in a container may lack some; systemd: AmbientCapabilities=, Kubernetes: securityContext.capabilities.add)",
			strings.Join(missing, ", "))
	}
	return nil
}

package peercred

import (
	"os"
	"strconv"
	"strings"
)

// ExeForgeable reports whether unprivileged users on this host can create
// user namespaces, and with them make /proc/PID/exe name a program they
// never ran: a process shares its memory with a child in a new user
// namespace (clone CLONE_VM|CLONE_NEWUSER), where the child holds
// CAP_SYS_ADMIN, and the child sets the shared exe link with
// prctl(PR_SET_MM, PR_SET_MM_MAP) to any file the user may open and
// execute (an attacker review did it as uid 65534 on Linux 6.18). No
// exec happens, so no exec watch can see it. Selectors read from the
// executable (unix:path, unix:sha256, and SPIRE's unix path and sha256)
// then say nothing about which program called. why names the sysctls.
func ExeForgeable() (forgeable bool, why string) {
	return exeForgeable(func(name string) (string, bool) {
		b, err := os.ReadFile("/proc/sys/" + name)
		return strings.TrimSpace(string(b)), err == nil
	})
}

// exeForgeable is ExeForgeable reading sysctls (by /proc/sys path) with read.
func exeForgeable(read func(name string) (string, bool)) (bool, string) {
	if v, ok := read("user/max_user_namespaces"); ok {
		if n, err := strconv.Atoi(v); err == nil && n == 0 {
			return false, "user.max_user_namespaces = 0"
		}
	}
	if v, ok := read("kernel/unprivileged_userns_clone"); ok && v == "0" {
		return false, "kernel.unprivileged_userns_clone = 0"
	}
	if v, ok := read("kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" {
		return false, "kernel.apparmor_restrict_unprivileged_userns = 1"
	}
	return true, "unprivileged user namespaces are enabled (user.max_user_namespaces > 0, and neither kernel.unprivileged_userns_clone = 0 nor kernel.apparmor_restrict_unprivileged_userns = 1)"
}

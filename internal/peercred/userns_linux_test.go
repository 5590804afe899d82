package peercred

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Must show: each of the three settings that close unprivileged user
// namespaces is recognised, and a host with none of them (as this one and
// CI are) is reported open.
func TestExeForgeable(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sysctls   map[string]string
		forgeable bool
		why       string
	}{
		{"open (Debian, Linux 6.x defaults)", map[string]string{"user/max_user_namespaces": "96367"}, true, "unprivileged user namespaces are enabled"},
		{"no namespaces at all", map[string]string{"user/max_user_namespaces": "0"}, false, "user.max_user_namespaces = 0"},
		{"Debian's switch off", map[string]string{"user/max_user_namespaces": "96367", "kernel/unprivileged_userns_clone": "0"}, false, "kernel.unprivileged_userns_clone = 0"},
		{"Debian's switch on", map[string]string{"kernel/unprivileged_userns_clone": "1"}, true, "enabled"},
		{"Ubuntu's AppArmor restriction", map[string]string{"kernel/apparmor_restrict_unprivileged_userns": "1"}, false, "kernel.apparmor_restrict_unprivileged_userns = 1"},
		{"nothing readable", nil, true, "enabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forgeable, why := exeForgeable(func(name string) (string, bool) {
				v, ok := tc.sysctls[name]
				return v, ok
			})
			require.Equal(t, tc.forgeable, forgeable)
			require.Contains(t, why, tc.why)
		})
	}
}

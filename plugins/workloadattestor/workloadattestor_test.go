package workloadattestor

import (
	"fmt"
	"os/user"
	"testing"

	"github.com/stretchr/testify/require"
)

// countLookups replaces the user database for the test with one that
// knows user 1000 and groups 1000 and 27, and counts the questions.
func countLookups(t *testing.T) (users, groups map[string]int) {
	t.Helper()
	users, groups = map[string]int{}, map[string]int{}
	groupNames := map[string]string{"1000": "dev", "27": "sudo"}
	lu, lg := lookupUserID, lookupGroupID
	t.Cleanup(func() { lookupUserID, lookupGroupID = lu, lg })
	lookupUserID = func(id string) (*user.User, error) {
		users[id]++
		if id == "1000" {
			return &user.User{Uid: id, Username: "dev"}, nil
		}
		return nil, user.UnknownUserError(id)
	}
	lookupGroupID = func(id string) (*user.Group, error) {
		groups[id]++
		if name, ok := groupNames[id]; ok {
			return &user.Group{Gid: id, Name: name}, nil
		}
		return nil, fmt.Errorf("group %s: %w", id, user.UnknownGroupIdError(id))
	}
	return users, groups
}

// One call's caller (NewCaller) asks the user database once per user and
// group, however many attestors ask for its names, and remembers what is
// unknown too; a Caller made otherwise asks every time.
func TestCallerNamesAreLookedUpOncePerCall(t *testing.T) {
	for _, tc := range []struct {
		name          string
		caller        Caller
		users, groups map[string]int // questions per id once three attestors asked
	}{
		{
			"NewCaller", NewCaller(42, 1000, 1000, []uint32{1000, 27, 5}),
			map[string]int{"1000": 1}, map[string]int{"1000": 1, "27": 1, "5": 1},
		},
		{
			"Caller literal", Caller{PID: 42, UID: 1000, GID: 1000, Groups: []uint32{1000, 27, 5}},
			map[string]int{"1000": 3}, map[string]int{"1000": 6, "27": 3, "5": 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			users, groups := countLookups(t)
			for range 3 { // as three attestors would: IDs, then the supplementary groups
				require.Equal(t, []string{"uid:1000", "gid:1000", "user:dev", "group:dev"}, tc.caller.IDSelectors())
				for _, g := range tc.caller.Groups {
					name, ok := tc.caller.GroupName(g)
					switch g {
					case 1000:
						require.Equal(t, "dev", name)
						require.True(t, ok)
					case 27:
						require.Equal(t, "sudo", name)
						require.True(t, ok)
					default:
						require.False(t, ok, "group %d is unknown", g)
					}
				}
			}
			require.Equal(t, tc.users, users)
			require.Equal(t, tc.groups, groups)
		})
	}
}

// Two calls' callers do not share their lookups: a name changed in the
// user database between calls is seen by the next call.
func TestCallerNamesAreNotKeptAcrossCalls(t *testing.T) {
	users, _ := countLookups(t)
	first := NewCaller(1, 1000, 1000, nil)
	require.Contains(t, first.IDSelectors(), "user:dev")
	second := NewCaller(1, 1000, 1000, nil)
	lookupUserID = func(id string) (*user.User, error) {
		users[id]++
		return &user.User{Uid: id, Username: "renamed"}, nil
	}
	require.Contains(t, second.IDSelectors(), "user:renamed")
	require.Contains(t, first.IDSelectors(), "user:dev", "one call's answer stays that call's")
	require.Equal(t, 2, users["1000"])
}

// BenchmarkCallerNames is what the names of a caller that is not the
// agent's own user cost one call with two attestors asking (unix and
// spire's unix_selectors, as deploy/ configures them), against this host's
// user database.
func BenchmarkCallerNames(b *testing.B) {
	for _, tc := range []struct {
		name   string
		caller func() Caller
	}{
		{"NewCaller", func() Caller { return NewCaller(1, 65534, 65534, []uint32{65534}) }},
		{"Caller literal", func() Caller { return Caller{PID: 1, UID: 65534, GID: 65534, Groups: []uint32{65534}} }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				c := tc.caller()
				for range 2 {
					c.IDSelectors()
				}
				c.GroupName(c.Groups[0])
			}
		})
	}
}

// Package workloadattestor holds the types that workload attestor plugins
// share with hallmark-agent: the caller as the kernel names it, and what an
// attestor found out about it. The agent declares the interface it uses.
package workloadattestor

import (
	"os/user"
	"strconv"
)

// Caller is a local process, as identified by the kernel at accept time:
// its effective uid and gid and its supplementary groups when it
// connected.
type Caller struct {
	PID      int32
	UID, GID uint32
	Groups   []uint32
}

// Result is what one attestor learned: SPIFFE IDs the caller holds and
// selectors ("type:value") that describe it.
type Result struct {
	SPIFFEIDs []string
	Selectors []string
}

// IDSelectors are the caller's user and group as SPIRE's unix workload
// attestor names them, without the "unix:" type: uid and gid, and user
// and group when this host's user database resolves them.
func (c Caller) IDSelectors() []string {
	uid, gid := strconv.FormatUint(uint64(c.UID), 10), strconv.FormatUint(uint64(c.GID), 10)
	sels := []string{"uid:" + uid, "gid:" + gid}
	if u, err := user.LookupId(uid); err == nil {
		sels = append(sels, "user:"+u.Username)
	}
	if g, err := user.LookupGroupId(gid); err == nil {
		sels = append(sels, "group:"+g.Name)
	}
	return sels
}

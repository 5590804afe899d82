// Package workloadattestor holds the types that workload attestor plugins
// share with hallmark-agent: the caller as the kernel names it, and what an
// attestor found out about it. The agent declares the interface it uses.
package workloadattestor

import (
	"os"
	"os/user"
	"strconv"
	"sync"
)

// Caller is a local process, as identified by the kernel at accept time:
// its effective uid and gid and its supplementary groups when it
// connected.
type Caller struct {
	PID      int32
	UID, GID uint32
	Groups   []uint32

	// names, when set (NewCaller), are the user and group names looked
	// up for this caller, shared by its copies: each attestor asked
	// about one call gets the same answer without asking the user
	// database again.
	names *names
}

// NewCaller returns the caller, with the user and group names looked up
// at most once for all the attestors asked about it (one call's).
func NewCaller(pid int32, uid, gid uint32, groups []uint32) Caller {
	return Caller{PID: pid, UID: uid, GID: gid, Groups: groups, names: &names{}}
}

// lookupUserID and lookupGroupID ask this host's user database; tests
// count the questions.
var (
	lookupUserID  = user.LookupId
	lookupGroupID = user.LookupGroupId
)

// names are the lookups made for one caller.
type names struct {
	mu sync.Mutex
	m  map[nameKey]lookup
}

type nameKey struct {
	group bool
	id    uint32
}

type lookup struct {
	name string
	ok   bool
}

// get returns k's lookup, made with ask the first time; a nil n asks
// every time.
func (n *names) get(k nameKey, ask func() lookup) lookup {
	if n == nil {
		return ask()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if l, ok := n.m[k]; ok {
		return l
	}
	l := ask()
	if n.m == nil {
		n.m = map[nameKey]lookup{}
	}
	n.m[k] = l
	return l
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
	if name, ok := c.UserName(); ok {
		sels = append(sels, "user:"+name)
	}
	if name, ok := c.GroupName(c.GID); ok {
		sels = append(sels, "group:"+name)
	}
	return sels
}

// UserName is the name of the caller's user in this host's user
// database, if it has one.
func (c Caller) UserName() (string, bool) {
	l := c.names.get(nameKey{id: c.UID}, func() lookup {
		u, err := lookupUserID(strconv.FormatUint(uint64(c.UID), 10))
		if err != nil {
			return lookup{}
		}
		return lookup{name: u.Username, ok: true}
	})
	return l.name, l.ok
}

// GroupName is the name of group gid in this host's user database, if it
// has one.
func (c Caller) GroupName(gid uint32) (string, bool) {
	l := c.names.get(nameKey{group: true, id: gid}, func() lookup {
		g, err := lookupGroupID(strconv.FormatUint(uint64(gid), 10))
		if err != nil {
			return lookup{}
		}
		return lookup{name: g.Name, ok: true}
	})
	return l.name, l.ok
}

// HostPath reports whether path, the name /proc/PID/exe gives the
// caller's executable exe (its os.Stat), names that very file (the same
// device and inode) in the agent's own mount namespace: only then is it a
// path on this host. A caller in a mount namespace of its own can run any
// file under any name: any user in a user namespace of its own (unshare
// -Urm, a bind mount over /usr/bin/make, then exec it), a setuid sandbox
// (bwrap, firejail) without one, a container. The executable's content,
// read through /proc/PID/exe (the very file), is trustworthy either way.
func HostPath(path string, exe os.FileInfo) bool {
	fi, err := os.Stat(path)
	return err == nil && os.SameFile(fi, exe)
}

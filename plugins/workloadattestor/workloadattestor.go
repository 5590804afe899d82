// Package workloadattestor holds the types that workload attestor plugins
// share with hallmark-agent: the caller as the kernel names it, and what an
// attestor found out about it. The agent declares the interface it uses.
package workloadattestor

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

// Package peercred is the hallmark-agent's local unix-socket listener. It
// identifies every caller from the kernel, never from anything the caller
// sends: at accept it takes the peer's pid, uid and gid (SO_PEERCRED) and,
// before spending anything else on it, applies the listener's limits on
// connections per uid and in all; then its supplementary groups
// (SO_PEERGROUPS), a pidfd for that exact process (SO_PEERPIDFD on Linux
// 6.5+, else pidfd_open with a start-time check), the device and inode of
// its executable and its start time. Every read then checks the kernel's
// per-message credentials (SCM_CREDENTIALS), so bytes written by any other
// process that got hold of the socket (fd passing, inheritance across fork)
// are refused with ErrForeignSender.
//
// An ExecWatch follows every exec(2) on the host through the kernel's
// process events connector. On a listener with one, Conn.Verify refuses a
// peer that exec'd after it connected, whatever it exec'd, and the gRPC
// handshake refuses a client that sent more than its HTTP/2 greeting
// before it was watched: a request belongs to the program image that
// connected or is refused. Conn.OpenRoot opens the peer's root directory
// (its /proc/PID/root) for resolving paths in the peer's own mount
// namespace, and Conn.Capabilities reads what it may do there.
//
// Listen publishes the socket only once its mode and group are set, and
// refuses directories others could use to swap it. Credentials plugs the
// listener into a grpc.Server; FromContext gives handlers the caller's Conn.
//
// The package is Linux only. The agent must see its callers' processes: it
// opens /proc/PID/root and exe of every caller, so it runs as root or with
// CAP_SYS_PTRACE, in the host pid namespace (hostPID in Kubernetes); the
// exec watch needs CAP_NET_ADMIN in the host's network namespace. Callers
// it cannot identify are dropped at Accept.
package peercred

// Package peercred is the hallmark-agent's local unix-socket listener. It
// identifies every caller from the kernel, never from anything the caller
// sends: at accept it takes the peer's pid, uid and gid (SO_PEERCRED), a
// pidfd for that exact process (SO_PEERPIDFD on Linux 6.5+, else
// pidfd_open with a start-time check), the device and inode of its
// executable and its start time. Every read then checks the kernel's
// per-message credentials (SCM_CREDENTIALS), so bytes written by any other
// process that got hold of the socket (fd passing, inheritance across fork)
// are refused with ErrForeignSender, and Conn.Verify confirms before a
// decision that the caller is still the same live process running the same
// binary.
//
// Listen publishes the socket only once its mode and group are set, and
// refuses directories others could use to swap it. Credentials plugs the
// listener into a grpc.Server; FromContext gives handlers the caller's Conn.
//
// The package is Linux only. The agent must see its callers' processes: it
// needs /proc/PID/exe of every caller, so it runs as root or with
// CAP_SYS_PTRACE when callers run as other users, and in the host pid
// namespace (hostPID in Kubernetes) when they run in other containers.
// Callers it cannot identify are dropped at Accept.
package peercred

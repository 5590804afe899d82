// Package privdir checks that the directories holding a daemon's state
// are out of other local users' reach: that no directory from the state
// directory up to / lets anyone but root and the daemon's own user rename
// its entries. Whoever could would move the state aside and put their own
// in its place: an empty outbox, or a signing key of their choosing.
package privdir

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNotPrivate is wrapped by the errors of CheckAncestors and CheckFile.
var ErrNotPrivate = errors.New("not private")

// notPrivate is a refusal: its message, wrapping ErrNotPrivate.
type notPrivate struct{ msg string }

func (e *notPrivate) Error() string { return e.msg }
func (e *notPrivate) Unwrap() error { return ErrNotPrivate }

func refuse(format string, args ...any) error {
	return &notPrivate{msg: fmt.Sprintf(format, args...)}
}

// CheckAncestors refuses dir when it or any directory above it is
// writable, without the sticky bit, by others, by a group other than the
// daemon's own effective group, or through a POSIX ACL by anyone else; or
// owned by someone other than root or the daemon's effective user. (A
// group-writable directory of the daemon's own group is what Kubernetes
// makes of a volume under fsGroup.) harm ends the error: what such a user
// could do (e.g. "move the outbox aside, and the agent would drop what it
// queued").
//
// It checks the path as written, the directory holding each symbolic link
// met on the way (whoever renames there repoints the link), and the path
// the links lead to: the directories that really hold dir. Directories
// not made yet are passed over (the caller makes them 0700). In a user
// namespace, directories of users it does not map (the host's root among
// them) show as the overflow uid, which counts as root's.
func CheckAncestors(dir, harm string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := checkChain(dir, harm); err != nil {
		return err
	}
	real, err := resolve(dir, func(linkDir string) error { return checkChain(linkDir, harm) })
	if err != nil {
		return err
	}
	return checkChain(real, harm)
}

// checkChain applies CheckAncestors' rule to dir and each directory
// above it, as named (Lstat: a symbolic link itself is passed over, its
// directory is checked).
func checkChain(dir, harm string) error {
	euid, egid, overflow := os.Geteuid(), os.Getegid(), OverflowUID()
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return err
		case fi.Mode()&os.ModeSymlink != 0:
		default:
			st, _ := fi.Sys().(*syscall.Stat_t)
			if st != nil && st.Uid != 0 && int(st.Uid) != euid && int(st.Uid) != overflow {
				return refuse("%s is owned by uid %d, neither root nor this daemon's (euid %d): that user could %s", p, st.Uid, euid, harm)
			}
			if fi.Mode()&os.ModeSticky != 0 {
				break
			}
			if fi.Mode().Perm()&0o002 != 0 {
				return refuse("%s is writable by others: they could %s (chmod o-w %s)", p, harm, p)
			}
			if gid := groupOf(st); fi.Mode().Perm()&0o020 != 0 && gid != egid {
				return refuse("%s is writable by group %d, not this daemon's own (egid %d): its members could %s (chmod g-w %s)", p, gid, egid, harm, p)
			}
			if who := aclWriter(p, euid, egid); who != "" {
				return refuse("%s has an ACL that lets %s write in it: they could %s (setfacl -b %s)", p, who, harm, p)
			}
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

// resolve walks the absolute path dir as the kernel does, one name at a
// time, and returns where its symbolic links lead (its part that does not
// exist yet kept as written). met is called with the directory holding
// each link on the way: a second review repointed a link halfway
// (a/link1 -> b/link2 -> c/real, b another user's) that neither the path
// as written nor as resolved passes through.
func resolve(dir string, met func(linkDir string) error) (string, error) {
	todo := strings.Split(dir, "/")
	cur := "/"
	for hops := 0; len(todo) > 0; {
		name := todo[0]
		todo = todo[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur) // cur holds no link: its parent is the kernel's
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return filepath.Join(append([]string{next}, todo...)...), nil
		case err != nil:
			return "", err
		case fi.Mode()&os.ModeSymlink == 0:
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", dir)
		}
		if err := met(cur); err != nil {
			return "", err
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return cur, nil
}

// aclWriter names who, beyond a directory's owner, group and others, a
// POSIX ACL lets write in directory p: a named user other than root and
// the daemon's, or a named group other than the daemon's; "" when none.
// The mode's group bits are then the ACL's mask and hide them (a second
// review passed the own-group exception with user:4016:rwx).
func aclWriter(p string, euid, egid int) string {
	buf := make([]byte, 1024)
	n, err := unix.Lgetxattr(p, "system.posix_acl_access", buf)
	if err != nil || n < 4 {
		return "" // no ACL beyond the mode (or none readable)
	}
	const (
		tagUser, tagGroup, tagMask = 0x02, 0x08, 0x10
		permWrite                  = 0x02
	)
	b := buf[4:n] // after the version
	mask := uint16(0x07)
	for i := 0; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint16(b[i:]) == tagMask {
			mask = binary.LittleEndian.Uint16(b[i+2:])
		}
	}
	for i := 0; i+8 <= len(b); i += 8 {
		tag, perm, id := binary.LittleEndian.Uint16(b[i:]), binary.LittleEndian.Uint16(b[i+2:]), binary.LittleEndian.Uint32(b[i+4:])
		if perm&mask&permWrite == 0 {
			continue
		}
		switch {
		case tag == tagUser && id != 0 && int(id) != euid:
			return fmt.Sprintf("user %d", id)
		case tag == tagGroup && int(id) != egid:
			return fmt.Sprintf("group %d", id)
		}
	}
	return ""
}

// groupOf is the group owning a file, or -1 when its stat says none.
func groupOf(st *syscall.Stat_t) int {
	if st == nil {
		return -1
	}
	return int(st.Gid)
}

// CheckFile refuses a file that is a symbolic link, not a regular file,
// owned by a user other than the daemon's, or open to group or others:
// a key file that another user wrote, or could read. what names it for
// the error ("log key"). A file that does not exist is os.ErrNotExist.
func CheckFile(path, what string) (os.FileInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, refuse("%s %s is not a regular file (%s)", what, path, fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, refuse("%s %s is owned by uid %d, not this daemon's (euid %d): whoever wrote it chose the key (chown it, or remove it)", what, path, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, refuse("%s %s is accessible by group or others (mode %s): chmod 600 it", what, path, fi.Mode().Perm())
	}
	return fi, nil
}

// OverflowUID is the uid this user namespace shows for users it does not
// map (/proc/sys/kernel/overflowuid, 65534 by default), or -1 in the
// initial namespace, where that uid is a user like any other (nobody).
func OverflowUID() int {
	m, err := os.ReadFile("/proc/self/uid_map")
	if err != nil || strings.Join(strings.Fields(string(m)), " ") == "0 0 4294967295" {
		return -1
	}
	b, err := os.ReadFile("/proc/sys/kernel/overflowuid")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

//go:build linux

package measure

import (
	"errors"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// resolveFlags confine a resolution to the directory it starts from: no
// "..", symbolic link or mount point can lead out of it, and no
// /proc-style magic link is followed.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// maxSymlinks is how many symbolic links one resolution follows, as in the
// kernel (MAXSYMLINKS).
const maxSymlinks = 40

// disableOpenat2 makes every resolver use the fallback walk, for tests.
var disableOpenat2 bool

// openat2Support caches whether the kernel has openat2(2) (and a seccomp
// filter lets it through), which does not change while the process runs:
// 0 not probed yet, 1 yes, 2 no.
var openat2Support atomic.Int32

// resolver opens paths beneath a root directory.
type resolver struct {
	rootfd int
	// rootDev is the root's device; set only without openat2, the one
	// case that needs it (see dev).
	rootDev uint64
	// openat2 is whether the kernel has openat2(2). It is set once, before
	// the resolver is shared.
	openat2 bool
}

func newResolver(rootfd int) (*resolver, error) {
	r := &resolver{rootfd: rootfd}
	if !disableOpenat2 {
		switch openat2Support.Load() {
		case 1:
			r.openat2 = true
		case 2:
		default:
			fd, err := unix.Openat2(rootfd, ".", &unix.OpenHow{
				Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
				Resolve: resolveFlags,
			})
			switch {
			case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
				// Old kernel, or a seccomp filter that does not know openat2.
				openat2Support.Store(2)
			default:
				// The system call exists (it may refuse this root, say
				// to a caller without search permission: the walk then
				// fails as that caller would).
				if err == nil {
					unix.Close(fd)
				}
				r.openat2 = true
				openat2Support.Store(1)
			}
		}
	}
	if !r.openat2 {
		var st unix.Stat_t
		if err := unix.Fstat(rootfd, &st); err != nil {
			return nil, err
		}
		r.rootDev = uint64(st.Dev) //nolint:unconvert // Dev is uint32 on some arches
	}
	return r, nil
}

// dev returns the root's device number.
func (r *resolver) dev() (uint64, error) {
	if !r.openat2 {
		return r.rootDev, nil
	}
	// Only if openat2 failed after the probe said it works.
	var st unix.Stat_t
	if err := unix.Fstat(r.rootfd, &st); err != nil {
		return 0, err
	}
	return uint64(st.Dev), nil //nolint:unconvert // Dev is uint32 on some arches
}

// open opens rel, a cleaned relative path, beneath the root with flags
// (O_CLOEXEC is added), following symbolic links that stay beneath it. It
// fails with EXDEV when rel leads outside the root.
func (r *resolver) open(rel string, flags int) (int, error) {
	if r.openat2 {
		how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolveFlags}
		for try := 0; ; try++ {
			fd, err := unix.Openat2(r.rootfd, rel, &how)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN && try < 16:
				// A concurrent rename anywhere on the system can make a
				// RESOLVE_BENEATH lookup unsure; the kernel asks to retry.
				continue
			case err == unix.ENOSYS:
				// Not expected after the probe; fall back for this call.
			default:
				return fd, err
			}
			break
		}
	}
	for try := 0; ; try++ {
		fd, err := r.openSlow(rel, flags)
		if err == unix.EAGAIN && try < 16 {
			continue
		}
		return fd, err
	}
}

// openChild opens name, one directory entry of dirfd, with flags (O_NOFOLLOW
// and O_CLOEXEC are added), refusing mount points.
func (r *resolver) openChild(dirfd int, name string, flags int) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if r.openat2 {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: resolveFlags}
		for {
			fd, err := unix.Openat2(dirfd, name, &how)
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			return fd, err
		}
	}
	fd, err := unix.Openat(dirfd, name, flags, 0)
	if err != nil {
		return -1, err
	}
	if err := r.checkDev(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// checkDev fails with EXDEV when directory fd is on another file system
// than the root: the fallback's stand-in for RESOLVE_NO_XDEV. It checks
// directories only, since overlay file systems may report another device
// for regular files.
func (r *resolver) checkDev(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	rootDev, err := r.dev()
	if err != nil {
		return err
	}
	if uint64(st.Dev) != rootDev { //nolint:unconvert // Dev is uint32 on some arches
		return unix.EXDEV
	}
	return nil
}

// openSlow is open without openat2: it walks rel one component at a time
// from the root with O_PATH|O_NOFOLLOW, keeping a descriptor for every
// directory on the way so that ".." is resolved against the directories
// actually walked, and resolves symbolic links itself. Absolute link
// targets, and ".." above the root, fail with EXDEV, as RESOLVE_BENEATH
// does. It returns EAGAIN if the final file changed while it was opened.
func (r *resolver) openSlow(rel string, flags int) (int, error) {
	rootDev, err := r.dev()
	if err != nil {
		return -1, err
	}
	var stack []int // descriptors of the directories below the root walked so far
	defer func() {
		for _, fd := range stack {
			unix.Close(fd)
		}
	}()
	cur := func() int {
		if len(stack) == 0 {
			return r.rootfd
		}
		return stack[len(stack)-1]
	}
	comps := strings.Split(rel, "/")
	links := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return -1, unix.EXDEV
			}
			unix.Close(stack[len(stack)-1])
			stack = stack[:len(stack)-1]
			continue
		}
		fd, st, err := openComponent(cur(), c)
		if err != nil {
			return -1, err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			links++
			if links > maxSymlinks {
				unix.Close(fd)
				return -1, unix.ELOOP
			}
			target, err := readlinkFd(fd)
			unix.Close(fd)
			if err != nil {
				return -1, err
			}
			if target == "" {
				return -1, unix.ENOENT
			}
			if target[0] == '/' {
				return -1, unix.EXDEV
			}
			comps = append(strings.Split(target, "/"), comps...)
		case unix.S_IFDIR:
			if uint64(st.Dev) != rootDev { //nolint:unconvert // Dev is uint32 on some arches
				unix.Close(fd)
				return -1, unix.EXDEV
			}
			stack = append(stack, fd)
		default:
			for _, rest := range comps {
				if rest != "" {
					unix.Close(fd) // a file followed by more components
					return -1, unix.ENOTDIR
				}
			}
			if flags&unix.O_PATH != 0 {
				return fd, nil
			}
			// Reopen for reading from the same parent, and make sure it is
			// still the same file.
			unix.Close(fd)
			rfd, err := unix.Openat(cur(), c, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err == unix.ELOOP {
				return -1, unix.EAGAIN // replaced by a symbolic link meanwhile
			}
			if err != nil {
				return -1, err
			}
			var rst unix.Stat_t
			if err := unix.Fstat(rfd, &rst); err != nil {
				unix.Close(rfd)
				return -1, err
			}
			if rst.Dev != st.Dev || rst.Ino != st.Ino {
				unix.Close(rfd)
				return -1, unix.EAGAIN
			}
			return rfd, nil
		}
	}
	// The path ends at a directory: the root or the top of the stack.
	return unix.Openat(cur(), ".", flags|unix.O_CLOEXEC, 0)
}

// readlinkFd reads the target of the symbolic link fd, opened with
// O_PATH|O_NOFOLLOW.
func readlinkFd(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "", err
	}
	if n >= len(buf) {
		return "", unix.ENAMETOOLONG
	}
	return string(buf[:n]), nil
}

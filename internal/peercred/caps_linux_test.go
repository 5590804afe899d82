package peercred

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkCapabilities reads a connected peer's capabilities (this
// process), as the agent does once for each new connection.
func BenchmarkCapabilities(b *testing.B) {
	l, path := listen(b)
	c, _ := dialAccepted(b, l, path)
	defer c.Close()
	for b.Loop() {
		if _, err := c.readCapabilities(); err != nil {
			b.Fatal(err)
		}
	}
}

// capsetRole is a helper that, before it connects as "hold" does, sets
// its main thread's capabilities to capsetWant: effective none,
// permitted capsetWant, inheritable capsetInheritable (more than it
// permits). capget(2) of a process reads its main thread.
const capsetRole = "hold-capset"

const (
	capsetWant        = 1<<10 | 1<<37
	capsetInheritable = 1<<10 | 1<<19 | 1<<37
)

func init() {
	if os.Getenv(envRole) == capsetRole {
		runtime.LockOSThread() // main, and so TestMain, run on the main thread
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(envRole) == capsetRole {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := [2]unix.CapUserData{
			{Permitted: capsetWant & 0xffffffff, Inheritable: capsetInheritable & 0xffffffff},
			{Permitted: capsetWant >> 32, Inheritable: capsetInheritable >> 32},
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: capset: %v\n", capsetRole, err)
			os.Exit(2)
		}
		os.Setenv(envRole, "hold")
	}
	os.Exit(m.Run())
}

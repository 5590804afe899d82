package outbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Must show, as the outside review found it: one write that meets a full
// disk stopped the outbox for good (every later step refused, the agent
// still ready) until a restart, because the rewrite after it needs as
// much free space as the file. Here the file size limit (RLIMIT_FSIZE)
// stops write(2) partway, as a full disk does. The failed put is refused
// and cut back off the file, which needs no free space; a put that fits
// goes on while the disk is still full, and every put once there is room;
// a reopen finds every acknowledged put and no damage.
func TestFullDiskFailsOnlyTheWriteThatMeetsIt(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	require.NoError(t, o.Put(item("a")))
	st, err := os.Stat(filepath.Join(dir, "outbox.log"))
	require.NoError(t, err)

	// Nor could the disk take a rewrite of the file: its temporary file
	// cannot be made.
	tmp := filepath.Join(dir, "outbox.log.tmp")
	require.NoError(t, os.MkdirAll(filepath.Join(tmp, "x"), 0o700))
	var unlimited unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_FSIZE, &unlimited))
	full := unix.Rlimit{Cur: uint64(st.Size()) + 4096, Max: unlimited.Max}
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_FSIZE, &full))
	errBig := o.Put(Item{ID: "big", Bundle: bytes.Repeat([]byte("b"), 64<<10)})
	errSmall := o.Put(item("small"))
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_FSIZE, &unlimited))
	require.NoError(t, os.RemoveAll(tmp))

	require.ErrorContains(t, errBig, "outbox: write: ")
	require.ErrorIs(t, errBig, unix.EFBIG)
	require.NoError(t, errSmall, "the file was cut back: what fits is written")
	require.NoError(t, o.Broken())
	require.NoError(t, o.Put(item("after")))
	require.NoError(t, o.MarkLogged("a", []byte(`{"logIndex":"1"}`)))
	checkAll(t, o, []string{"small", "after"}, "open")
	_, ok, err := o.Get("big")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, o.Close())

	o = reopenWhole(t, dir, []string{"small", "after"}, "big")
	a, ok, err := o.Get("a")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, Logged, a.State)
}

// reopenWhole reopens the outbox in dir and checks that it holds the
// puts ids and not failed, and found no damage and no torn tail.
func reopenWhole(t *testing.T, dir string, ids []string, failed string) *Outbox {
	t.Helper()
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { o.Close() })
	checkAll(t, o, ids, "reopened")
	_, ok, err := o.Get(failed)
	require.NoError(t, err)
	require.False(t, ok, "the failed put is nowhere")
	require.Empty(t, o.Damaged())
	_, torn := o.Torn()
	require.False(t, torn)
	return o
}

// The same on a real full disk, as the outside review did it: data_dir on
// a small tmpfs, a file filling it, one put, the file removed, and more
// puts. Before, every put after the first full-disk write was refused
// until a restart. Here with nothing left free, and with 8 KiB left
// (part of the record reaches the disk).
func TestFullTmpfsFailsOnlyTheWritesThatMeetIt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root (CI runs as root)")
	}
	for _, free := range []int64{0, 8 << 10} {
		t.Run(fmt.Sprintf("%d bytes free", free), func(t *testing.T) {
			mnt := t.TempDir()
			require.NoError(t, unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m,mode=0700"))
			t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) }) //nolint:errcheck // best effort
			dir := filepath.Join(mnt, "outbox")
			o, err := Open(dir, Options{})
			require.NoError(t, err)
			require.NoError(t, o.Put(item("a")))

			filler, err := os.Create(filepath.Join(mnt, "filler"))
			require.NoError(t, err)
			chunk := make([]byte, 4096)
			var size int64
			for {
				n, err := filler.Write(chunk)
				size += int64(n)
				if err != nil {
					require.ErrorIs(t, err, unix.ENOSPC)
					break
				}
			}
			require.NoError(t, filler.Truncate(size-free))
			require.NoError(t, filler.Close())

			errFull := o.Put(Item{ID: "big", Bundle: bytes.Repeat([]byte("b"), 64<<10)})
			require.NoError(t, os.Remove(filepath.Join(mnt, "filler")))
			require.ErrorIs(t, errFull, unix.ENOSPC)
			require.NoError(t, o.Put(item("after")), "space is back: puts go on")
			require.NoError(t, o.Broken())
			require.NoError(t, o.Close())

			reopenWhole(t, dir, []string{"a", "after"}, "big")
		})
	}
}

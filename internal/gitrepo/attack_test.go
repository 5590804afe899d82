package gitrepo

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

// packEntryHeader is a pack entry's type and size (gitformat-pack(5)).
func packEntryHeader(typ int, size int) []byte {
	c := byte(typ<<4) | byte(size&0x0f)
	size >>= 4
	var out []byte
	for size > 0 {
		out = append(out, c|0x80)
		c, size = byte(size&0x7f), size>>7
	}
	return append(out, c)
}

// ofsDeltaOffset encodes an OFS_DELTA's distance back to its base.
func ofsDeltaOffset(back int) []byte {
	out := []byte{byte(back & 0x7f)}
	for back >>= 7; back > 0; back >>= 7 {
		back--
		out = append([]byte{0x80 | byte(back&0x7f)}, out...)
	}
	return out
}

func deltaSize(n int) []byte {
	var out []byte
	for ; n >= 0x80; n >>= 7 {
		out = append(out, byte(n&0x7f)|0x80)
	}
	return append(out, byte(n))
}

func deflate(b []byte) []byte {
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(b) //nolint:errcheck
	w.Close()
	return z.Bytes()
}

// A build step packs its commit's tree as the end of a chain of deltas,
// each of which copies the whole of a large base (a few bytes of delta,
// a megabyte out): inflating little, the chain makes the agent copy
// depth x base bytes for every read of the object. What deltas produce
// counts against MaxTotalBytes like what zlib inflates.
func TestAttackDeltaChainBomb(t *testing.T) {
	const base, depth = 1 << 20, 32
	var pack bytes.Buffer
	pack.WriteString("PACK")
	binary.Write(&pack, binary.BigEndian, [2]uint32{2, depth + 2}) //nolint:errcheck
	prev := pack.Len()
	pack.Write(packEntryHeader(typeTree, base))
	pack.Write(deflate(make([]byte, base)))
	for range depth {
		off := pack.Len()
		delta := append(append(deltaSize(base), deltaSize(base)...), 0xc0, 0x10) // copy 0x100000 bytes from 0
		pack.Write(packEntryHeader(typeOfsDelta, len(delta)))
		pack.Write(ofsDeltaOffset(off - prev))
		pack.Write(deflate(delta))
		prev = off
	}
	// The last delta makes the empty tree out of the megabyte.
	final := pack.Len()
	delta := append(deltaSize(base), deltaSize(0)...)
	pack.Write(packEntryHeader(typeOfsDelta, len(delta)))
	pack.Write(ofsDeltaOffset(final - prev))
	pack.Write(deflate(delta))

	emptyTree := hashObject("tree", nil)
	commit := []byte("tree " + emptyTree.String() + "\nauthor a <a> 0 +0000\n\nm\n")
	cid := hashObject("commit", commit).String()
	fsys := fstest.MapFS{
		".git/HEAD": {Data: []byte(cid + "\n")},
		".git/objects/" + cid[:2] + "/" + cid[2:]: {Data: deflate(append([]byte("commit "+itoa(len(commit))+"\x00"), commit...))},
		".git/objects/pack/pack-x.idx":            {Data: indexFor([][20]byte{emptyTree}, []uint32{uint32(final)})},
		".git/objects/pack/pack-x.pack":           {Data: pack.Bytes()},
	}
	// The chain is well formed: within generous limits it reads.
	src, err := Read(fsys, ".", Limits{MaxObjectBytes: base, MaxTotalBytes: 64 * base})
	require.NoError(t, err)
	require.Equal(t, emptyTree.String(), src.Tree)
	require.True(t, src.Clean, src.Difference)

	// Inflated, it is barely more than a megabyte; produced, 33.
	_, err = Read(fsys, ".", Limits{MaxObjectBytes: base, MaxTotalBytes: 8 * base})
	require.ErrorContains(t, err, "bytes of objects")
}

// packedEmptyTree is a repository whose commit is loose and whose tree
// (the empty tree) is in a pack of its own, with an index listing fillers
// more IDs besides, each pointing at nothing.
func packedEmptyTree(t *testing.T, fillers int, idxName string, fsys fstest.MapFS) fstest.MapFS {
	t.Helper()
	emptyTree := hashObject("tree", nil)
	var pack bytes.Buffer
	pack.WriteString("PACK")
	binary.Write(&pack, binary.BigEndian, [2]uint32{2, 1}) //nolint:errcheck
	off := pack.Len()
	pack.Write(packEntryHeader(typeTree, 0))
	pack.Write(deflate(nil))
	ids := make([][20]byte, 0, fillers+1)
	for i := range fillers {
		var id [20]byte
		binary.BigEndian.PutUint64(id[:], uint64(i)*0x9e3779b97f4a7c15)
		binary.BigEndian.PutUint32(id[16:], uint32(i))
		ids = append(ids, id)
	}
	ids = append(ids, emptyTree)
	slices.SortFunc(ids, func(a, b [20]byte) int { return bytes.Compare(a[:], b[:]) })
	offsets := make([]uint32, len(ids))
	for i, id := range ids {
		offsets[i] = uint32(len(pack.Bytes()) + 1000 + i) // nothing there
		if id == emptyTree {
			offsets[i] = uint32(off)
		}
	}
	commit := []byte("tree " + emptyTree.String() + "\nauthor a <a> 0 +0000\n\nm\n")
	cid := hashObject("commit", commit).String()
	if fsys == nil {
		fsys = fstest.MapFS{}
	}
	fsys[".git/HEAD"] = &fstest.MapFile{Data: []byte(cid + "\n")}
	fsys[".git/objects/"+cid[:2]+"/"+cid[2:]] = &fstest.MapFile{Data: deflate(append([]byte("commit "+itoa(len(commit))+"\x00"), commit...))}
	fsys[".git/objects/pack/"+idxName+".idx"] = &fstest.MapFile{Data: indexFor(ids, offsets)}
	fsys[".git/objects/pack/"+idxName+".pack"] = &fstest.MapFile{Data: pack.Bytes()}
	return fsys
}

// Pack indexes are looked up where they lie, not read into memory: a
// repository of a few million objects has an index larger than
// MaxObjectBytes (git's own linux.git: 280 MB), and a step that drops 256
// large indexes into .git/objects/pack made the agent hold them all
// (256 x 64 MiB by default) for each attestation.
func TestAttackPackIndexes(t *testing.T) {
	// One index of 100001 objects, 2.8 MB, with a 1 MiB object limit.
	fsys := packedEmptyTree(t, 100000, "pack-big", nil)
	require.Greater(t, len(fsys[".git/objects/pack/pack-big.idx"].Data), 2<<20)
	src, err := Read(fsys, ".", Limits{MaxObjectBytes: 1 << 20})
	require.NoError(t, err, "an index larger than one object is read where it lies")
	require.True(t, src.Clean, src.Difference)

	// Sixteen indexes of 4 MiB each: the reader holds none of them.
	fsys = fstest.MapFS{}
	for i := range 16 {
		packedEmptyTree(t, 150000, fmt.Sprintf("pack-%02d", i), fsys)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	src, err = Read(fsys, ".", Limits{})
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	require.True(t, src.Clean, src.Difference)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB to look an object up in 16 indexes of %d KiB", allocated>>10, len(fsys[".git/objects/pack/pack-00.idx"].Data)>>10)
	require.Less(t, allocated, uint64(4<<20))
}

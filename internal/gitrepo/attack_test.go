package gitrepo

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
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

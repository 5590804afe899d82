package gitrepo

import (
	"bytes"
	"compress/zlib"
	"crypto/sha1" //nolint:gosec // git's object IDs are SHA-1; collision-detecting SHA-1 is git's concern, the ID is what is recorded
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Object types, as pack files number them.
const (
	typeCommit   = 1
	typeTree     = 2
	typeBlob     = 3
	typeTag      = 4
	typeOfsDelta = 6
	typeRefDelta = 7
)

var typeNames = map[int]string{typeCommit: "commit", typeTree: "tree", typeBlob: "blob", typeTag: "tag"}

// ID is a SHA-1 object ID.
type ID [sha1.Size]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID parses 40 lowercase hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) || strings.ToLower(s) != s {
		return id, fmt.Errorf("gitrepo: %.50q is not a 40-digit lowercase hex object ID", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("gitrepo: %.50q is not a 40-digit lowercase hex object ID", s)
	}
	return id, nil
}

// hashObject is git's object ID of content of type typ.
func hashObject(typ string, content []byte) ID {
	h := newObjectHash(typ, int64(len(content)))
	h.Write(content)
	var id ID
	h.Sum(id[:0])
	return id
}

// newObjectHash starts git's object ID of an object of type typ and size
// bytes: write the content, then Sum.
func newObjectHash(typ string, size int64) hash.Hash {
	h := sha1.New() //nolint:gosec // git's object format
	fmt.Fprintf(h, "%s %d\x00", typ, size)
	return h
}

// objectStore reads objects from a repository's objects directory:
// loose objects, then pack files (index version 2). Every object read is
// hashed and compared with the ID asked for.
type objectStore struct {
	fsys  fs.FS
	dir   string // the objects directory
	lim   Limits
	packs []*pack
	read  int64 // bytes inflated or produced by deltas so far
}

func newObjectStore(fsys fs.FS, dir string, lim Limits) (*objectStore, error) {
	s := &objectStore{fsys: fsys, dir: dir, lim: lim}
	names, err := packIndexes(fsys, path.Join(dir, "pack"), lim)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		p, err := openIndex(fsys, path.Join(dir, "pack", name))
		if err != nil {
			s.close()
			return nil, fmt.Errorf("gitrepo: %s: %w", name, err)
		}
		p.path = path.Join(dir, "pack", strings.TrimSuffix(name, ".idx")+".pack")
		s.packs = append(s.packs, p)
	}
	return s, nil
}

// packIndexes returns the names of the pack indexes (regular .idx files)
// in the pack directory, sorted, none when there is no such directory. It
// reads the directory a batch at a time and fails at its MaxFiles-th
// entry or its maxPacks-th index, before opening any: a step that fills
// the directory with millions of files costs a batch of memory.
func packIndexes(fsys fs.FS, dir string, lim Limits) ([]string, error) {
	var names []string
	seen := 0
	err := eachEntry(fsys, dir, func(e fs.DirEntry) (bool, error) {
		if seen++; seen > lim.MaxFiles {
			return true, fmt.Errorf("more than %d entries (MaxFiles)", lim.MaxFiles)
		}
		if !strings.HasSuffix(e.Name(), ".idx") || !e.Type().IsRegular() {
			return false, nil
		}
		if len(names) == maxPacks {
			return true, fmt.Errorf("more than %d pack files", maxPacks)
		}
		names = append(names, e.Name())
		return false, nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gitrepo: pack directory: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

// close closes the pack indexes.
func (s *objectStore) close() {
	for _, p := range s.packs {
		p.idx.Close()
	}
}

// get returns the type and content of object id.
func (s *objectStore) get(id ID) (string, []byte, error) {
	typ, content, err := s.getUnchecked(id, 0)
	if err != nil {
		return "", nil, err
	}
	if got := hashObject(typ, content); got != id {
		return "", nil, fmt.Errorf("gitrepo: object %s hashes to %s: the repository is corrupt or was tampered with", id, got)
	}
	return typ, content, nil
}

func (s *objectStore) getUnchecked(id ID, depth int) (string, []byte, error) {
	hexID := id.String()
	raw, err := readLimited(s.fsys, path.Join(s.dir, hexID[:2], hexID[2:]), s.lim.MaxObjectBytes)
	if err == nil {
		return s.parseLoose(raw)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", nil, err
	}
	for _, p := range s.packs {
		off, ok, err := p.find(id)
		if err != nil {
			return "", nil, fmt.Errorf("gitrepo: pack index of %s: %w", p.path, err)
		}
		if ok {
			return s.packObject(p, off, depth)
		}
	}
	return "", nil, fmt.Errorf("gitrepo: object %s: %w (not loose, in no pack; alternates and promisor remotes are not read)", id, fs.ErrNotExist)
}

// parseLoose inflates a loose object: "TYPE SIZE\0CONTENT", zlib
// compressed.
func (s *objectStore) parseLoose(raw []byte) (string, []byte, error) {
	zr, err := zlib.NewReader(bytes.NewReader(raw))
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: loose object: %w", err)
	}
	data, err := s.inflate(zr, s.lim.MaxObjectBytes+64)
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: loose object: %w", err)
	}
	return parseLooseContent(data)
}

// parseLooseContent splits an inflated loose object into type and content.
func parseLooseContent(data []byte) (string, []byte, error) {
	header, content, ok := bytes.Cut(data, []byte{0})
	if !ok {
		return "", nil, errors.New("gitrepo: loose object: no header")
	}
	typ, size, ok := strings.Cut(string(header), " ")
	if !ok {
		return "", nil, errors.New("gitrepo: loose object: malformed header")
	}
	if typ != "commit" && typ != "tree" && typ != "blob" && typ != "tag" {
		return "", nil, fmt.Errorf("gitrepo: loose object: unknown type %.20q", typ)
	}
	n, err := strconv.Atoi(size)
	if err != nil || n != len(content) || size != strconv.Itoa(n) {
		return "", nil, fmt.Errorf("gitrepo: loose object: header says %.20q bytes, has %d", size, len(content))
	}
	return typ, content, nil
}

// inflate reads all of r, at most limit bytes, counting against the
// store's total.
func (s *objectStore) inflate(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("object larger than %d bytes", limit)
	}
	if err := s.count(len(data)); err != nil {
		return nil, err
	}
	return data, nil
}

// count adds n bytes made (inflated, or produced by a delta) to the
// store's total: a chain of deltas each copying a large base makes much
// out of little, so both count.
func (s *objectStore) count(n int) error {
	s.read += int64(n)
	if s.read > s.lim.MaxTotalBytes {
		return fmt.Errorf("more than %d bytes of objects inflated or produced by deltas", s.lim.MaxTotalBytes)
	}
	return nil
}

// pack is a pack file and its index (version 2), which is looked up
// where it lies, never read whole: a large repository's index is larger
// than any one object, and a step may drop many into the pack directory.
type pack struct {
	path   string // the pack file
	idx    fs.File
	ra     io.ReaderAt // idx
	n      int64       // objects
	large  int64       // 64-bit offsets
	fanout [256]uint32
}

const maxPacks = 256

// Layout of a version 2 pack index (gitformat-pack(5), "Version 2
// pack-*.idx files"): magic and version, 256 fan-out entries, then n
// object IDs (sorted), n CRCs, n 4-byte offsets, 64-bit offsets, and the
// pack's and the index's SHA-1. The checksums are not checked: every
// object read is hashed against its ID, so a corrupt index can only hide
// an object or point at the wrong one, which the hash refuses.
const idxHeader = 8 + 256*4

// openIndex opens the pack index at name in fsys and checks its header,
// fan-out and size.
func openIndex(fsys fs.FS, name string) (*pack, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	ra, ok := f.(io.ReaderAt)
	if !ok {
		f.Close()
		return nil, errors.New("pack index does not support random reads")
	}
	p, err := parseIndex(ra, fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	p.idx = f
	return p, nil
}

// parseIndex checks a version 2 pack index of size bytes read through ra.
func parseIndex(ra io.ReaderAt, size int64) (*pack, error) {
	var head [idxHeader]byte
	if size < idxHeader+2*sha1.Size {
		return nil, errors.New("not a version 2 pack index")
	}
	if _, err := ra.ReadAt(head[:], 0); err != nil {
		return nil, err
	}
	if !bytes.Equal(head[:4], []byte{0xff, 't', 'O', 'c'}) || binary.BigEndian.Uint32(head[4:8]) != 2 {
		return nil, errors.New("not a version 2 pack index")
	}
	p := &pack{ra: ra}
	prev := uint32(0)
	for i := range p.fanout {
		v := binary.BigEndian.Uint32(head[8+4*i:])
		if v < prev {
			return nil, errors.New("pack index fan-out is not monotonic")
		}
		p.fanout[i], prev = v, v
	}
	p.n = int64(prev)
	rest := size - idxHeader - 2*sha1.Size - p.n*(sha1.Size+4+4)
	if rest < 0 {
		return nil, fmt.Errorf("pack index too short for %d objects", p.n)
	}
	if rest%8 != 0 {
		return nil, errors.New("pack index large offset table is malformed")
	}
	p.large = rest / 8
	return p, nil
}

// find returns the pack offset of id, by a binary search of the IDs that
// the fan-out says start with id's first byte.
func (p *pack) find(id ID) (int64, bool, error) {
	lo, hi := int64(0), int64(p.fanout[id[0]])
	if id[0] > 0 {
		lo = int64(p.fanout[id[0]-1])
	}
	var buf [sha1.Size]byte
	for lo < hi {
		m := int64(uint64(lo+hi) >> 1)
		if _, err := p.ra.ReadAt(buf[:], idxHeader+m*sha1.Size); err != nil {
			return 0, false, err
		}
		switch c := bytes.Compare(buf[:], id[:]); {
		case c < 0:
			lo = m + 1
		case c > 0:
			hi = m
		default:
			return p.offset(m)
		}
	}
	return 0, false, nil
}

// offset reads the pack offset of the m-th object.
func (p *pack) offset(m int64) (int64, bool, error) {
	var b [8]byte
	if _, err := p.ra.ReadAt(b[:4], idxHeader+p.n*(sha1.Size+4)+4*m); err != nil {
		return 0, false, err
	}
	off := binary.BigEndian.Uint32(b[:4])
	if off&0x80000000 == 0 {
		return int64(off), true, nil
	}
	i := int64(off & 0x7fffffff)
	if i >= p.large {
		return 0, false, nil
	}
	if _, err := p.ra.ReadAt(b[:], idxHeader+p.n*(sha1.Size+8)+8*i); err != nil {
		return 0, false, err
	}
	v := binary.BigEndian.Uint64(b[:])
	if v > 1<<62 {
		return 0, false, nil
	}
	return int64(v), true, nil
}

// maxDeltaDepth bounds a chain of deltas.
const maxDeltaDepth = 64

// packObject reads the object at off in pack p, resolving deltas.
func (s *objectStore) packObject(p *pack, off int64, depth int) (string, []byte, error) {
	if depth > maxDeltaDepth {
		return "", nil, fmt.Errorf("gitrepo: delta chain longer than %d", maxDeltaDepth)
	}
	f, err := s.fsys.Open(p.path)
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: %w", err)
	}
	defer f.Close()
	ra, ok := f.(io.ReaderAt)
	if !ok {
		return "", nil, errors.New("gitrepo: pack file does not support random reads")
	}
	r := bufioReader(io.NewSectionReader(ra, off, 1<<62))
	typ, size, err := readEntryHeader(r)
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %w", off, err)
	}
	if size > s.lim.MaxObjectBytes {
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %d bytes, limit is %d", off, size, s.lim.MaxObjectBytes)
	}
	var baseType string
	var base []byte
	switch typ {
	case typeCommit, typeTree, typeBlob, typeTag:
	case typeOfsDelta:
		back, err := readOfsDeltaOffset(r)
		if err != nil || back <= 0 || back > off {
			return "", nil, fmt.Errorf("gitrepo: pack entry at %d: bad delta base offset", off)
		}
		if baseType, base, err = s.packObject(p, off-back, depth+1); err != nil {
			return "", nil, err
		}
	case typeRefDelta:
		var baseID ID
		if _, err := io.ReadFull(r, baseID[:]); err != nil {
			return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %w", off, err)
		}
		if baseType, base, err = s.getUnchecked(baseID, depth+1); err != nil {
			return "", nil, err
		}
	default:
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: unknown type %d", off, typ)
	}
	zr, err := zlib.NewReader(r)
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %w", off, err)
	}
	data, err := s.inflate(zr, size)
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %w", off, err)
	}
	if int64(len(data)) != size {
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %d bytes, header says %d", off, len(data), size)
	}
	if base == nil {
		return typeNames[typ], data, nil
	}
	out, err := applyDelta(base, data, s.lim.MaxObjectBytes)
	if err == nil {
		err = s.count(len(out))
	}
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: pack entry at %d: %w", off, err)
	}
	return baseType, out, nil
}

// readEntryHeader reads a pack entry's type and inflated size.
func readEntryHeader(r io.ByteReader) (int, int64, error) {
	c, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	typ := int(c>>4) & 7
	size := int64(c & 0x0f)
	shift := uint(4)
	for c&0x80 != 0 {
		if shift > 56 {
			return 0, 0, errors.New("size varint too long")
		}
		if c, err = r.ReadByte(); err != nil {
			return 0, 0, err
		}
		size |= int64(c&0x7f) << shift
		shift += 7
	}
	return typ, size, nil
}

// readOfsDeltaOffset reads an OFS_DELTA's negative base offset.
func readOfsDeltaOffset(r io.ByteReader) (int64, error) {
	c, err := r.ReadByte()
	if err != nil {
		return 0, err
	}
	v := int64(c & 0x7f)
	for i := 0; c&0x80 != 0; i++ {
		if i > 8 {
			return 0, errors.New("offset varint too long")
		}
		if c, err = r.ReadByte(); err != nil {
			return 0, err
		}
		v = ((v + 1) << 7) | int64(c&0x7f)
	}
	return v, nil
}

// applyDelta applies a git delta (gitformat-pack(5), "Deltified
// representation") to base.
func applyDelta(base, delta []byte, limit int64) ([]byte, error) {
	srcSize, n := deltaVarint(delta)
	if n <= 0 {
		return nil, errors.New("delta: bad source size")
	}
	delta = delta[n:]
	dstSize, n := deltaVarint(delta)
	if n <= 0 {
		return nil, errors.New("delta: bad target size")
	}
	delta = delta[n:]
	if srcSize != uint64(len(base)) {
		return nil, fmt.Errorf("delta: base is %d bytes, delta expects %d", len(base), srcSize)
	}
	if dstSize > uint64(limit) {
		return nil, fmt.Errorf("delta: target of %d bytes, limit is %d", dstSize, limit)
	}
	out := make([]byte, 0, dstSize)
	for len(delta) > 0 {
		op := delta[0]
		delta = delta[1:]
		switch {
		case op&0x80 != 0: // copy from base
			var off, size uint64
			for i := 0; i < 4; i++ {
				if op&(1<<i) != 0 {
					if len(delta) == 0 {
						return nil, errors.New("delta: truncated copy")
					}
					off |= uint64(delta[0]) << (8 * i)
					delta = delta[1:]
				}
			}
			for i := 0; i < 3; i++ {
				if op&(0x10<<i) != 0 {
					if len(delta) == 0 {
						return nil, errors.New("delta: truncated copy")
					}
					size |= uint64(delta[0]) << (8 * i)
					delta = delta[1:]
				}
			}
			if size == 0 {
				size = 0x10000
			}
			if off+size > uint64(len(base)) || uint64(len(out))+size > dstSize {
				return nil, errors.New("delta: copy out of range")
			}
			out = append(out, base[off:off+size]...)
		case op != 0: // insert
			if int(op) > len(delta) || uint64(len(out))+uint64(op) > dstSize {
				return nil, errors.New("delta: insert out of range")
			}
			out = append(out, delta[:op]...)
			delta = delta[op:]
		default:
			return nil, errors.New("delta: reserved opcode 0")
		}
	}
	if uint64(len(out)) != dstSize {
		return nil, fmt.Errorf("delta: produced %d bytes, expected %d", len(out), dstSize)
	}
	return out, nil
}

// deltaVarint reads a delta header size (little-endian base 128).
func deltaVarint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, i + 1
		}
	}
	return 0, -1
}

// readLimited reads a whole file of at most limit bytes.
func readLimited(fsys fs.FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("gitrepo: %s: %w", name, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("gitrepo: %s: larger than %d bytes", name, limit)
	}
	return data, nil
}

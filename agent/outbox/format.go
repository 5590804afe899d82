package outbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
)

// The file format, version 2 (docs/outbox.md is its specification):
//
//	file   = header *frame
//	header = magic(8) version(u32) crc(u32)          16 bytes
//	frame  = marker(4) length(u32) bodyCRC(u32) headCRC(u32) body(length)
//
// Integers are little-endian; CRCs are CRC-32C (Castagnoli). The header's
// CRC covers magic and version; a frame's headCRC covers its marker,
// length and bodyCRC, so a damaged length is never trusted. The body is
// one JSON record (record, written by appendRecord). The marker holds
// bytes that valid UTF-8, hence no body, ever contains: after a damaged
// frame, the next one is found by looking for the marker.
//
// Version 1 (written before version 2, read and migrated on open) had no
// header and framed each record as length(u32) crc(u32) body.
const (
	// Version is the format version this package writes.
	Version = 2

	headerSize = 16
	frameHead  = 16
	// maxRecord bounds one record's body: a bundle (at most 16 MiB) in
	// base64, with room.
	maxRecord = 64 << 20
)

var (
	magic    = [8]byte{0x89, 'H', 'M', 'O', 'U', 'T', 'B', '\n'}
	marker   = [4]byte{0xff, 0xfe, 'H', 'M'}
	crcTable = crc32.MakeTable(crc32.Castagnoli)
)

// fileHeader is the header of a version 2 file.
func fileHeader() []byte {
	b := append(magic[:], 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[8:], Version)
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[:12], crcTable))
	return b
}

// readHeader reports what the first bytes of a file say: ok when they are
// a header whose CRC holds, with its version.
func readHeader(data []byte) (version uint32, ok bool) {
	if len(data) < headerSize || !bytes.Equal(data[:8], magic[:]) {
		return 0, false
	}
	if crc32.Checksum(data[:12], crcTable) != binary.LittleEndian.Uint32(data[12:16]) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(data[8:12]), true
}

// appendFrame appends rec, framed (version 2), to dst.
func appendFrame(dst []byte, rec record) ([]byte, error) {
	start := len(dst)
	dst = appendRecord(append(dst, make([]byte, frameHead)...), rec)
	body := dst[start+frameHead:]
	if len(body) > maxRecord {
		return nil, fmt.Errorf("outbox: record of %d bytes is over the %d limit", len(body), maxRecord)
	}
	h := dst[start : start+frameHead]
	copy(h, marker[:])
	binary.LittleEndian.PutUint32(h[4:], uint32(len(body)))
	binary.LittleEndian.PutUint32(h[8:], crc32.Checksum(body, crcTable))
	binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(h[:12], crcTable))
	return dst, nil
}

// frameAt looks at a version 2 frame at data[pos:]. With a sound head
// (marker and headCRC hold) it returns the frame's end; intact says
// whether the body is whole and its CRC holds, and then rec is it.
func frameAt(data []byte, pos int) (rec record, end int, head, intact bool) {
	return frameAs[record](data, pos)
}

// recordIdentity is what a compaction checks of a record it copies: what
// it is and whose, without decoding its bundle.
type recordIdentity struct {
	Op   string `json:"op"`
	ID   string `json:"id"`
	Item *struct {
		ID string `json:"id"`
	} `json:"item"`
}

// frameAs is frameAt decoding the body as a T.
func frameAs[T any](data []byte, pos int) (rec T, end int, head, intact bool) {
	var zero T
	if len(data)-pos < frameHead {
		return zero, 0, false, false
	}
	h := data[pos : pos+frameHead]
	if !bytes.Equal(h[:4], marker[:]) || crc32.Checksum(h[:12], crcTable) != binary.LittleEndian.Uint32(h[12:]) {
		return zero, 0, false, false
	}
	n := int(binary.LittleEndian.Uint32(h[4:]))
	if n > maxRecord {
		return zero, 0, false, false
	}
	end = pos + frameHead + n
	if end > len(data) {
		return zero, end, true, false // cut short: a torn write
	}
	body := data[pos+frameHead : end]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(h[8:]) || json.Unmarshal(body, &rec) != nil {
		return zero, end, true, false
	}
	return rec, end, true, true
}

// nextFrame is the offset of the first sound, intact version 2 frame at
// or after from, or -1.
func nextFrame(data []byte, from int) int {
	for i := from; i+frameHead <= len(data); i++ {
		j := bytes.Index(data[i:], marker[:])
		if j < 0 {
			return -1
		}
		i += j
		if _, _, _, intact := frameAt(data, i); intact {
			return i
		}
	}
	return -1
}

// v1RecordAt looks at a version 1 record at data[pos:]: length(u32)
// crc(u32) body, the body a JSON record.
func v1RecordAt(data []byte, pos int) (rec record, end int, intact, short bool) {
	if len(data)-pos < 8 {
		return record{}, 0, false, true
	}
	n := int(binary.LittleEndian.Uint32(data[pos:]))
	crc := binary.LittleEndian.Uint32(data[pos+4:])
	if n > maxRecord {
		return record{}, 0, false, false
	}
	end = pos + 8 + n
	if end > len(data) {
		return record{}, end, false, true
	}
	body := data[pos+8 : end]
	if crc32.Checksum(body, crcTable) != crc || json.Unmarshal(body, &rec) != nil {
		return record{}, end, false, false
	}
	return rec, end, true, false
}

// v1Start is how every version 1 record body begins (json.Marshal and
// appendRecord both start with the op).
var v1Start = []byte(`{"op":`)

// nextV1Record is the offset of the first intact version 1 record at or
// after from, or -1.
func nextV1Record(data []byte, from int) int {
	for i := from; i+8+len(v1Start) <= len(data); i++ {
		j := bytes.Index(data[i+8:], v1Start)
		if j < 0 {
			return -1
		}
		i += j
		if _, _, intact, _ := v1RecordAt(data, i); intact {
			return i
		}
	}
	return -1
}

// Damage is a stretch of the file that held no intact record, moved aside
// when the outbox was opened.
type Damage struct {
	Offset int64  // where it began in the file
	Length int64  // its bytes
	File   string // where its bytes were kept
}

// scan is what reading a file found: its intact records in file order, the
// damaged stretches, and a torn tail (a write cut short by a crash,
// never acknowledged) dropped.
type scan struct {
	version uint32
	records []record
	damaged [][2]int // [start, end) offsets
	torn    int      // bytes cut at the end
}

// errUnknownFormat: the file is not an outbox this package can read.
type errUnknownFormat struct {
	header  bool   // the file starts with a sound header
	version uint32 // its version
}

func (e *errUnknownFormat) Error() string {
	if e.header {
		return fmt.Sprintf("format version %d is not one this agent reads (1 to %d): run the hallmark-agent that wrote it, or a newer one", e.version, Version)
	}
	return "not a Hallmark outbox this agent can read: no sound header and no intact record"
}

// scanFile reads data, any version this package knows.
func scanFile(data []byte) (scan, error) {
	if len(data) == 0 {
		return scan{version: Version}, nil
	}
	if v, ok := readHeader(data); ok {
		if v != Version {
			return scan{}, &errUnknownFormat{header: true, version: v}
		}
		return scanV2(data, headerSize), nil
	}
	// No sound header. A version 2 file whose header was damaged still
	// has intact frames; a version 1 file has intact version 1 records.
	if i := nextFrame(data, 0); i >= 0 {
		s := scanV2(data, i)
		s.damaged = append([][2]int{{0, i}}, s.damaged...)
		return s, nil
	}
	if i := nextV1Record(data, 0); i >= 0 {
		s := scanV1(data, i)
		if i > 0 {
			s.damaged = append([][2]int{{0, i}}, s.damaged...)
		}
		return s, nil
	}
	return scan{}, &errUnknownFormat{}
}

func scanV2(data []byte, pos int) scan {
	s := scan{version: Version}
	for pos < len(data) {
		rec, end, head, intact := frameAt(data, pos)
		switch {
		case intact:
			s.records = append(s.records, rec)
			pos = end
			continue
		case head && end > len(data), !head && len(data)-pos < frameHead && isPrefixOfHead(data[pos:]):
			// A sound head whose body the file does not hold, or
			// the start of a head: the last write was cut short.
			s.torn = len(data) - pos
			return s
		}
		// Damaged: skip what a sound head says the frame spans, or
		// up to the next intact frame.
		next := nextFrame(data, pos+1)
		if head && (next < 0 || next >= end) {
			next = end
		}
		if next < 0 {
			next = len(data)
		}
		if allZero(data[pos:next]) && next == len(data) {
			s.torn = next - pos // zeros a crash left past the last write
			return s
		}
		s.damaged = append(s.damaged, [2]int{pos, next})
		pos = next
	}
	return s
}

func scanV1(data []byte, pos int) scan {
	s := scan{version: 1}
	for pos < len(data) {
		rec, end, intact, short := v1RecordAt(data, pos)
		if intact {
			s.records = append(s.records, rec)
			pos = end
			continue
		}
		next := nextV1Record(data, pos+1)
		if next < 0 && short {
			// Version 1 cannot tell a torn tail from a damaged
			// one: a record that runs past the end is taken for
			// a cut write, as version 1 did.
			s.torn = len(data) - pos
			return s
		}
		if next < 0 {
			next = len(data)
		}
		s.damaged = append(s.damaged, [2]int{pos, next})
		pos = next
	}
	return s
}

// isPrefixOfHead reports whether b could be the first bytes of a frame
// head: the marker, or a prefix of it, then anything.
func isPrefixOfHead(b []byte) bool {
	n := min(len(b), len(marker))
	return bytes.Equal(b[:n], marker[:n])
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

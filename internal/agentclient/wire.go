package agentclient

import "errors"

// The protobuf wire format (https://protobuf.dev/programming-guides/encoding/),
// as much of it as the messages here use. Not google.golang.org/protobuf's
// protowire: its error package's init reads the executable to seed a
// random value, a millisecond of every step's start (TestStepClientIsLight).

type (
	fieldNum int32
	wireType int8
)

const (
	varintType  wireType = 0
	fixed64Type wireType = 1
	bytesType   wireType = 2
	fixed32Type wireType = 5
)

var errTruncated = errors.New("truncated or overlong field")

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendTag(b []byte, num fieldNum, typ wireType) []byte {
	return appendVarint(b, uint64(num)<<3|uint64(typ))
}

// appendBytes appends a length-delimited value (bytes, string or an
// encoded message).
func appendBytes[S ~[]byte | ~string](b []byte, v S) []byte {
	return append(appendVarint(b, uint64(len(v))), v...)
}

// consumeVarint returns the varint at the start of b and its length, or
// a negative length when b holds no whole varint of at most 10 bytes.
func consumeVarint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		c := b[i]
		if i == 9 && c > 1 {
			return 0, -1 // more than 64 bits
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, i + 1
		}
	}
	return 0, -1
}

// consumeTag returns the field number and wire type of the tag at the start
// of b and its length, or a negative length.
func consumeTag(b []byte) (fieldNum, wireType, int) {
	v, n := consumeVarint(b)
	// As protowire.DecodeTag: numbers up to 2^31-1, since MessageSet's
	// go past the usual 2^29-1.
	if n < 0 || v>>3 == 0 || v>>3 > 1<<31-1 {
		return 0, 0, -1
	}
	return fieldNum(v >> 3), wireType(v & 7), n
}

// consumeValue returns the value of a field of wire type typ at the start of
// b: for bytesType its content, for varintType the number in x; and its
// length, negative when b does not hold it. Groups (deprecated, never sent
// by the agent) are refused.
func consumeValue(typ wireType, b []byte) (v []byte, x uint64, n int) {
	switch typ {
	case varintType:
		x, n = consumeVarint(b)
		return nil, x, n
	case bytesType:
		l, m := consumeVarint(b)
		if m < 0 || l > uint64(len(b)-m) {
			return nil, 0, -1
		}
		return b[m : m+int(l)], 0, m + int(l)
	case fixed64Type:
		if len(b) < 8 {
			return nil, 0, -1
		}
		return nil, 0, 8
	case fixed32Type:
		if len(b) < 4 {
			return nil, 0, -1
		}
		return nil, 0, 4
	}
	return nil, 0, -1
}

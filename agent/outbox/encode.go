package outbox

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
)

// appendRecord appends rec as JSON to dst: what json.Marshal(rec) writes,
// field for field (replay reads it with json.Unmarshal), without the
// reflection; a record is written for every attestation and rewritten at
// every compaction.
func appendRecord(dst []byte, rec record) []byte {
	dst = append(dst, `{"op":`...)
	dst = appendString(dst, rec.Op)
	if it := rec.Item; it != nil {
		dst = append(dst, `,"item":{"id":`...)
		dst = appendString(dst, it.ID)
		dst = append(dst, `,"bundle":`...)
		dst = appendBytes(dst, it.Bundle)
		dst = append(dst, `,"envelope":`...)
		dst = appendBytes(dst, it.Envelope)
		dst = append(dst, `,"certificate":`...)
		dst = appendBytes(dst, it.Certificate)
		dst = append(dst, `,"created":`...)
		dst = strconv.AppendInt(dst, it.Created, 10)
		dst = append(dst, '}')
	}
	if rec.ID != "" {
		dst = append(dst, `,"id":`...)
		dst = appendString(dst, rec.ID)
	}
	if len(rec.Logged) > 0 {
		dst = append(dst, `,"tlog":`...)
		dst = appendBytes(dst, rec.Logged)
	}
	if rec.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, rec.Reason)
	}
	if rec.At != 0 {
		dst = append(dst, `,"at":`...)
		dst = strconv.AppendInt(dst, rec.At, 10)
	}
	return append(dst, '}')
}

// appendBytes is a []byte as encoding/json writes it: null when nil,
// otherwise standard base64 in a string.
func appendBytes(dst, b []byte) []byte {
	if b == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}

// appendString is s as a JSON string. Printable ASCII other than '"' and
// '\' stands for itself; anything else takes encoding/json's way
// (escapes, invalid UTF-8 replaced).
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // a string always marshals
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

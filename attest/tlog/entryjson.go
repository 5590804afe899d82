package tlog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"

	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
)

// MarshalEntry writes a TransparencyLogEntry as the JSON of a Sigstore
// bundle's tlogEntries[] element. It is protojson's encoding (64-bit
// integers as strings, bytes as standard base64, camelCase names) with
// the members that proto3 JSON may leave out when they are zero written
// anyway where strict parsers require them: logIndex (0 for the first
// entry) and inclusionProof's logIndex and hashes (an empty list for a
// tree of one). integratedTime is left out when zero, as Rekor v2 leaves
// it.
func MarshalEntry(e *rekorpb.TransparencyLogEntry) ([]byte, error) {
	if e == nil {
		return nil, errors.New("tlog: nil log entry")
	}
	enc := base64.StdEncoding
	b := make([]byte, 0, 512+enc.EncodedLen(len(e.GetCanonicalizedBody()))+len(e.GetInclusionProof().GetCheckpoint().GetEnvelope()))
	b = append(b, `{"logIndex":"`...)
	b = strconv.AppendInt(b, e.GetLogIndex(), 10)
	b = append(b, '"')
	if id := e.GetLogId(); id != nil {
		b = append(b, `,"logId":{"keyId":"`...)
		b = enc.AppendEncode(b, id.GetKeyId())
		b = append(b, `"}`...)
	}
	if kv := e.GetKindVersion(); kv != nil {
		b = append(b, `,"kindVersion":{"kind":`...)
		b = appendJSONString(b, kv.GetKind())
		b = append(b, `,"version":`...)
		b = appendJSONString(b, kv.GetVersion())
		b = append(b, '}')
	}
	if t := e.GetIntegratedTime(); t != 0 {
		b = append(b, `,"integratedTime":"`...)
		b = strconv.AppendInt(b, t, 10)
		b = append(b, '"')
	}
	if p := e.GetInclusionPromise(); p != nil {
		b = append(b, `,"inclusionPromise":{"signedEntryTimestamp":"`...)
		b = enc.AppendEncode(b, p.GetSignedEntryTimestamp())
		b = append(b, `"}`...)
	}
	if p := e.GetInclusionProof(); p != nil {
		b = append(b, `,"inclusionProof":{"logIndex":"`...)
		b = strconv.AppendInt(b, p.GetLogIndex(), 10)
		b = append(b, `","rootHash":"`...)
		b = enc.AppendEncode(b, p.GetRootHash())
		b = append(b, `","treeSize":"`...)
		b = strconv.AppendInt(b, p.GetTreeSize(), 10)
		b = append(b, `","hashes":[`...)
		for i, h := range p.GetHashes() {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = enc.AppendEncode(b, h)
			b = append(b, '"')
		}
		b = append(b, ']')
		if cp := p.GetCheckpoint(); cp != nil {
			b = append(b, `,"checkpoint":{"envelope":`...)
			b = appendJSONString(b, cp.GetEnvelope())
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	if body := e.GetCanonicalizedBody(); len(body) > 0 {
		b = append(b, `,"canonicalizedBody":"`...)
		b = enc.AppendEncode(b, body)
		b = append(b, '"')
	}
	return append(b, '}'), nil
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

package attest

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"google.golang.org/protobuf/encoding/protojson"
)

// The DSSE envelope as [Sign] writes it inside a bundle: a payload, the
// in-toto payload type and one signature without a key ID, members in
// declaration order, no spaces.
const (
	envelopeHead = `{"payload":"`
	envelopeMid  = `","payloadType":"` + PayloadType + `","signatures":[{"sig":"`
	envelopeTail = `"}]}`
)

// BundleEnvelope returns the DSSE envelope of a bundle as JSON, as an
// agent submits it to the log. A bundle [Sign] wrote (with or without a
// timestamp) ends with its envelope, already in the form
// [UnmarshalEnvelope] reads directly: that is returned, a slice of
// bundleJSON. Any other bundle goes through protojson.
func BundleEnvelope(bundleJSON []byte) ([]byte, error) {
	const member = `,"dsseEnvelope":`
	if i := bytes.LastIndex(bundleJSON, []byte(member+envelopeHead)); i > 0 && bytes.HasSuffix(bundleJSON, []byte(envelopeTail+"}")) {
		env := bundleJSON[i+len(member) : len(bundleJSON)-1]
		if _, _, ok := cutEnvelope(env); ok {
			return env, nil
		}
	}
	var b bundlepb.Bundle
	if err := protojson.Unmarshal(bundleJSON, &b); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if b.GetDsseEnvelope() == nil {
		return nil, errors.New("bundle has no DSSE envelope")
	}
	return protojson.Marshal(b.GetDsseEnvelope())
}

// UnmarshalEnvelope decodes DSSE envelope JSON as protojson.Unmarshal
// does, returning what it returns. The envelope [Sign] writes, which is
// what an agent submits to the log, is read directly; any other input
// goes through protojson.
func UnmarshalEnvelope(data []byte) (*dssepb.Envelope, error) {
	if env, ok := envelopeFast(data); ok {
		return env, nil
	}
	env := &dssepb.Envelope{}
	if err := protojson.Unmarshal(data, env); err != nil {
		return nil, err
	}
	return env, nil
}

// envelopeFast decodes data when it has exactly the form of envelopeHead,
// standard padded base64, envelopeMid, standard padded base64 and
// envelopeTail. protojson decodes such a string with
// base64.StdEncoding too (it switches to the URL alphabet only on '-' or
// '_', and drops padding only when the length is not a multiple of 4), so
// the result is the same (FuzzUnmarshalEnvelope).
func envelopeFast(data []byte) (*dssepb.Envelope, bool) {
	payload, sig, ok := cutEnvelope(data)
	if !ok {
		return nil, false
	}
	env := &dssepb.Envelope{PayloadType: PayloadType, Signatures: []*dssepb.Signature{{}}}
	var err error
	if env.Payload, err = base64.StdEncoding.AppendDecode(nil, payload); err != nil {
		return nil, false
	}
	if env.Signatures[0].Sig, err = base64.StdEncoding.AppendDecode(nil, sig); err != nil {
		return nil, false
	}
	return env, true
}

// cutBase64 splits b before its first byte outside the standard base64
// alphabet and its padding, which must be the string's closing quote, and
// requires a length that is a multiple of 4.
func cutBase64(b []byte) (enc, rest []byte, ok bool) {
	i := 0
	for i < len(b) && isStdBase64(b[i]) {
		i++
	}
	if i == len(b) || b[i] != '"' || i%4 != 0 {
		return nil, nil, false
	}
	return b[:i], b[i:], true
}

func isStdBase64(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '='
}

// cutEnvelope splits data of the form envelopeHead, base64, envelopeMid,
// base64, envelopeTail into its two base64 strings.
func cutEnvelope(data []byte) (payload, sig []byte, ok bool) {
	rest, ok := bytes.CutPrefix(data, []byte(envelopeHead))
	if !ok {
		return nil, nil, false
	}
	if payload, rest, ok = cutBase64(rest); !ok {
		return nil, nil, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(envelopeMid)); !ok {
		return nil, nil, false
	}
	if sig, rest, ok = cutBase64(rest); !ok || string(rest) != envelopeTail {
		return nil, nil, false
	}
	return payload, sig, true
}

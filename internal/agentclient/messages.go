package agentclient

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"
)

// The messages of hallmark.agent.v1.WorkloadService that a step uses,
// encoded by hand (wire.go; proto/hallmark/agent/v1/workload.proto
// is the schema; TestMessagesMatchTheSchema checks both directions against
// the generated types).

// AttestStepRequest is hallmark.agent.v1.AttestStepRequest.
type AttestStepRequest struct {
	Step         string
	Workspace    string
	Products     []string
	Materials    []string
	StartedOn    time.Time // zero: not sent
	Command      []string
	CallerClaims map[string]string
}

// Subject is hallmark.agent.v1.Subject: an attested product.
type Subject struct {
	Name   string
	SHA256 string // lowercase hex
}

// AttestStepResponse is hallmark.agent.v1.AttestStepResponse.
type AttestStepResponse struct {
	Bundle       []byte
	InvocationID string
	Subjects     []Subject
	Logged       bool
}

// Progress is hallmark.agent.v1.AttestProgress: how far hashing got.
type Progress struct {
	FilesDone, FilesTotal int64
	BytesDone, BytesTotal int64
}

// GetBundleResponse is hallmark.agent.v1.GetBundleResponse.
type GetBundleResponse struct {
	Bundle []byte
	Logged bool
}

// marshal encodes r. Like the generated code, it refuses a string field
// that is not valid UTF-8 (proto3 strings must be): the agent's decoder
// would refuse it anyway, after the request was sent.
func (r *AttestStepRequest) marshal() ([]byte, error) {
	for _, f := range []struct {
		name string
		v    []string
	}{
		{"step", []string{r.Step}}, {"workspace", []string{r.Workspace}}, {"products", r.Products},
		{"materials", r.Materials}, {"command", r.Command},
	} {
		if err := validUTF8("AttestStepRequest."+f.name, f.v...); err != nil {
			return nil, err
		}
	}
	for k, v := range r.CallerClaims {
		if err := validUTF8("AttestStepRequest.caller_claims", k, v); err != nil {
			return nil, err
		}
	}
	var b []byte
	b = appendString(b, 1, r.Step)
	b = appendString(b, 2, r.Workspace)
	for _, p := range r.Products {
		b = appendTag(b, 3, bytesType)
		b = appendBytes(b, p)
	}
	for _, m := range r.Materials {
		b = appendTag(b, 4, bytesType)
		b = appendBytes(b, m)
	}
	if !r.StartedOn.IsZero() {
		// google.protobuf.Timestamp: seconds = 1, nanos = 2.
		var ts []byte
		if s := r.StartedOn.Unix(); s != 0 {
			ts = appendTag(ts, 1, varintType)
			ts = appendVarint(ts, uint64(s))
		}
		if n := r.StartedOn.Nanosecond(); n != 0 {
			ts = appendTag(ts, 2, varintType)
			ts = appendVarint(ts, uint64(n))
		}
		b = appendTag(b, 5, bytesType)
		b = appendBytes(b, ts)
	}
	for _, c := range r.Command {
		b = appendTag(b, 6, bytesType)
		b = appendBytes(b, c)
	}
	// A map is a repeated entry message (key = 1, value = 2), sorted
	// here so that a request encodes the same every time.
	keys := make([]string, 0, len(r.CallerClaims))
	for k := range r.CallerClaims {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		var e []byte
		e = appendString(e, 1, k)
		e = appendString(e, 2, r.CallerClaims[k])
		b = appendTag(b, 7, bytesType)
		b = appendBytes(b, e)
	}
	return b, nil
}

func marshalGetBundle(invocationID string, wait bool) ([]byte, error) {
	if err := validUTF8("GetBundleRequest.invocation_id", invocationID); err != nil {
		return nil, err
	}
	b := appendString(nil, 1, invocationID)
	if wait {
		b = appendTag(b, 2, varintType)
		b = appendVarint(b, 1)
	}
	return b, nil
}

// validUTF8 fails, as grpc-go's client does, when a value of field is not
// valid UTF-8.
func validUTF8(field string, vs ...string) error {
	for _, v := range vs {
		if !utf8.ValidString(v) {
			return &Error{Code: Internal, Message: "grpc: error while marshaling: proto: field hallmark.agent.v1." + field + " contains invalid UTF-8"}
		}
	}
	return nil
}

// appendString appends a singular string field, omitted when empty as
// proto3 does.
func appendString(b []byte, num fieldNum, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, num, bytesType)
	return appendBytes(b, s)
}

var errMalformed = errors.New("malformed message")

// fields calls f with each field of the encoded message b; for a field of
// the bytes wire type, v is its content; for a varint, x is its value.
// Unknown fields are f's to skip. It fails on a malformed message.
func fields(b []byte, f func(num fieldNum, typ wireType, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: bad tag", errMalformed)
		}
		b = b[n:]
		v, x, n := consumeValue(typ, b)
		if n < 0 {
			return fmt.Errorf("%w: field %d: %v", errMalformed, num, errTruncated)
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// want checks that a known field has the wire type its schema gives.
func want(num fieldNum, typ, w wireType) error {
	if typ != w {
		return fmt.Errorf("%w: field %d has wire type %d, want %d", errMalformed, num, typ, w)
	}
	return nil
}

func (r *AttestStepResponse) unmarshal(b []byte) error {
	*r = AttestStepResponse{}
	return fields(b, func(num fieldNum, typ wireType, v []byte, x uint64) error {
		switch num {
		case 1:
			r.Bundle = v
			return want(num, typ, bytesType)
		case 2:
			r.InvocationID = string(v)
			return want(num, typ, bytesType)
		case 3:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			var s Subject
			if err := fields(v, func(num fieldNum, typ wireType, v []byte, _ uint64) error {
				switch num {
				case 1:
					s.Name = string(v)
					return want(num, typ, bytesType)
				case 2:
					s.SHA256 = string(v)
					return want(num, typ, bytesType)
				}
				return nil
			}); err != nil {
				return err
			}
			r.Subjects = append(r.Subjects, s)
		case 4:
			r.Logged = x != 0
			return want(num, typ, varintType)
		}
		return nil
	})
}

func (p *Progress) unmarshal(b []byte) error {
	*p = Progress{}
	return fields(b, func(num fieldNum, typ wireType, _ []byte, x uint64) error {
		var dst *int64
		switch num {
		case 1:
			dst = &p.FilesDone
		case 2:
			dst = &p.FilesTotal
		case 3:
			dst = &p.BytesDone
		case 4:
			dst = &p.BytesTotal
		default:
			return nil
		}
		*dst = int64(x)
		return want(num, typ, varintType)
	})
}

// unmarshalStreamEvent decodes an AttestStepStreamResponse: a progress
// report or the result (the last event of a oneof wins, as in proto3).
func unmarshalStreamEvent(b []byte) (*Progress, *AttestStepResponse, error) {
	var (
		p   *Progress
		res *AttestStepResponse
	)
	err := fields(b, func(num fieldNum, typ wireType, v []byte, _ uint64) error {
		switch num {
		case 1:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			p, res = new(Progress), nil
			return p.unmarshal(v)
		case 2:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			p, res = nil, new(AttestStepResponse)
			return res.unmarshal(v)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return p, res, nil
}

func (r *GetBundleResponse) unmarshal(b []byte) error {
	*r = GetBundleResponse{}
	return fields(b, func(num fieldNum, typ wireType, v []byte, x uint64) error {
		switch num {
		case 1:
			r.Bundle = v
			return want(num, typ, bytesType)
		case 2:
			r.Logged = x != 0
			return want(num, typ, varintType)
		}
		return nil
	})
}

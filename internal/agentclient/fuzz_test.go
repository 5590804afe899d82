package agentclient

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"reflect"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// FuzzAnswer: whatever the socket answers after an HTTP/2 greeting, a
// call returns (a result or an error) and never panics or hangs.
func FuzzAnswer(f *testing.F) {
	settings := "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
	// HEADERS (stream 1, END_HEADERS) with :status 200 and content-type
	// application/grpc from HPACK's static table... and a literal.
	headers := "\x00\x00\x1a\x01\x04\x00\x00\x00\x01\x88\x5f\x10application/grpc"
	res, _ := proto.Marshal(&agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Result{Result: &agentv1.AttestStepResponse{InvocationId: "i"}}})
	data := string([]byte{0, 0, byte(5 + len(res)), 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, byte(len(res))}) + string(res)
	trailers := "\x00\x00\x0f\x01\x05\x00\x00\x00\x01\x40\x0bgrpc-status\x010"
	f.Add([]byte(settings + headers + data + trailers))
	f.Add([]byte(settings + headers + trailers))
	f.Add([]byte(settings + "\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping" + headers))
	f.Add([]byte(settings + "\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08"))
	f.Add([]byte(settings + "\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		client, agent := net.Pipe()
		defer client.Close()
		go func() {
			defer agent.Close()
			go io.Copy(io.Discard, agent) //nolint:errcheck // ends with the pipe
			agent.Write(answer)           //nolint:errcheck // the client may be gone
		}()
		c, err := newClient(context.Background(), client)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = c.AttestStepStream(ctx, &AttestStepRequest{Step: "build"}, func(Progress) {})
		if err == nil {
			return
		}
		if CodeOf(err) == DeadlineExceeded {
			// Only an answer that stops short of ending the call may
			// leave it waiting: the pipe stays open after it.
			return
		}
		if _, ok := err.(*Error); !ok {
			t.Fatalf("%T is not an *Error: %v", err, err)
		}
	})
}

// FuzzMessages: the decoders of the agent's answers never panic.
func FuzzMessages(f *testing.F) {
	b, _ := proto.Marshal(&agentv1.AttestStepResponse{Bundle: []byte("x"), InvocationId: "i", Subjects: []*agentv1.Subject{{Name: "n", Sha256: "s"}}, Logged: true})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var r AttestStepResponse
		r.unmarshal(b)          //nolint:errcheck // must not panic
		unmarshalStreamEvent(b) //nolint:errcheck // as above
		var g GetBundleResponse
		g.unmarshal(b) //nolint:errcheck // as above
	})
}

// FuzzWire: the hand-written wire decoding reads what protowire reads,
// field for field, and refuses what it refuses (and groups, which the
// agent never sends); varints round-trip.
func FuzzWire(f *testing.F) {
	b, _ := proto.Marshal(&agentv1.AttestStepResponse{Bundle: []byte("x"), InvocationId: "i", Subjects: []*agentv1.Subject{{Name: "n"}}, Logged: true})
	f.Add(b, uint64(1<<63))
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, x uint64) {
		if v, n := consumeVarint(appendVarint(nil, x)); n != protowire.SizeVarint(x) || v != x {
			t.Fatalf("varint %d: got %d, %d bytes", x, v, n)
		}
		type field struct {
			num protowire.Number
			typ protowire.Type
			v   string
			x   uint64
		}
		var want []field
		wantOK := true
		for rest := b; len(rest) > 0; {
			num, typ, n := protowire.ConsumeTag(rest)
			if n < 0 || typ == protowire.StartGroupType || typ == protowire.EndGroupType {
				wantOK = false
				break
			}
			rest = rest[n:]
			fl := field{num: num, typ: typ}
			switch typ {
			case protowire.BytesType:
				var v []byte
				v, n = protowire.ConsumeBytes(rest)
				fl.v = string(v)
			case protowire.VarintType:
				fl.x, n = protowire.ConsumeVarint(rest)
			default:
				n = protowire.ConsumeFieldValue(num, typ, rest)
			}
			if n < 0 {
				wantOK = false
				break
			}
			rest = rest[n:]
			want = append(want, fl)
		}
		var got []field
		err := fields(b, func(num fieldNum, typ wireType, v []byte, x uint64) error {
			got = append(got, field{num: protowire.Number(num), typ: protowire.Type(typ), v: string(v), x: x})
			return nil
		})
		if (err == nil) != wantOK {
			t.Fatalf("fields: %v; protowire ok: %v", err, wantOK)
		}
		if wantOK && !reflect.DeepEqual(got, want) {
			t.Fatalf("fields read %v, protowire %v", got, want)
		}
	})
}

// FuzzParseRefusal: whatever the socket sends first, ParseRefusal does not
// panic, and it takes for a refusal only what golang.org/x/net/http2 reads
// as a GOAWAY on stream 0 that serves no stream, its reason the frame's
// debug data shown safely.
func FuzzParseRefusal(f *testing.F) {
	for _, code := range []http2.ErrCode{http2.ErrCodeEnhanceYourCalm, http2.ErrCodeInadequateSecurity, http2.ErrCodeNo} {
		var b bytes.Buffer
		http2.NewFramer(&b, nil).WriteGoAway(0, code, []byte("hallmark-agent: why")) //nolint:errcheck // to a bytes.Buffer
		f.Add(b.Bytes())
	}
	var b bytes.Buffer
	http2.NewFramer(&b, nil).WriteSettings() //nolint:errcheck // as above
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		why, final, ok := ParseRefusal(b)
		if !ok {
			return
		}
		fr, err := http2.NewFramer(nil, bytes.NewReader(b)).ReadFrame()
		if err != nil {
			t.Fatalf("ParseRefusal took %x for a refusal; http2 reads: %v", b, err)
		}
		g, isGoAway := fr.(*http2.GoAwayFrame)
		if !isGoAway || g.LastStreamID != 0 {
			t.Fatalf("ParseRefusal took %v for a refusal", fr)
		}
		wantWhy := printable(g.DebugData())
		if wantWhy == "" {
			wantWhy = fmt.Sprintf("GOAWAY, error code %d", g.ErrCode)
		}
		// Final only when a new connection meets it alike (agent/refusal.go).
		wantFinal := g.ErrCode == http2.ErrCodeInadequateSecurity
		if why != wantWhy || final != wantFinal {
			t.Fatalf("ParseRefusal said %q, %v; the frame says %q, %v", why, final, wantWhy, wantFinal)
		}
	})
}

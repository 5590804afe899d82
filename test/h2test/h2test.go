// Package h2test is a raw HTTP/2 client for tests that play a misbehaving
// gRPC caller: one that writes frames by hand (golang.org/x/net/http2's
// Framer and HPACK) and so does whatever it is told, whatever the peer
// announced. It opens streams beyond SETTINGS_MAX_CONCURRENT_STREAMS,
// sends headers over SETTINGS_MAX_HEADER_LIST_SIZE, holds requests half
// sent, and reports what the peer said of each stream: its grpc-status and
// grpc-message, or its RST_STREAM.
//
// The caller connects (a unix socket, or TLS with ALPN "h2") and New
// greets the peer on that connection. Reads are synchronous, each within a
// deadline, and answer the peer's PINGs as they go; nothing reads in the
// background, so frames wait in the connection until a test asks for them.
// Methods fail the test where a broken connection means the test cannot go
// on; TryOpen and ReadEvent return errors instead, for tests of a peer that
// closes the connection.
package h2test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Client is one raw HTTP/2 connection, greeted.
type Client struct {
	// Conn is the connection, for deadlines and Close.
	Conn net.Conn
	// Framer writes and reads frames on Conn, for tests that send what
	// Open does not (CONTINUATION frames, say).
	Framer *http2.Framer
	// MaxConcurrentStreams and MaxHeaderListSize are as the peer's first
	// SETTINGS announced them; 0 where it did not.
	MaxConcurrentStreams uint32
	MaxHeaderListSize    uint32

	scheme, authority string
	pending           []Event // read by AwaitEnd for other streams, not yet taken
}

// Event is what one frame from the peer said of a stream: its HEADERS
// (response headers or trailers, CONTINUATIONs joined), or its RST_STREAM.
type Event struct {
	Stream uint32
	// Status and Message are the grpc-status and grpc-message of HEADERS.
	Status, Message string
	// RST is set when the frame was RST_STREAM, with its code in Reset
	// (zero for HEADERS; NO_ERROR, also zero, is told apart by RST).
	RST   bool
	Reset http2.ErrCode
	// Ended is set when the frame ended the stream: HEADERS with
	// END_STREAM (trailers, or a trailers-only answer), or RST_STREAM.
	Ended bool
}

// New greets the peer on conn, which the caller connected: the client
// preface and an empty SETTINGS, then the peer's SETTINGS, which must be
// its first frame, acknowledged. Every request carries :scheme scheme and
// :authority authority. conn is closed when the test ends.
func New(t testing.TB, conn net.Conn, scheme, authority string) *Client {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	c := &Client{Conn: conn, Framer: http2.NewFramer(conn, conn), scheme: scheme, authority: authority}
	c.Framer.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_, err := conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	require.NoError(t, c.Framer.WriteSettings())
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	f, err := c.Framer.ReadFrame()
	require.NoError(t, err, "the peer's SETTINGS")
	sf, ok := f.(*http2.SettingsFrame)
	require.True(t, ok && !sf.IsAck(), "the peer's first frame is SETTINGS, not %T", f)
	if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); ok {
		c.MaxConcurrentStreams = v
	}
	if v, ok := sf.Value(http2.SettingMaxHeaderListSize); ok {
		c.MaxHeaderListSize = v
	}
	require.NoError(t, c.Framer.WriteSettingsAck())
	require.NoError(t, conn.SetReadDeadline(time.Time{}))
	return c
}

// HeaderBlock is a gRPC call's request headers for method (its full name,
// "/pkg.Service/Method"), and extra ones after them, HPACK encoded on
// their own: each block is encoded afresh, referring to no entry an
// earlier block added to the peer's table.
func (c *Client) HeaderBlock(t testing.TB, method string, extra ...[2]string) []byte {
	t.Helper()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range append([][2]string{
		{":method", "POST"}, {":scheme", c.scheme}, {":path", method}, {":authority", c.authority},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	}, extra...) {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	return hdr.Bytes()
}

// Open starts a call of method on stream id: its headers (and extra ones)
// in one HEADERS frame, then body in DATA frames of at most 16 KiB,
// ending the stream only if end.
func (c *Client) Open(t testing.TB, id uint32, method string, body []byte, end bool, extra ...[2]string) {
	t.Helper()
	require.NoError(t, c.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.HeaderBlock(t, method, extra...), EndHeaders: true}))
	const frame = 16 << 10 // the largest DATA frame before SETTINGS say otherwise
	for len(body) > frame {
		require.NoError(t, c.Framer.WriteData(id, false, body[:frame]))
		body = body[frame:]
	}
	require.NoError(t, c.Framer.WriteData(id, end, body))
}

// TryOpen starts a call with a whole, empty request, as Open does, and
// returns the error of writing it (the peer may have closed the
// connection).
func (c *Client) TryOpen(t testing.TB, id uint32, method string, extra ...[2]string) error {
	t.Helper()
	if err := c.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.HeaderBlock(t, method, extra...), EndHeaders: true}); err != nil {
		return err
	}
	return c.Framer.WriteData(id, true, GRPCPrefix(0))
}

// ReadEvent reads frames until one says something of a stream (HEADERS or
// RST_STREAM), answering PINGs and passing over the rest, by deadline. It
// returns the error of reading (a timeout at the deadline, as a net.Error)
// or of answering a PING. It does not return what AwaitEnd kept.
func (c *Client) ReadEvent(deadline time.Time) (Event, error) {
	if err := c.Conn.SetReadDeadline(deadline); err != nil {
		return Event{}, err
	}
	for {
		f, err := c.Framer.ReadFrame()
		if err != nil {
			return Event{}, err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			ev := Event{Stream: f.StreamID, Ended: f.StreamEnded()}
			for _, hf := range f.Fields {
				switch strings.ToLower(hf.Name) {
				case "grpc-status":
					ev.Status = hf.Value
				case "grpc-message":
					ev.Message = hf.Value
				}
			}
			return ev, nil
		case *http2.RSTStreamFrame:
			return Event{Stream: f.StreamID, RST: true, Reset: f.ErrCode, Ended: true}, nil
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := c.Framer.WritePing(true, f.Data); err != nil {
					return Event{}, err
				}
			}
		}
	}
}

// Next is the next event: the first AwaitEnd kept, or else the next one
// read by deadline; ok is false if none came by then. Any error but the
// deadline's fails the test.
func (c *Client) Next(t testing.TB, deadline time.Time) (ev Event, ok bool) {
	t.Helper()
	if len(c.pending) > 0 {
		ev, c.pending = c.pending[0], c.pending[1:]
		return ev, true
	}
	ev, err := c.ReadEvent(deadline)
	if isTimeout(err) {
		return Event{}, false
	}
	require.NoError(t, err)
	return ev, true
}

// Await takes events, as Next does, until done accepts one, within d,
// and returns that one.
func (c *Client) Await(t testing.TB, d time.Duration, done func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ev, ok := c.Next(t, deadline)
		if !ok {
			t.Fatalf("no such frame within %s", d)
		}
		if done(ev) {
			return ev
		}
	}
}

// AwaitEnd returns how stream id ended (its trailers, or its RST_STREAM),
// within d. What it reads of other streams is kept, in order, for later
// calls of AwaitEnd, Next and Await; what it reads of stream id before its
// end (its response headers) is passed over.
func (c *Client) AwaitEnd(t testing.TB, id uint32, d time.Duration) Event {
	t.Helper()
	for i, ev := range c.pending {
		if ev.Stream == id && ev.Ended {
			// Taken, with what was kept of id before it (its response
			// headers): those are passed over too.
			before := slices.DeleteFunc(slices.Clone(c.pending[:i]), func(e Event) bool { return e.Stream == id })
			c.pending = append(before, c.pending[i+1:]...)
			return ev
		}
	}
	deadline := time.Now().Add(d)
	for {
		ev, err := c.ReadEvent(deadline)
		if isTimeout(err) {
			t.Fatalf("stream %d did not end within %s", id, d)
		}
		require.NoError(t, err, "the peer closed the connection before stream %d ended", id)
		switch {
		case ev.Stream != id:
			c.pending = append(c.pending, ev)
		case ev.Ended:
			return ev
		}
	}
}

// GRPCPrefix is the five bytes gRPC puts before a message of n bytes:
// uncompressed, then the length. GRPCPrefix(0) is a whole, empty message.
func GRPCPrefix(n uint32) []byte {
	p := make([]byte, 5)
	binary.BigEndian.PutUint32(p[1:], n)
	return p
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

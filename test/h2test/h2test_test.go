package h2test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A peer written frame by frame: New records its SETTINGS, AwaitEnd
// returns a stream's end and keeps what it read of other streams for
// Next and later AwaitEnd calls, and reads answer the peer's PING.
func TestClientAgainstScriptedPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	pingAck := make(chan [8]byte, 1)
	peerErr, done := make(chan error, 1), make(chan struct{})
	go func() { peerErr <- scriptedPeer(ln, pingAck, done) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	c := New(t, conn, "http", "peer")
	require.Equal(t, uint32(7), c.MaxConcurrentStreams)
	require.Equal(t, uint32(1234), c.MaxHeaderListSize)

	ev := c.AwaitEnd(t, 1, 10*time.Second)
	require.Equal(t, Event{Stream: 1, Status: "7", Message: "no", Ended: true}, ev)
	next, ok := c.Next(t, time.Now().Add(10*time.Second))
	require.True(t, ok)
	require.Equal(t, Event{Stream: 5, RST: true, Reset: http2.ErrCodeRefusedStream, Ended: true}, next, "kept by AwaitEnd(1), in order")
	require.Equal(t, Event{Stream: 3, Status: "0", Ended: true}, c.AwaitEnd(t, 3, time.Second), "kept by AwaitEnd(1)")
	next, ok = c.Next(t, time.Now().Add(10*time.Second))
	require.True(t, ok)
	require.Equal(t, Event{Stream: 7, Status: "0", Ended: true}, next, "kept by AwaitEnd(1); 3's headers went with its end")
	_, ok = c.Next(t, time.Now().Add(100*time.Millisecond))
	require.False(t, ok, "nothing more from the peer")
	require.Equal(t, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, <-pingAck, "the PING answered")
	close(done)
	require.NoError(t, <-peerErr)
}

// scriptedPeer accepts one connection and, after the preface and
// SETTINGS, says of streams 1, 5, 3 and 7, in that order: 1's response
// headers, a PING, 5 refused, 3's response headers, 3's trailers, 7's
// trailers, 1's trailers. It then reads
// until the client's PING ack, and holds the connection until done.
func scriptedPeer(ln net.Listener, pingAck chan<- [8]byte, done <-chan struct{}) error {
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := io.ReadFull(conn, make([]byte, len(http2.ClientPreface))); err != nil {
		return err
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 7},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 1234}); err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	headers := func(id uint32, end bool, fields ...string) error {
		buf.Reset()
		for i := 0; i < len(fields); i += 2 {
			if err := enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
				return err
			}
		}
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndHeaders: true, EndStream: end})
	}
	for _, step := range []func() error{
		func() error { return headers(1, false, ":status", "200", "content-type", "application/grpc") },
		func() error { return fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}) },
		func() error { return fr.WriteRSTStream(5, http2.ErrCodeRefusedStream) },
		func() error { return headers(3, false, ":status", "200", "content-type", "application/grpc") },
		func() error { return headers(3, true, "grpc-status", "0") },
		func() error { return headers(7, true, "grpc-status", "0") },
		func() error { return headers(1, true, "grpc-status", "7", "grpc-message", "no") },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			pingAck <- p.Data
			<-done
			return nil
		}
	}
}

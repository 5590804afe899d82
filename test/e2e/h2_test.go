package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// h2 is a bare HTTP/2 gRPC client over a connection that outlives the
// process: a caller that exec()s keeps talking on the connection its
// former program image opened, as an attacker would. It never indexes a
// header and asks the agent not to (SETTINGS_HEADER_TABLE_SIZE 0), so that
// a fresh process can go on where another left off.
type h2 struct {
	c  io.ReadWriter
	fr *http2.Framer
}

func newH2(c io.ReadWriter) *h2 {
	h := &h2{c: c, fr: http2.NewFramer(c, c)}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(0, nil)
	return h
}

// greet sends the client preface and SETTINGS and waits for the server's.
func (h *h2) greet() error {
	if _, err := io.WriteString(h.c, http2.ClientPreface); err != nil {
		return err
	}
	if err := h.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}); err != nil {
		return err
	}
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return err
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			return h.fr.WriteSettingsAck()
		}
	}
}

// headers sends the request headers of a gRPC call on stream id, ending
// the stream when end (a call with no message) is set.
func (h *h2) headers(id uint32, method string, end bool) error {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", method}, {":authority", "agent"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1], Sensitive: true}); err != nil {
			return err
		}
	}
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndHeaders: true, EndStream: end})
}

// call makes a unary gRPC call on stream id and returns the response
// message, or the call's status as an error.
func (h *h2) call(id uint32, method string, req, resp proto.Message) error {
	if err := h.headers(id, method, false); err != nil {
		return err
	}
	msg, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	data := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(data[1:], uint32(len(msg)))
	if err := h.fr.WriteData(id, true, append(data, msg...)); err != nil {
		return err
	}
	var body []byte
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := h.fr.WriteSettingsAck(); err != nil {
					return err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := h.fr.WritePing(true, f.Data); err != nil {
					return err
				}
			}
		case *http2.GoAwayFrame:
			return fmt.Errorf("GOAWAY %v", f.ErrCode)
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return fmt.Errorf("RST_STREAM %v", f.ErrCode)
			}
		case *http2.DataFrame:
			if f.StreamID == id {
				body = append(body, f.Data()...)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != id || !f.StreamEnded() {
				continue
			}
			code := -1
			for _, hf := range f.RegularFields() {
				if hf.Name == "grpc-status" {
					code, _ = strconv.Atoi(hf.Value)
				}
			}
			if code == -1 {
				return fmt.Errorf("no grpc-status (HTTP status %s)", f.PseudoValue("status"))
			}
			if code != 0 {
				return fmt.Errorf("code %d: %s", code, grpcMessage(f))
			}
			if len(body) < 5 {
				return errors.New("no response message")
			}
			return proto.Unmarshal(body[5:], resp)
		}
	}
}

func grpcMessage(f *http2.MetaHeadersFrame) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == "grpc-message" {
			return hf.Value
		}
	}
	return ""
}

// dialRaw connects to a unix socket.
func dialRaw(socket string) (*net.UnixConn, error) {
	return net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
}

package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthType is the AuthType of the AuthInfo that Credentials attaches.
const AuthType = "peercred"

// Credentials returns gRPC transport credentials for the local socket.
//
// On a grpc.Server serving a *Listener, the handshake accepts only a *Conn
// and attaches it to every call, for FromContext. On a client it is a
// passthrough with no security of its own, usable only on unix sockets.
// Both sides report PrivacyAndIntegrity, as grpc's local credentials do for
// unix sockets: the bytes never leave the kernel.
func Credentials() credentials.TransportCredentials { return creds{} }

type creds struct{}

// authInfo carries the caller's Conn into gRPC handlers.
type authInfo struct {
	credentials.CommonAuthInfo
	conn *Conn
}

func (authInfo) AuthType() string { return AuthType }

// ServerHandshake accepts a *Conn. When the Conn is watched for exec, it
// also checks what the peer sent before the watch began: an HTTP/2 client
// sends its connection preface and SETTINGS and then waits for the
// server's SETTINGS, which gRPC sends only once this handshake returns. So
// every byte of every request was sent after the watch began, by the
// program image that connected, and any exec since shows in Verify.
func (creds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, ok := raw.(*Conn)
	if !ok {
		return nil, nil, fmt.Errorf("peercred: server handshake: %T is not from a peercred.Listener", raw)
	}
	if c.watch != nil {
		early, err := c.early()
		if err == nil {
			err = http2Greeting(early)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("peercred: server handshake with pid %d: %w", c.info.PID, err)
		}
	}
	return c, authInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		conn:           c,
	}, nil
}

func (creds) ClientHandshake(_ context.Context, _ string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if n := raw.RemoteAddr().Network(); n != "unix" {
		return nil, nil, fmt.Errorf("peercred: client handshake: %s connection, want unix", n)
	}
	return raw, authInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

func (creds) Clone() credentials.TransportCredentials { return creds{} }

// OverrideServerName is a no-op: there are no server names to check.
func (creds) OverrideServerName(string) error { return nil }

// FromContext returns the connection of the caller of a gRPC handler whose
// server uses Credentials, for Peer and Verify.
func FromContext(ctx context.Context) (*Conn, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, false
	}
	ai, ok := p.AuthInfo.(authInfo)
	if !ok || ai.conn == nil {
		return nil, false
	}
	return ai.conn, true
}

// http2Preface opens every HTTP/2 connection (RFC 9113, section 3.4).
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// errEarlyRequest means a client sent more than its greeting before the
// server's.
var errEarlyRequest = errors.New("peercred: request bytes before the server's greeting")

// http2Greeting accepts b if it is (the start of) an HTTP/2 client's
// greeting: the preface, then SETTINGS, WINDOW_UPDATE and PING frames on
// stream 0 (RFC 9113, sections 3.4 and 6). A frame may be cut short at the
// end once its header shows its type.
func http2Greeting(b []byte) error {
	n := min(len(b), len(http2Preface))
	if string(b[:n]) != http2Preface[:n] {
		return fmt.Errorf("%w: not an HTTP/2 preface", errEarlyRequest)
	}
	b = b[n:]
	for len(b) > 0 {
		if len(b) < 9 {
			// Not even the type is known: such a split never happens when
			// a client writes whole frames.
			if len(b) < 4 {
				return fmt.Errorf("%w: a frame header cut short", errEarlyRequest)
			}
		}
		length := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		switch typ := b[3]; typ {
		case 0x4, 0x6, 0x8: // SETTINGS, PING, WINDOW_UPDATE
		default:
			return fmt.Errorf("%w: frame type %#x", errEarlyRequest, typ)
		}
		if len(b) >= 9 && (b[5]&0x7f != 0 || b[6] != 0 || b[7] != 0 || b[8] != 0) {
			return fmt.Errorf("%w: a frame on a stream", errEarlyRequest)
		}
		if len(b) < 9+length {
			return nil // the rest of this frame comes later
		}
		b = b[9+length:]
	}
	return nil
}

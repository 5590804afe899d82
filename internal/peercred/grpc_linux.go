package peercred

import (
	"context"
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

func (creds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, ok := raw.(*Conn)
	if !ok {
		return nil, nil, fmt.Errorf("peercred: server handshake: %T is not from a peercred.Listener", raw)
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

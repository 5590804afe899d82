// Package spiretest is a hand-written fake of a SPIRE server's
// LocalAuthority (X.509) and Bundle APIs on a real unix socket, keeping
// the state the way SPIRE v1.13 does: an active slot, a next slot that is
// prepared or old, and a bundle of roots that prepare appends to, taint
// flags and revoke removes from. Its refusals use SPIRE's codes and
// messages (pkg/server/api/localauthority/v1, sqlstore taint/revoke).
package spiretest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // SPIRE's Subject Key IDs are SHA-1 of the key, as RFC 5280 suggests
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	localauthorityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/localauthority/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Next-slot statuses.
const (
	none     = ""
	prepared = "prepared"
	old      = "old"
)

type root struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	tainted bool
}

type slot struct {
	id       string
	notAfter time.Time
}

// Fake is a SPIRE server's LocalAuthority and Bundle APIs.
type Fake struct {
	localauthorityv1.UnimplementedLocalAuthorityServer
	bundlev1.UnimplementedBundleServer

	// Socket is the path the fake listens on.
	Socket string

	mu         sync.Mutex
	active     slot
	next       slot
	nextStatus string
	roots      []root
	sequence   uint64
	calls      []string
	// FailNext, when set, answers the next mutating call with this error.
	failNext error
}

// Start serves a fake with one active authority on a socket in a short
// temporary directory; it stops when the test ends.
func Start(t testing.TB) *Fake {
	t.Helper()
	dir, err := os.MkdirTemp("", "spt-") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &Fake{Socket: filepath.Join(dir, "api.sock")}
	if f.active, err = f.newRoot(); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("unix", f.Socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	localauthorityv1.RegisterLocalAuthorityServer(srv, f)
	bundlev1.RegisterBundleServer(srv, f)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	return f
}

// newRoot makes a self-signed CA, appends it to the bundle and returns
// its slot.
func (f *Fake) newRoot() (slot, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return slot{}, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return slot{}, err
	}
	skid := sha1.Sum(pub) //nolint:gosec // see import
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}},
		NotBefore: now, NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: skid[:],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return slot{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return slot{}, err
	}
	f.roots = append(f.roots, root{cert: cert, key: key})
	f.sequence++
	return slot{id: fmt.Sprintf("%x", cert.SubjectKeyId), notAfter: cert.NotAfter}, nil
}

// FailNext makes the next mutating call fail with err.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// Calls are the mutating calls that reached the fake, e.g. "taint <id>".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// ActiveID is the active authority's ID.
func (f *Fake) ActiveID() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.active.id
}

// BundleIDs are the IDs of the bundle's roots, "!" appended to tainted ones.
func (f *Fake) BundleIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, r := range f.roots {
		id := fmt.Sprintf("%x", r.cert.SubjectKeyId)
		if r.tainted {
			id += "!"
		}
		ids = append(ids, id)
	}
	return ids
}

func (f *Fake) record(call string) error {
	f.calls = append(f.calls, call)
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	return nil
}

func state(s slot) *localauthorityv1.AuthorityState {
	return &localauthorityv1.AuthorityState{AuthorityId: s.id, ExpiresAt: s.notAfter.Unix(), UpstreamAuthoritySubjectKeyId: s.id}
}

// GetX509AuthorityState implements the LocalAuthority API.
func (f *Fake) GetX509AuthorityState(context.Context, *localauthorityv1.GetX509AuthorityStateRequest) (*localauthorityv1.GetX509AuthorityStateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &localauthorityv1.GetX509AuthorityStateResponse{Active: state(f.active)}
	switch f.nextStatus {
	case prepared:
		resp.Prepared = state(f.next)
	case old:
		resp.Old = state(f.next)
	}
	return resp, nil
}

// PrepareX509Authority implements the LocalAuthority API.
func (f *Fake) PrepareX509Authority(context.Context, *localauthorityv1.PrepareX509AuthorityRequest) (*localauthorityv1.PrepareX509AuthorityResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("prepare"); err != nil {
		return nil, err
	}
	next, err := f.newRoot()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	f.next, f.nextStatus = next, prepared
	return &localauthorityv1.PrepareX509AuthorityResponse{PreparedAuthority: state(f.next)}, nil
}

// ActivateX509Authority implements the LocalAuthority API.
func (f *Fake) ActivateX509Authority(_ context.Context, req *localauthorityv1.ActivateX509AuthorityRequest) (*localauthorityv1.ActivateX509AuthorityResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("activate " + req.GetAuthorityId()); err != nil {
		return nil, err
	}
	switch {
	case req.GetAuthorityId() == "":
		return nil, status.Error(codes.InvalidArgument, "no authority ID provided")
	case req.GetAuthorityId() != f.next.id:
		return nil, status.Error(codes.InvalidArgument, "unexpected authority ID")
	case f.nextStatus != prepared:
		return nil, status.Error(codes.Internal, "only Prepared authorities can be activated")
	}
	f.active, f.next = f.next, f.active
	f.nextStatus = old
	return &localauthorityv1.ActivateX509AuthorityResponse{ActivatedAuthority: state(f.active)}, nil
}

// TaintX509Authority implements the LocalAuthority API.
func (f *Fake) TaintX509Authority(_ context.Context, req *localauthorityv1.TaintX509AuthorityRequest) (*localauthorityv1.TaintX509AuthorityResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := req.GetAuthorityId()
	if err := f.record("taint " + id); err != nil {
		return nil, err
	}
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "no authority ID provided")
	case id == f.active.id:
		return nil, status.Error(codes.InvalidArgument, "unable to taint current local authority")
	case id != f.next.id:
		return nil, status.Error(codes.InvalidArgument, "unexpected authority ID")
	case f.nextStatus != old:
		return nil, status.Error(codes.InvalidArgument, "only Old local authorities can be tainted")
	}
	for i, r := range f.roots {
		if fmt.Sprintf("%x", r.cert.SubjectKeyId) == id {
			if r.tainted {
				return nil, status.Error(codes.InvalidArgument, "root CA is already tainted")
			}
			f.roots[i].tainted = true
			f.sequence++
			return &localauthorityv1.TaintX509AuthorityResponse{TaintedAuthority: state(f.next)}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no ca found with provided subject key ID")
}

// RevokeX509Authority implements the LocalAuthority API.
func (f *Fake) RevokeX509Authority(_ context.Context, req *localauthorityv1.RevokeX509AuthorityRequest) (*localauthorityv1.RevokeX509AuthorityResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := req.GetAuthorityId()
	if err := f.record("revoke " + id); err != nil {
		return nil, err
	}
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "invalid authority ID: no authority ID provided")
	case id == f.active.id:
		return nil, status.Error(codes.InvalidArgument, "invalid authority ID: unable to use current authority")
	case id != f.next.id || f.nextStatus != old:
		return nil, status.Error(codes.InvalidArgument, "invalid authority ID: only Old local authority can be revoked")
	}
	for i, r := range f.roots {
		if fmt.Sprintf("%x", r.cert.SubjectKeyId) == id {
			if !r.tainted {
				return nil, status.Error(codes.InvalidArgument, "it is not possible to revoke an untainted root CA")
			}
			f.roots = append(f.roots[:i], f.roots[i+1:]...)
			f.sequence++
			// SPIRE answers with the ID only.
			return &localauthorityv1.RevokeX509AuthorityResponse{RevokedAuthority: &localauthorityv1.AuthorityState{AuthorityId: id}}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no root CA found with provided subject key ID")
}

// GetBundle implements the Bundle API.
func (f *Fake) GetBundle(context.Context, *bundlev1.GetBundleRequest) (*types.Bundle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := &types.Bundle{TrustDomain: "example.org", SequenceNumber: f.sequence}
	for _, r := range f.roots {
		b.X509Authorities = append(b.X509Authorities, &types.X509Certificate{Asn1: r.cert.Raw, Tainted: r.tainted})
	}
	return b, nil
}

// SVIDServer is a TLS server presenting an X509-SVID signed by one of the
// fake's authorities, like hallmark-server does.
type SVIDServer struct {
	Addr string
	f    *Fake
	mu   sync.Mutex
	cert *tls.Certificate
}

// ServeSVID starts a TLS server on loopback presenting an SVID for id
// from the active authority; it stops when the test ends.
func (f *Fake) ServeSVID(t testing.TB, id string) *SVIDServer {
	t.Helper()
	s := &SVIDServer{f: f}
	if err := s.Reissue(id); err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cert, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	s.Addr = lis.Addr().String()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				conn.(*tls.Conn).Handshake() //nolint:errcheck // the client only reads the certificate
				conn.Close()
			}()
		}
	}()
	return s
}

// Reissue replaces the SVID with one for id from the current active
// authority, as SPIRE does at a rotation.
func (s *SVIDServer) Reissue(id string) error {
	s.f.mu.Lock()
	var ca root
	for _, r := range s.f.roots {
		if fmt.Sprintf("%x", r.cert.SubjectKeyId) == s.f.active.id {
			ca = r
		}
	}
	s.f.mu.Unlock()
	if ca.cert == nil {
		return fmt.Errorf("spiretest: active authority not in the bundle")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	u, err := url.Parse(id)
	if err != nil {
		return err
	}
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return nil
}

package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// MintX509SVIDs mints one X509-SVID per ID, each for a fresh P-256 key,
// through the SPIRE server's SVID API (MintX509SVID on the server API
// socket, where local callers are admins): identities for simulated
// workloads that need no registration entries. ttl 0 is the server's
// default. workers calls run at once (at least 1).
func (s *SPIRE) MintX509SVIDs(ctx context.Context, ids []spiffeid.ID, ttl time.Duration, workers int) ([]*x509svid.SVID, error) {
	conn, err := grpc.NewClient("unix://"+s.ServerSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire server API: %w", err)
	}
	defer conn.Close()
	client := svidv1.NewSVIDClient(conn)
	svids := make([]*x509svid.SVID, len(ids))
	next := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for i := range next {
				svid, err := mintX509SVID(ctx, client, ids[i], ttl)
				if err != nil {
					select {
					case errs <- fmt.Errorf("mint X509-SVID for %s: %w", ids[i], err):
					default:
					}
					continue
				}
				svids[i] = svid
			}
		})
	}
feed:
	for i := range ids {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		case err := <-errs:
			errs <- err
			break feed
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return svids, nil
}

func mintX509SVID(ctx context.Context, client svidv1.SVIDClient, id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, err
	}
	resp, err := client.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr, Ttl: int32(ttl / time.Second)})
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for _, der := range resp.GetSvid().GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in the answer")
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// X509Bundle is the trust domain's X.509 bundle as SPIRE showed it at
// start.
func (s *SPIRE) X509Bundle() (*x509bundle.Bundle, error) {
	return x509bundle.Load(spiffeid.RequireTrustDomainFromString(TrustDomain), s.BundlePath)
}

// StartReplicas starts n hallmark-servers, dir/name-1 to dir/name-n, that
// are replicas of one another: o.Store should name a store they share
// (PostgreSQL), and they share one data directory's keys, the log key, the
// timestamp key and the local key manager's CA, which the first creates
// and the others get a copy of before they start. The server's
// registration entry must exist. On error the replicas started are
// stopped.
func (sp *SPIRE) StartReplicas(ctx context.Context, bin, dir, name string, n int, o ServerOptions) (replicas []*Service, err error) {
	defer func() {
		if err != nil {
			for _, r := range replicas {
				r.Stop() //nolint:errcheck // reporting the start failure
			}
			replicas = nil
		}
	}()
	for i := range n {
		rname := fmt.Sprintf("%s-%d", name, i+1)
		if i > 0 {
			// The first replica created its keys before it became ready.
			if err := copyTree(filepath.Join(replicas[0].Dir, "data"), filepath.Join(dir, rname, "data")); err != nil {
				return replicas, fmt.Errorf("%s: copy the data directory: %w", rname, err)
			}
		}
		ro := o
		ro.ListenAddr = ""
		r, err := sp.StartServer(ctx, bin, dir, rname, ro)
		if err != nil {
			return replicas, err
		}
		replicas = append(replicas, r)
	}
	return replicas, nil
}

// copyTree copies the regular files and directories under src to dst,
// keeping their permissions.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm())
		case info.Mode().IsRegular():
			return copyFile(path, target, info.Mode().Perm())
		default:
			return nil // sockets and the like belong to the running replica
		}
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

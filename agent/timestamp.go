package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/internal/limits"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// An attestation's trusted time is the RFC 3161 timestamp the agent
// obtains from the log's timestamp authority (any server replica) when it
// signs, before it answers the step. The log checks the entry at that
// time however late it arrives (after an outage of any length, after the
// certificate expired), and verifiers take their time from it too. With
// no timestamp the attestation is refused at once: the agent hands out
// nothing it could not make verifiable (docs/log.md, "Late entries").

// timestampTimeout bounds how long an attestation waits for a timestamp
// before it is refused.
const timestampTimeout = 10 * time.Second

// timestampClient is the server call that timestamps signatures; the
// generated serverv1.AgentServiceClient is one.
type timestampClient interface {
	Timestamp(ctx context.Context, in *serverv1.TimestampRequest, opts ...grpc.CallOption) (*serverv1.TimestampResponse, error)
}

// maxTimestampCalls is how many Timestamp calls an agent has in flight
// at most.
const maxTimestampCalls = 4

// timestamper obtains timestamps for signatures. Concurrent requests are
// coalesced: up to maxTimestampCalls calls are in flight, and the
// signatures that arrive while they all are go together in the next, so a
// lone attestation waits for no one and a burst costs a few round trips,
// not one each.
type timestamper struct {
	client atomic.Value // a timestampClient, once the agent is connected

	mu       sync.Mutex
	queue    []*timestampWait
	inflight int // calls (flush loops) running

	auth atomic.Pointer[timestampAuthority] // the last one seen
}

type timestampWait struct {
	sig  []byte
	done chan timestampAnswer // buffered: the flusher never blocks
}

type timestampAnswer struct {
	resp  []byte
	chain [][]byte
	err   error
}

// timestampAuthority is a verifier of one authority's timestamps, keyed
// by the chain the server named.
type timestampAuthority struct {
	chain [][]byte
	auth  *tsa.Authority
}

// setClient makes the timestamper call c.
func (t *timestamper) setClient(c timestampClient) { t.client.Store(&c) }

// timestamp returns a timestamp response over sig and the authority's
// chain (DER, leaf first), or why there is none.
func (t *timestamper) timestamp(ctx context.Context, sig []byte) ([]byte, [][]byte, error) {
	w := &timestampWait{sig: sig, done: make(chan timestampAnswer, 1)}
	t.mu.Lock()
	t.queue = append(t.queue, w)
	if t.inflight < maxTimestampCalls {
		t.inflight++
		go t.flush()
	}
	t.mu.Unlock()
	select {
	case a := <-w.done:
		return a.resp, a.chain, a.err
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// flush sends what is queued, up to limits.MaxTimestampsPerCall per call,
// until nothing is.
func (t *timestamper) flush() {
	for {
		t.mu.Lock()
		n := min(len(t.queue), limits.MaxTimestampsPerCall)
		if n == 0 {
			t.inflight--
			t.mu.Unlock()
			return
		}
		batch := t.queue[:n:n]
		t.queue = t.queue[n:]
		t.mu.Unlock()
		t.call(batch)
	}
}

func (t *timestamper) call(batch []*timestampWait) {
	answer := func(a timestampAnswer) {
		for _, w := range batch {
			w.done <- a
		}
	}
	c, ok := t.client.Load().(*timestampClient)
	if !ok {
		answer(timestampAnswer{err: errors.New("not connected to hallmark-server yet")})
		return
	}
	req := &serverv1.TimestampRequest{Signatures: make([][]byte, len(batch))}
	for i, w := range batch {
		req.Signatures[i] = w.sig
	}
	ctx, cancel := context.WithTimeout(context.Background(), timestampTimeout)
	defer cancel()
	resp, err := (*c).Timestamp(ctx, req)
	if err != nil {
		answer(timestampAnswer{err: err})
		return
	}
	if len(resp.GetTimestamps()) != len(batch) {
		answer(timestampAnswer{err: fmt.Errorf("%d timestamps for %d signatures", len(resp.GetTimestamps()), len(batch))})
		return
	}
	for i, w := range batch {
		w.done <- timestampAnswer{resp: resp.GetTimestamps()[i], chain: resp.GetTsaChain()}
	}
}

// verify checks resp is a timestamp over sig by the authority of chain,
// valid at its genTime, and returns that time.
func (t *timestamper) verify(resp, sig []byte, chain [][]byte) (time.Time, error) {
	a := t.auth.Load()
	if a == nil || !equalChains(a.chain, chain) {
		auth, err := newAuthority(chain)
		if err != nil {
			return time.Time{}, err
		}
		a = &timestampAuthority{chain: chain, auth: auth}
		t.auth.Store(a)
	}
	return a.auth.Verify(resp, sig)
}

func newAuthority(chain [][]byte) (*tsa.Authority, error) {
	if len(chain) == 0 {
		return nil, errors.New("the server named no timestamp authority")
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("timestamp authority certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	return tsa.NewAuthorityFromChain(certs)
}

func equalChains(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// timestampFor is attest.SignOptions.Timestamp for held: a timestamp of
// the signature that the log will take, that is one whose genTime the
// held chain is valid at (the log checks the certificate then), or an
// error.
func (a *Agent) timestampFor(ctx context.Context, held *signingCert) func(sig []byte) ([]byte, error) {
	return func(sig []byte) ([]byte, error) {
		start := time.Now()
		resp, chain, err := a.timestamps.timestamp(ctx, sig)
		a.metrics.timestampSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			a.metrics.timestamps.WithLabelValues(resultError).Inc()
			return nil, &timestampError{fmt.Errorf("no timestamp authority answered: %w", err)}
		}
		gen, err := a.timestamps.verify(resp, sig, chain)
		if err != nil {
			a.metrics.timestamps.WithLabelValues(resultError).Inc()
			return nil, &timestampError{fmt.Errorf("the server's timestamp does not verify: %w", err)}
		}
		nb, na := chainWindow(held.chain)
		if gen.Before(nb) || gen.After(na) {
			a.metrics.timestamps.WithLabelValues(resultError).Inc()
			return nil, &timestampError{fmt.Errorf("the timestamp's time %s is outside the signing certificate's validity (%s to %s): check the clocks of agent and server",
				gen.UTC().Format(time.RFC3339), nb.UTC().Format(time.RFC3339), na.UTC().Format(time.RFC3339))}
		}
		a.metrics.timestamps.WithLabelValues("granted").Inc()
		return resp, nil
	}
}

// timestampError is why an attestation got no timestamp.
type timestampError struct{ err error }

func (e *timestampError) Error() string { return e.err.Error() }
func (e *timestampError) Unwrap() error { return e.err }

// chainWindow is where every certificate of chain is valid.
func chainWindow(chain []*x509.Certificate) (notBefore, notAfter time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(notBefore) {
			notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notBefore, notAfter
}

// timestampOf returns the RFC 3161 timestamp a bundle carries, nil when
// it has none (one signed before timestamps were obtained at signing).
func timestampOf(bundleJSON []byte) ([]byte, error) {
	// Fast path: attest.SignWith writes it right after the certificate.
	const marker = `,"timestampVerificationData":{"rfc3161Timestamps":[{"signedTimestamp":"`
	if i := bytes.Index(bundleJSON, []byte(marker)); i > 0 {
		rest := bundleJSON[i+len(marker):]
		if j := bytes.IndexByte(rest, '"'); j > 0 && bytes.HasPrefix(rest[j:], []byte(`"}]}`)) {
			ts, err := base64.StdEncoding.DecodeString(string(rest[:j]))
			if err == nil {
				return ts, nil
			}
		}
	}
	var b bundlepb.Bundle
	if err := protojson.Unmarshal(bundleJSON, &b); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	tss := b.GetVerificationMaterial().GetTimestampVerificationData().GetRfc3161Timestamps()
	if len(tss) == 0 {
		return nil, nil
	}
	return tss[0].GetSignedTimestamp(), nil
}

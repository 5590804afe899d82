package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// DefaultAuthoritiesRetryUnimplemented is how often the agent asks again
// for the signing-CA stream when the server is too old to offer it.
const DefaultAuthoritiesRetryUnimplemented = 5 * time.Minute

// Log field names of the signing-CA watch.
const (
	logIssuerSHA256 = "issuer_sha256"
	logRevision     = "revision"
	logTainted      = "tainted_issuers"
)

// authorityWatcher is the server call that streams the tainted signing CAs;
// the generated serverv1.AgentServiceClient is one.
type authorityWatcher interface {
	WatchSigningAuthorities(ctx context.Context, in *serverv1.WatchSigningAuthoritiesRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[serverv1.SigningAuthorities], error)
}

// taintSet is the server's last word on which signing CAs are tainted.
type taintSet struct {
	revision uint64
	// issuers are the tainted CAs, by SHA-256 of the CA certificate's DER,
	// each with when this agent first heard of its taint.
	issuers map[[sha256.Size]byte]time.Time
}

// issuerSHA256 is the fingerprint of the CA certificate that issued c (the
// one after the leaf); ok is false when c has none.
func issuerSHA256(c *signingCert) (fp [sha256.Size]byte, ok bool) {
	if c == nil || len(c.chain) < 2 || c.chain[1] == nil || len(c.chain[1].Raw) == 0 {
		return fp, false
	}
	return sha256.Sum256(c.chain[1].Raw), true
}

// taintedIssuer reports whether the server has named the CA that issued c
// as tainted, and its fingerprint.
func (a *Agent) taintedIssuer(c *signingCert) (fp [sha256.Size]byte, tainted bool) {
	fp, _, tainted = a.taintedSince(c)
	return fp, tainted
}

// taintedSince is taintedIssuer with when this agent first heard of the
// taint.
func (a *Agent) taintedSince(c *signingCert) (fp [sha256.Size]byte, since time.Time, tainted bool) {
	fp, ok := issuerSHA256(c)
	if !ok {
		return fp, since, false
	}
	set := a.tainted.Load()
	if set == nil {
		return fp, since, false
	}
	since, tainted = set.issuers[fp]
	return fp, since, tainted
}

// nudgeRenewal wakes the renew loop to look at the held certificate again.
func (a *Agent) nudgeRenewal() {
	select {
	case a.renewNudge <- struct{}{}:
	default:
	}
}

// watchAuthorities follows the server's tainted signing CAs until ctx
// ends: it keeps a stream open, reconnecting with jittered backoff when it
// breaks, and wakes the renew loop when the held certificate's CA is named.
// A server too old to offer the stream is asked again every
// authoritiesRetryUnimplemented; the agent works on without it.
func (a *Agent) watchAuthorities(ctx context.Context, client authorityWatcher) error {
	b := newBackoff(a.backoffBase, a.backoffMax)
	toldUnimplemented := false
	for {
		received, err := a.followAuthorities(ctx, client)
		a.metrics.authoritiesWatch.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if received {
			b.reset()
		}
		var retry time.Duration
		if status.Code(err) == codes.Unimplemented {
			retry = a.authoritiesRetryUnimplemented
			if !toldUnimplemented {
				toldUnimplemented = true
				a.log.Info("The server does not stream tainted signing CAs (it predates them): the agent renews on its usual schedule only",
					zap.Duration(logRetryIn, retry))
			}
		} else {
			toldUnimplemented = false
			retry = b.delay()
			if received {
				// A healthy stream cut by the server or the connection's
				// age: routine, and the next stream starts with the
				// whole set again.
				a.log.Info("Signing-CA watch ended; reconnecting", zap.Error(err), zap.Duration(logRetryIn, retry))
			} else {
				a.log.Warn("Signing-CA watch failed; retrying", zap.Error(err), zap.Duration(logRetryIn, retry))
			}
		}
		if err := sleepUntil(ctx, a.cfg.Now, a.cfg.Now().Add(retry)); err != nil {
			return nil
		}
	}
}

// followAuthorities reads one stream until it ends, applying each update.
// received says whether the server sent anything, so the caller knows the
// connection was healthy.
func (a *Agent) followAuthorities(ctx context.Context, client authorityWatcher) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Waiting for the connection to be ready, rather than failing while
	// gRPC reconnects, keeps a server restart from costing a backoff round.
	stream, err := client.WatchSigningAuthorities(ctx, &serverv1.WatchSigningAuthoritiesRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return false, fmt.Errorf("watch signing authorities: %w", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the server ended the stream")
			}
			return received, fmt.Errorf("watch signing authorities: %w", err)
		}
		if !received {
			received = true
			a.metrics.authoritiesWatch.Set(1)
		}
		a.applyAuthorities(msg)
	}
}

// applyAuthorities records the server's tainted set and, when it names the
// CA of the held certificate, wakes the renew loop to replace it. Signing
// goes on with the held certificate until its successor is installed.
func (a *Agent) applyAuthorities(msg *serverv1.SigningAuthorities) {
	set := &taintSet{revision: msg.GetRevision(), issuers: make(map[[sha256.Size]byte]time.Time, len(msg.GetTaintedIssuers()))}
	prev := a.tainted.Load()
	now := a.cfg.Now()
	for _, fp := range msg.GetTaintedIssuers() {
		if len(fp) != sha256.Size {
			a.log.Warn("Ignoring a tainted signing CA fingerprint that is not SHA-256",
				zap.Uint64(logRevision, msg.GetRevision()), zap.String(logIssuerSHA256, hex.EncodeToString(fp)))
			continue
		}
		since := now
		if prev != nil {
			if t, ok := prev.issuers[[sha256.Size]byte(fp)]; ok {
				since = t
			}
		}
		set.issuers[[sha256.Size]byte(fp)] = since
	}
	a.tainted.Store(set)
	if prev == nil || prev.revision != set.revision {
		a.log.Info("Tainted signing CAs updated", zap.Uint64(logRevision, set.revision), zap.Int(logTainted, len(set.issuers)))
	}
	fp, tainted := a.taintedIssuer(a.keys.cur.Load())
	if !tainted {
		return
	}
	a.log.Info("The server tainted the CA of the signing certificate: renewing now",
		zap.String(logIssuerSHA256, hex.EncodeToString(fp[:])), zap.Uint64(logRevision, set.revision))
	a.nudgeRenewal()
}

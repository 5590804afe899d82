package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// DefaultLogBatchSize is the most envelopes sent in one SubmitEntries call.
const DefaultLogBatchSize = 256

// entrySubmitter is the server call that appends envelopes to the log.
type entrySubmitter interface {
	SubmitEntries(ctx context.Context, in *serverv1.SubmitEntriesRequest, opts ...grpc.CallOption) (*serverv1.SubmitEntriesResponse, error)
}

// nudgeSubmitter wakes the submitter after a new envelope is queued.
func (a *Agent) nudgeSubmitter() {
	select {
	case a.submitNudge <- struct{}{}:
	default:
	}
}

// submitLoop drains the outbox into the server's log, in batches, until
// ctx ends. A failed call is retried with backoff, promptly while another
// replica is connected (failoverBackoff); the server deduplicates,
// so a batch sent twice (a crash between its answer and our record of it)
// is logged once.
func (a *Agent) submitLoop(ctx context.Context, client entrySubmitter) error {
	b := a.newFailoverBackoff()
	for {
		if a.outbox.Len() == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-a.submitNudge:
			case <-time.After(time.Second):
			}
			continue
		}
		if err := a.submitOnce(ctx, client); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			retry := b.delay(err)
			a.log.Warn("Log submission failed; envelopes stay queued on disk",
				zap.Error(err), zap.Int("queued", a.outbox.Len()), zap.Duration(logRetryIn, retry))
			if err := sleepUntil(ctx, a.cfg.Now, a.cfg.Now().Add(retry)); err != nil {
				return nil
			}
			continue
		}
		b.reset()
	}
}

func (a *Agent) submitOnce(ctx context.Context, client entrySubmitter) error {
	items := a.outbox.Pending(a.cfg.LogBatchSize)
	req := &serverv1.SubmitEntriesRequest{}
	for _, it := range items {
		env := it.Envelope
		if len(env) == 0 { // queued with the bundle only: take it from there
			var err error
			if env, err = envelopeOf(it.Bundle); err != nil {
				return fmt.Errorf("queued attestation %s: %w", it.ID, err)
			}
		}
		req.Entries = append(req.Entries, &serverv1.LogSubmission{Envelope: env, Certificate: it.Certificate})
	}
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := client.SubmitEntries(callCtx, req)
	a.recordCall(err)
	if err != nil {
		a.metrics.logSubmissions.WithLabelValues(resultError).Add(float64(len(items)))
		return fmt.Errorf("submit entries: %w", err)
	}
	if len(resp.GetResults()) != len(items) {
		return fmt.Errorf("submit entries: %d results for %d entries", len(resp.GetResults()), len(items))
	}
	settled := make([]outbox.Settlement, 0, len(items))
	for i, res := range resp.GetResults() {
		it := items[i]
		if res.GetError() != "" {
			a.metrics.logSubmissions.WithLabelValues(resultDenied).Inc()
			a.log.Error("The log refused an attestation; it will not be retried",
				zap.String(logInvocationID, it.ID), zap.String(logReason, res.GetError()))
			settled = append(settled, outbox.Settlement{ID: it.ID, Reason: res.GetError()})
			continue
		}
		logged, err := loggedMaterial(res.GetTlogEntry(), res.GetSignedTimestamp())
		if err != nil {
			return fmt.Errorf("server answer for %s: %w", it.ID, err)
		}
		settled = append(settled, outbox.Settlement{ID: it.ID, Logged: logged})
		a.metrics.logSubmissions.WithLabelValues("logged").Inc()
	}
	if err := a.outbox.Settle(settled); err != nil {
		return err
	}
	a.metrics.outboxQueued.Set(float64(a.outbox.Len()))
	return nil
}

// loggedMaterial is what logging adds to a bundle: the log entry and the
// RFC 3161 timestamp of the signature, as the protojson of a
// VerificationMaterial holding only those two (withLogged merges it).
// The entry is checked to be a TransparencyLogEntry, then spliced in as
// the server sent it: re-encoding it would cost more than the check.
func loggedMaterial(tlogJSON, timestamp []byte) ([]byte, error) {
	var e rekorpb.TransparencyLogEntry
	if err := protojson.Unmarshal(tlogJSON, &e); err != nil {
		return nil, fmt.Errorf("log entry: %w", err)
	}
	if len(timestamp) == 0 {
		return nil, errors.New("no signed timestamp for the log entry")
	}
	const (
		head = `{"tlogEntries":[`
		mid  = `],"timestampVerificationData":{"rfc3161Timestamps":[{"signedTimestamp":"`
		tail = `"}]}}`
	)
	tlog := bytes.TrimSpace(tlogJSON)
	out := make([]byte, 0, len(head)+len(tlog)+len(mid)+base64.StdEncoding.EncodedLen(len(timestamp))+len(tail))
	out = append(out, head...)
	out = append(out, tlog...)
	out = append(out, mid...)
	out = base64.StdEncoding.AppendEncode(out, timestamp)
	return append(out, tail...), nil
}

// withLogged returns bundleJSON with what logging added (loggedMaterial)
// merged into its verification material.
func withLogged(bundleJSON, logged []byte) ([]byte, error) {
	var b bundlepb.Bundle
	if err := protojson.Unmarshal(bundleJSON, &b); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var m bundlepb.VerificationMaterial
	if err := protojson.Unmarshal(logged, &m); err != nil {
		return nil, fmt.Errorf("log entry: %w", err)
	}
	if b.GetVerificationMaterial() == nil {
		return nil, fmt.Errorf("bundle has no verification material")
	}
	b.VerificationMaterial.TlogEntries = m.TlogEntries
	b.VerificationMaterial.TimestampVerificationData = m.TimestampVerificationData
	return attest.MarshalBundle(&b) // with the members strict parsers require
}

// bundleOf returns an outbox item's bundle, complete when it is logged.
func bundleOf(it outbox.Item) ([]byte, bool, error) {
	if it.State != outbox.Logged {
		return it.Bundle, false, nil
	}
	b, err := withLogged(it.Bundle, it.Logged)
	return b, err == nil, err
}

// envelopeOf returns the DSSE envelope of a bundle, as protojson.
func envelopeOf(bundleJSON []byte) ([]byte, error) {
	// Fast path: attest.Sign writes the envelope last, as the bundle's
	// final member, in protojson form already.
	const marker = `,"dsseEnvelope":{"payload":"`
	if i := bytes.LastIndex(bundleJSON, []byte(marker)); i > 0 && bytes.HasSuffix(bundleJSON, []byte(`"}]}}`)) {
		return bundleJSON[i+len(`,"dsseEnvelope":`) : len(bundleJSON)-1], nil
	}
	var b bundlepb.Bundle
	if err := protojson.Unmarshal(bundleJSON, &b); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if b.GetDsseEnvelope() == nil {
		return nil, fmt.Errorf("bundle has no DSSE envelope")
	}
	return protojson.Marshal(b.GetDsseEnvelope())
}

package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/agent/outbox"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/limits"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// DefaultLogBatchSize is the most envelopes sent in one SubmitEntries call;
// a call also holds at most limits.MaxCallBytes.
const DefaultLogBatchSize = 256

// DefaultOutboxMaxPendingBytes bounds the attestations an agent queues
// for the log and holds in memory while it is unreachable: 1 GiB, about
// 100,000 attestations of 10 KiB or 60 of the largest.
const DefaultOutboxMaxPendingBytes = 1 << 30

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

// submitOnce sends the oldest queued envelopes in one call, as many as
// LogBatchSize and limits.MaxCallBytes allow, and settles what the log
// said of each. An entry the log can never take is settled as refused,
// so it never holds up the ones behind it: one over the log's limits
// (refused here, unsent), one the log refused, and one alone in a call
// the server refused as a whole for what it is (tooLarge); a larger call
// refused so is sent again in halves.
func (a *Agent) submitOnce(ctx context.Context, client entrySubmitter) error {
	if a.submitCap <= 0 {
		a.submitCap = a.cfg.LogBatchSize
	}
	items := a.outbox.Pending(a.submitCap)
	var (
		req     = &serverv1.SubmitEntriesRequest{}
		sent    []outbox.Item
		settled []outbox.Settlement
		size    int
	)
	for _, it := range items {
		sub, n, reason := submission(it)
		if reason != "" {
			settled = append(settled, a.refused(it, reason))
			continue
		}
		if len(sent) > 0 && size+n > limits.MaxCallBytes {
			break
		}
		req.Entries, sent, size = append(req.Entries, sub), append(sent, it), size+n
	}
	if len(sent) == 0 {
		return a.settle(settled)
	}
	callCtx, cancel := context.WithTimeout(ctx, submitTimeout(size))
	defer cancel()
	resp, err := client.SubmitEntries(callCtx, req)
	a.recordCall(err)
	if err != nil {
		if tooLarge(err) {
			// The server will never take this call as it is.
			if len(sent) > 1 {
				a.submitCap = (len(sent) + 1) / 2
				a.log.Warn("The log refused a submission as a whole; sending it again in smaller calls",
					zap.Error(err), zap.Int("entries", len(sent)), zap.Int("bytes", size))
				return a.settle(settled)
			}
			settled = append(settled, a.refused(sent[0], "the server refused the call carrying it: "+status.Convert(err).Message()))
			return a.settle(settled)
		}
		a.metrics.logSubmissions.WithLabelValues(resultError).Add(float64(len(sent)))
		if serr := a.settle(settled); serr != nil {
			return errors.Join(err, serr)
		}
		return fmt.Errorf("submit entries: %w", err)
	}
	a.submitCap = min(a.cfg.LogBatchSize, 2*a.submitCap)
	if len(resp.GetResults()) != len(sent) {
		return fmt.Errorf("submit entries: %d results for %d entries", len(resp.GetResults()), len(sent))
	}
	for i, res := range resp.GetResults() {
		it := sent[i]
		if res.GetError() != "" {
			settled = append(settled, a.refused(it, res.GetError()))
			continue
		}
		logged, err := loggedMaterial(res.GetTlogEntry(), res.GetSignedTimestamp())
		if err != nil {
			return fmt.Errorf("server answer for %s: %w", it.ID, err)
		}
		settled = append(settled, outbox.Settlement{ID: it.ID, Logged: logged})
	}
	return a.settle(settled)
}

// tooLarge reports whether the server refused a call as a whole for what
// it is, so that it would refuse it again: InvalidArgument, or
// ResourceExhausted for its size (gRPC's "received message larger than
// max"). Other ResourceExhausted answers (a quota, a rate limit, a proxy
// shedding load) pass: the call is sent again, unchanged, after a backoff.
func tooLarge(err error) bool {
	s := status.Convert(err)
	switch s.Code() {
	case codes.InvalidArgument:
		return true
	case codes.ResourceExhausted:
		return strings.Contains(s.Message(), "larger than max")
	default:
		return false
	}
}

// submitTimeout bounds a SubmitEntries call of size bytes: the usual call
// timeout, plus a second for every 256 KiB, so that a full call (32 MiB)
// gets through a slow link instead of timing out for good, every time.
func submitTimeout(size int) time.Duration {
	return callTimeout + time.Duration(size)*time.Second/(256<<10)
}

// submission is a queued item as the log takes it, with what it adds to a
// SubmitEntries request; or why the log would never take it.
func submission(it outbox.Item) (sub *serverv1.LogSubmission, size int, refusal string) {
	env := it.Envelope
	if len(env) == 0 { // queued with the bundle only: take it from there
		var err error
		if env, err = attest.BundleEnvelope(it.Bundle); err != nil {
			return nil, 0, "the queued attestation is unreadable: " + err.Error()
		}
	}
	ts, err := timestampOf(it.Bundle)
	if err != nil && len(it.Bundle) > 0 {
		return nil, 0, "the queued attestation is unreadable: " + err.Error()
	}
	switch {
	case len(ts) > limits.MaxTimestampBytes:
		return nil, 0, fmt.Sprintf("its timestamp is %d bytes, more than the log takes (limits.MaxTimestampBytes, %d)", len(ts), limits.MaxTimestampBytes)
	case len(env) > limits.MaxEnvelopeBytes:
		return nil, 0, fmt.Sprintf("its envelope is %d bytes, more than the log takes (limits.MaxEnvelopeBytes, %d)", len(env), limits.MaxEnvelopeBytes)
	case len(it.Certificate) > limits.MaxCertificateBytes:
		return nil, 0, fmt.Sprintf("its certificate is %d bytes, more than the log takes (limits.MaxCertificateBytes, %d)", len(it.Certificate), limits.MaxCertificateBytes)
	}
	size = limits.SubmissionBytes(len(env), len(it.Certificate), len(ts))
	if size > limits.MaxCallBytes {
		return nil, 0, fmt.Sprintf("it is %d bytes to submit, more than one call to the log holds (limits.MaxCallBytes, %d)", size, limits.MaxCallBytes)
	}
	return &serverv1.LogSubmission{Envelope: env, Certificate: it.Certificate, Timestamp: ts}, size, ""
}

// refused reports that the log will never take it (logged; settle counts
// it) and returns its settlement.
func (a *Agent) refused(it outbox.Item, reason string) outbox.Settlement {
	a.log.Error("The log refused an attestation; it will not be retried (see `hallmark status`)",
		zap.String(logInvocationID, it.ID), zap.String(logReason, reason))
	return outbox.Settlement{ID: it.ID, Reason: reason}
}

// settle records settlements and updates the outbox gauges.
//
// Each settlement is counted in hallmark_agent_log_submissions_total once
// it is saved: one whose saving fails is submitted again, and counted then.
func (a *Agent) settle(settled []outbox.Settlement) error {
	if err := a.outbox.Settle(settled); err != nil {
		return err
	}
	for _, st := range settled {
		if st.Reason != "" {
			a.metrics.logSubmissions.WithLabelValues(resultDenied).Inc()
		} else {
			a.metrics.logSubmissions.WithLabelValues("logged").Inc()
		}
	}
	a.metrics.outboxQueued.Set(float64(a.outbox.Len()))
	a.metrics.outboxRefused.Set(float64(a.outbox.RefusedLen()))
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

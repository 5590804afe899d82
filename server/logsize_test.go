package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
	"github.com/hallmark-dev/hallmark/internal/limits"
)

// Must show: the largest envelope the log admits makes, with its
// certificate, timestamp and log entry, a bundle that verifiers read (at
// most limits.MaxBundleBytes), and found through the log search it
// verifies. Before, the log admitted envelopes up to MaxBundleBytes
// itself, and the bundle rebuilt from one just under that was 3,400
// bytes over every verifier's limit (an attacker review).
func TestLargestAdmittedEnvelopeVerifies(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	l := newTestLog(t, ca, nil)

	// A subject name padded until the envelope is within 1 KiB of the
	// limit (its payload is base64: 4 bytes for 3).
	pad := limits.MaxEnvelopeBytes * 3 / 4
	var sub Submission
	for range 4 {
		sub = agent.submit(t, "big", strings.Repeat("x", pad))
		pad += (limits.MaxEnvelopeBytes - 512 - len(sub.Envelope)) * 3 / 4
	}
	require.LessOrEqual(t, len(sub.Envelope), limits.MaxEnvelopeBytes)
	require.Greater(t, len(sub.Envelope), limits.MaxEnvelopeBytes-1024)
	require.NoError(t, submitOne(t, l.TransparencyLog, agentID, sub).Refusal, "at the limit: admitted")

	mux := http.NewServeMux()
	l.registerHTTP(mux, zap.NewNop())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	found, err := (&pipeline.LogSearch{BaseURL: srv.URL}).Find(ctx, digestOf("big"))
	require.NoError(t, err)
	require.Len(t, found, 1)
	require.LessOrEqual(t, len(found[0].Bundle), limits.MaxBundleBytes)
	rootJSON, err := l.TrustedRootJSON(ctx)
	require.NoError(t, err)
	tr, err := verify.ParseTrustedRoot(rootJSON)
	require.NoError(t, err)
	_, err = verify.Verify(found[0].Bundle, []verify.Digest{verify.DigestBytes("big", []byte("big"))}, verify.Options{TrustedRoot: tr})
	require.NoError(t, err)
	t.Logf("envelope %d bytes (limit %d); rebuilt bundle %d bytes (verifiers' limit %d)",
		len(sub.Envelope), limits.MaxEnvelopeBytes, len(found[0].Bundle), limits.MaxBundleBytes)

	over := sub
	over.Envelope = append([]byte(nil), sub.Envelope...)
	over.Envelope = append(over.Envelope, make([]byte, limits.MaxEnvelopeBytes+1-len(over.Envelope))...)
	require.ErrorContains(t, submitOne(t, l.TransparencyLog, agentID, over).Refusal, "more than")
}

// Must show: GET /log/entries serves an envelope as it was stored: a
// signature's keyid (which no signature covers) of 4,096 '<' comes out as
// 4,096 '<', not six times as long escaped, which made one such entry a
// page larger than a client reads (a reviewer).
func TestLogEntriesServedUnescaped(t *testing.T) {
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	l := newTestLog(t, ca, nil)
	sub := agent.submit(t, "angle")
	env := &dssepb.Envelope{}
	require.NoError(t, protojson.Unmarshal(sub.Envelope, env))
	angles := strings.Repeat("<", 4096)
	env.GetSignatures()[0].Keyid = angles
	var err error
	sub.Envelope, err = protojson.Marshal(env)
	require.NoError(t, err)
	require.NoError(t, submitOne(t, l.TransparencyLog, agentID, sub).Refusal)

	mux := http.NewServeMux()
	l.registerHTTP(mux, zap.NewNop())
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/log/entries?digest=sha256:"+digestOf("angle"), nil))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Contains(t, rec.Body.String(), angles)
	require.NotContains(t, rec.Body.String(), `\u003c`)
}

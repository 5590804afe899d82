package pipeline_test

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// logServer answers GET /log/entries as hallmark-server does
// (docs/log.md), one entry per page, from bundles.
func logServer(t *testing.T, bundles []pipeline.Candidate) *httptest.Server {
	t.Helper()
	type entry struct {
		subjects []string
		json     pipeline.SearchEntry
	}
	var entries []entry
	for _, c := range bundles {
		b, err := attest.ParseBundle(c.Bundle)
		require.NoError(t, err)
		te, err := protojson.Marshal(b.GetVerificationMaterial().GetTlogEntries()[0])
		require.NoError(t, err)
		env, err := protojson.Marshal(b.GetDsseEnvelope())
		require.NoError(t, err)
		var st struct {
			Subject []struct {
				Digest map[string]string `json:"digest"`
			} `json:"subject"`
		}
		require.NoError(t, json.Unmarshal(b.GetDsseEnvelope().GetPayload(), &st))
		cert, err := x509.ParseCertificate(b.GetVerificationMaterial().GetCertificate().GetRawBytes())
		require.NoError(t, err)
		e := entry{json: pipeline.SearchEntry{
			TlogEntry: te, DSSEEnvelope: env, SPIFFEID: cert.URIs[0].String(), // the agent that submitted it
			Certificate:     cert.Raw,
			SignedTimestamp: b.GetVerificationMaterial().GetTimestampVerificationData().GetRfc3161Timestamps()[0].GetSignedTimestamp(),
		}}
		for _, s := range st.Subject {
			e.subjects = append(e.subjects, "sha256:"+s.Digest["sha256"])
		}
		entries = append(entries, e)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/log/entries" {
			http.NotFound(w, r)
			return
		}
		start, _ := strconv.Atoi(r.URL.Query().Get("start"))
		digest := r.URL.Query().Get("digest")
		out := map[string]any{"entries": []pipeline.SearchEntry{}}
		for i := start; i < len(entries); i++ {
			for _, s := range entries[i].subjects {
				if s == digest {
					out["entries"] = []pipeline.SearchEntry{entries[i].json}
					out["next"] = i + 1
					break
				}
			}
			if out["next"] != nil {
				break
			}
		}
		json.NewEncoder(w).Encode(out) //nolint:errcheck
	}))
	t.Cleanup(srv.Close)
	return srv
}

// From the log by digest alone: the walk searches for the artifact, then
// for each material, and verifies everything it is given.
func TestVerifyFromLogSearch(t *testing.T) {
	f := newFixture(t)
	r1, r2 := newRun("1"), newRun("2")
	srv := logServer(t, f.bundles(t, r2.checkout, r1.checkout, r2.build, r1.build, r1.packag, r2.packag))
	searches := 0
	client := &http.Client{Transport: countingTransport{&searches}}
	src := &pipeline.LogSearch{BaseURL: srv.URL, Client: client}

	rep, err := f.verifyArtifact(mustPolicy(t, testPolicy), "widget-1.0.tar.gz", r1.files["widget-1.0.tar.gz"], src)
	require.NoError(t, err)
	require.True(t, rep.Verified)
	chain := rep.Chain()
	require.Len(t, chain, 3)
	for _, n := range chain {
		require.True(t, strings.HasPrefix(n.Origin, "log entry "), n.Origin)
		// The URI is the search whose first answer is the entry.
		index := strings.TrimPrefix(n.Origin, "log entry ")
		require.Equal(t, srv.URL+"/log/entries?digest=sha256%3A"+n.Attestation.Subjects[0].SHA256+"&start="+index, n.URI)
	}
	// artifact (1 page + 1 empty), app (1 + 1), src/main.c and
	// src/Makefile are products of both runs' checkout: the first found
	// covers the other material without a search.
	require.LessOrEqual(t, searches, 7, "one search per digest, not per material")

	// A build from run 2 is the only one logged for run 1's package: the
	// walk names the rule.
	srv2 := logServer(t, f.bundles(t, r1.checkout, r2.build, r1.packag))
	_, err = f.verifyArtifact(mustPolicy(t, testPolicy), "w", r1.files["widget-1.0.tar.gz"], &pipeline.LogSearch{BaseURL: srv2.URL})
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re)
	require.Equal(t, "step.package.materials_from", re.Failure.Rule)
	require.Contains(t, re.Failure.Reason, "material app (sha256 ")
}

type countingTransport struct{ n *int }

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	*c.n++
	return http.DefaultTransport.RoundTrip(r)
}

// A server that fails or lies makes the call fail; it never verifies.
func TestLogSearchErrors(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"error status", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "store down", 500) }, "500 Internal Server Error: store down"},
		{"not JSON", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "<html>") }, "log search answer"},
		{"bad entry", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, `{"entries":[{"tlogEntry":{"logIndex":"x"},"dsseEnvelope":{},"certificate":"","signedTimestamp":""}]}`)
		}, "tlog entry"},
		{"next does not advance", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, `{"entries":[],"next":0}`) }, "does not advance"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			_, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], &pipeline.LogSearch{BaseURL: srv.URL})
			require.ErrorContains(t, err, tc.want)
			require.NotErrorIs(t, err, pipeline.ErrNotVerified)
		})
	}
}

// Must show (an outside review's lying server): a server whose every page
// is empty, its next one index on, ends the search at MaxPages, with the
// rule limits, instead of keeping it busy until the caller's deadline.
func TestLogSearchEndsOnPagesThatDoNotProgress(t *testing.T) {
	f := newFixture(t)
	r := newRun("1")
	var pages atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		pages.Add(1)
		start, _ := strconv.ParseInt(req.URL.Query().Get("start"), 10, 64)
		fmt.Fprintf(w, `{"entries":[],"next":%d}`, start+1)
	}))
	defer srv.Close()
	began := time.Now()
	_, err := f.verifyArtifact(mustPolicy(t, testPolicy), "w", r.files["widget-1.0.tar.gz"], &pipeline.LogSearch{BaseURL: srv.URL})
	var re *pipeline.RuleError
	require.ErrorAs(t, err, &re)
	require.Equal(t, pipeline.RuleLimits, re.Failure.Rule)
	require.ErrorContains(t, err, "more than 5000 pages")
	require.EqualValues(t, 5000, pages.Load(), "the default bound")
	t.Logf("5,000 empty pages read in %s", time.Since(began).Round(time.Millisecond))
}

package pipeline

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	ita1 "github.com/in-toto/attestation/go/v1"
	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	commonpb "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/hallmark-dev/hallmark/attest"
)

// Candidate is a bundle that may attest a step, and where it came from
// (a file name, a log entry). Nothing in it is trusted until verified.
type Candidate struct {
	Bundle []byte
	// Origin names the bundle for people (a file name, "log entry 12").
	Origin string
	// URI locates the bundle (a file: URI, the log search that returns
	// it), for a VSA's inputAttestations; empty when there is none.
	URI string
}

// Finder finds the attestations the chain walk needs. Find returns the
// bundles that may name an artifact of the given SHA-256 (lowercase hex)
// as a subject; it may return others too, and may return the same bundle
// on every call: the walk verifies each bundle fully, once.
type Finder interface {
	Find(ctx context.Context, sha256Hex string) ([]Candidate, error)
}

// BundleSet is a Finder over bundles given up front (files on the command
// line or in a directory). It indexes them by the subjects their payloads
// claim, read without trusting them (a bundle that does not parse is
// indexed under nothing); the walk verifies whatever Find returns.
type BundleSet struct {
	all     []Candidate
	subject map[string][]int
}

// NewBundleSet indexes bundles.
func NewBundleSet(bundles []Candidate) *BundleSet {
	s := &BundleSet{all: bundles, subject: map[string][]int{}}
	for i, c := range bundles {
		for _, d := range claimedSubjects(c.Bundle) {
			if idx := s.subject[d]; len(idx) == 0 || idx[len(idx)-1] != i {
				s.subject[d] = append(idx, i)
			}
		}
	}
	return s
}

// Find returns the bundles whose statements claim a subject of that digest.
func (s *BundleSet) Find(_ context.Context, sha256Hex string) ([]Candidate, error) {
	idx := s.subject[sha256Hex]
	out := make([]Candidate, len(idx))
	for i, j := range idx {
		out[i] = s.all[j]
	}
	return out, nil
}

// enumerator is a Finder that may be able to list everything it holds
// (ok false: it cannot): the walk verifies them all to tell a missing step
// from one whose products do not match.
type enumerator interface {
	enumerate() (all []Candidate, ok bool)
}

func (s *BundleSet) enumerate() ([]Candidate, bool) { return s.all, true }

// enumerate lists every finder's bundles when every finder can.
func (ff Finders) enumerate() ([]Candidate, bool) {
	var out []Candidate
	for _, f := range ff {
		e, ok := f.(enumerator)
		if !ok {
			return nil, false
		}
		all, ok := e.enumerate()
		if !ok {
			return nil, false
		}
		out = append(out, all...)
	}
	return out, true
}

// claimedSubjects returns the sha256 digests a bundle's payload claims as
// subjects, unverified: only to narrow the search.
func claimedSubjects(bundleJSON []byte) []string {
	return claimed(bundleJSON).subjects
}

// claim is what a statement claims, unverified: only to narrow the search
// and pass over what no rule could accept.
type claim struct {
	subjects []string // sha256 digests of the subjects
	builder  string   // runDetails.builder.id
	step     string   // buildDefinition.externalParameters.step
	// buildDefinition.internalParameters.workload's spiffe_ids and
	// selectors
	workloadSPIFFEIDs, workloadSelectors []string
}

func claimed(bundleJSON []byte) claim {
	b, err := attest.ParseBundle(bundleJSON)
	if err != nil {
		return claim{}
	}
	return claimedStatement(b.GetDsseEnvelope().GetPayload())
}

func claimedStatement(payload []byte) claim {
	var st ita1.Statement
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(payload, &st); err != nil {
		return claim{}
	}
	c := claim{subjects: make([]string, 0, len(st.GetSubject()))}
	for _, s := range st.GetSubject() {
		if d := s.GetDigest()["sha256"]; d != "" {
			c.subjects = append(c.subjects, strings.ToLower(d))
		}
	}
	pred := st.GetPredicate().GetFields()
	c.builder = pred["runDetails"].GetStructValue().GetFields()["builder"].GetStructValue().GetFields()["id"].GetStringValue()
	bd := pred["buildDefinition"].GetStructValue().GetFields()
	c.step = bd["externalParameters"].GetStructValue().GetFields()["step"].GetStringValue()
	wl := bd["internalParameters"].GetStructValue().GetFields()["workload"].GetStructValue().GetFields()
	c.workloadSPIFFEIDs, c.workloadSelectors = claimedStrings(wl["spiffe_ids"]), claimedStrings(wl["selectors"])
	return c
}

// claimedStrings is a list's strings (what else it holds, left out).
func claimedStrings(v *structpb.Value) []string {
	var out []string
	for _, e := range v.GetListValue().GetValues() {
		if s, ok := e.GetKind().(*structpb.Value_StringValue); ok {
			out = append(out, s.StringValue)
		}
	}
	return out
}

// LogSearch is a Finder that asks a Hallmark server's log for the
// entries naming a digest (GET /log/entries, docs/log.md) and rebuilds
// each as a bundle. The server is not trusted: every bundle is verified
// against the trusted root like any other.
type LogSearch struct {
	// BaseURL is the server's HTTP address (its health_address),
	// http://host:port.
	BaseURL string
	// Client makes the requests; nil means http.DefaultClient.
	Client *http.Client
	// MaxEntries bounds the entries read for one digest (default 1000).
	MaxEntries int
	// Builder, when not nil, passes over entries whose submitting agent
	// (the builder of every entry it logs) it refuses: they are read from
	// the server but not rebuilt, and counted against MaxSkipped instead
	// of MaxEntries. So a compromised agent that no rule trusts must log
	// a hundred times as many entries naming another's artifact to make
	// the search for it fail (before, 1,001 did). Policy.MayBuild tells
	// which builders a pipeline policy could accept.
	Builder func(spiffeID string) bool
	// Step, when not nil, passes over entries whose statement (as it
	// claims, unverified) is of a step, by their submitting agent, for a
	// workload, that it refuses, like those Builder refuses: read, not
	// rebuilt, counted against MaxSkipped. So attestations of another
	// step naming the artifact (any CI tenant who may attest some step
	// can make them) do not make the search for it fail.
	// Policy.MayAttest tells which a pipeline policy could accept.
	Step func(builder, step string, workloadSPIFFEIDs, workloadSelectors []string) bool
	// MaxSkipped bounds the entries Builder or Step refuses for one digest
	// (default 100 times MaxEntries).
	MaxSkipped int
	// Builders, when not empty, are named to the server with every
	// request (GET /log/entries's builder parameter), which then leaves
	// out the entries of every agent that is not one of them or under
	// one: however many another agent logs naming the artifact, they are
	// neither read nor sent. The server is not trusted to: Builder still
	// decides on every entry it sends (and an older server ignores the
	// parameter). Every builder Builder accepts must be one of these or
	// under one; Policy.SearchBuilders gives them.
	Builders []string
	// MaxPages bounds the pages read for one digest (default 5,000):
	// hallmark-server's page holds up to 100 entries, or says it scanned
	// 1,000 others, so 5,000 pages cover more than any bound above,
	// while a server that answers one entry, or none, a page keeps the
	// search busy no longer than that (an outside review's lying server
	// held it for the CLI's whole 5 minutes).
	MaxPages int
}

// maxSearchPage bounds one answer of the server.
const maxSearchPage = 64 << 20

// SearchEntry is one entry of GET /log/entries.
type SearchEntry struct {
	TlogEntry       json.RawMessage `json:"tlogEntry"`
	DSSEEnvelope    json.RawMessage `json:"dsseEnvelope"`
	Certificate     []byte          `json:"certificate"`
	SPIFFEID        string          `json:"spiffeId"`
	SignedTimestamp []byte          `json:"signedTimestamp"`
}

// searchPage is GET /log/entries's answer.
type searchPage struct {
	Entries []SearchEntry `json:"entries"`
	Next    *int64        `json:"next"`
}

// Find returns every logged entry whose statement names the digest, as
// bundles.
func (l *LogSearch) Find(ctx context.Context, sha256Hex string) ([]Candidate, error) {
	if _, err := hex.DecodeString(sha256Hex); err != nil || len(sha256Hex) != 64 {
		return nil, fmt.Errorf("pipeline: log search: %q is not a SHA-256", sha256Hex)
	}
	limit := l.MaxEntries
	if limit <= 0 {
		limit = 1000
	}
	maxSkipped := l.MaxSkipped
	if maxSkipped <= 0 {
		maxSkipped = 100 * limit
	}
	var out []Candidate
	skipped := 0
	passOver := func(e SearchEntry) error {
		if skipped++; skipped > maxSkipped {
			return &limitError{Failure{Rule: RuleLimits, Reason: fmt.Sprintf("log search: more than %d entries naming sha256:%s are by builders, or of steps and workloads, no rule allows (one by %s); not reading further", maxSkipped, sha256Hex, e.SPIFFEID)}}
		}
		return nil
	}
	maxPages := l.MaxPages
	if maxPages <= 0 {
		maxPages = 5000
	}
	for start, pages := int64(0), 1; ; pages++ {
		if pages > maxPages {
			return nil, &limitError{Failure{Rule: RuleLimits, Reason: fmt.Sprintf("log search: more than %d pages for sha256:%s from %s (LogSearch.MaxPages): "+
				"its pages are far smaller than hallmark-server's; not reading further", maxPages, sha256Hex, l.BaseURL)}}
		}
		page, err := l.page(ctx, sha256Hex, start)
		if err != nil {
			return nil, err
		}
		for _, e := range page.Entries {
			if l.Builder != nil && !l.Builder(e.SPIFFEID) { // needs no decoding
				if err := passOver(e); err != nil {
					return nil, err
				}
				continue
			}
			env, err := envelopeOf(e)
			if err != nil {
				return nil, fmt.Errorf("pipeline: log search: entry from %s: envelope: %w", l.BaseURL, err)
			}
			if l.Step != nil && !l.mayBeStep(e, env) {
				if err := passOver(e); err != nil {
					return nil, err
				}
				continue
			}
			b, index, err := rebuildBundle(e, env)
			if err != nil {
				return nil, fmt.Errorf("pipeline: log search: entry from %s: %w", l.BaseURL, err)
			}
			out = append(out, Candidate{Bundle: b, Origin: fmt.Sprintf("log entry %d", index), URI: l.searchURL(sha256Hex, index)})
		}
		if len(out) > limit {
			return nil, &limitError{Failure{Rule: RuleLimits, Reason: fmt.Sprintf("log search: more than %d entries name sha256:%s (LogSearch.MaxEntries)", limit, sha256Hex)}}
		}
		if page.Next == nil {
			return out, nil
		}
		if *page.Next <= start {
			return nil, fmt.Errorf("pipeline: log search: the server's next page (%d) does not advance", *page.Next)
		}
		start = *page.Next
	}
}

// mayBeStep asks Step about entry e: its submitting agent, and the step
// and workload the statement of env, its envelope, claims, none of them
// trusted.
func (l *LogSearch) mayBeStep(e SearchEntry, env *dssepb.Envelope) bool {
	c := claimedStatement(env.GetPayload())
	return l.Step(e.SPIFFEID, c.step, c.workloadSPIFFEIDs, c.workloadSelectors)
}

// envelopeOf decodes e's DSSE envelope, once for the search's filter and
// the bundle it rebuilds.
func envelopeOf(e SearchEntry) (*dssepb.Envelope, error) {
	var env dssepb.Envelope
	if err := protojson.Unmarshal(e.DSSEEnvelope, &env); err != nil {
		return nil, err
	}
	return &env, nil
}

// searchURL is the search for the entries naming a digest from index
// start on (its first answer is the entry at start, when it names it).
func (l *LogSearch) searchURL(sha256Hex string, start int64) string {
	u := fmt.Sprintf("%s/log/entries?digest=%s&start=%d", strings.TrimSuffix(l.BaseURL, "/"), url.QueryEscape("sha256:"+sha256Hex), start)
	for _, b := range l.Builders {
		u += "&builder=" + url.QueryEscape(b)
	}
	return u
}

func (l *LogSearch) page(ctx context.Context, sha256Hex string, start int64) (*searchPage, error) {
	if l.BaseURL == "" {
		return nil, errors.New("pipeline: log search: no server address")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.searchURL(sha256Hex, start), nil)
	if err != nil {
		return nil, fmt.Errorf("pipeline: log search: %w", err)
	}
	client := l.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pipeline: log search %s: %w", l.BaseURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSearchPage+1))
	if err != nil {
		return nil, fmt.Errorf("pipeline: log search %s: %w", l.BaseURL, err)
	}
	if len(body) > maxSearchPage {
		return nil, fmt.Errorf("pipeline: log search %s: answer larger than %d bytes", l.BaseURL, maxSearchPage)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("pipeline: log search %s: %s: %.200s", l.BaseURL, resp.Status, strings.TrimSpace(string(body)))
	}
	var page searchPage
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("pipeline: log search answer: %w", err)
	}
	return &page, nil
}

// RebuildBundle assembles a Sigstore bundle v0.3 from a log search entry:
// its log entry, envelope, certificate and RFC 3161 timestamp. It returns
// the bundle's JSON and the entry's log index. Nothing is verified.
func RebuildBundle(e SearchEntry) ([]byte, int64, error) {
	env, err := envelopeOf(e)
	if err != nil {
		return nil, 0, fmt.Errorf("envelope: %w", err)
	}
	return rebuildBundle(e, env)
}

// rebuildBundle is RebuildBundle with e's envelope decoded.
func rebuildBundle(e SearchEntry, env *dssepb.Envelope) ([]byte, int64, error) {
	var entry rekorpb.TransparencyLogEntry
	if err := protojson.Unmarshal(e.TlogEntry, &entry); err != nil {
		return nil, 0, fmt.Errorf("tlog entry: %w", err)
	}
	if len(e.Certificate) == 0 || len(e.SignedTimestamp) == 0 {
		return nil, 0, fmt.Errorf("log entry %d: no certificate or timestamp in the server's answer", entry.GetLogIndex())
	}
	b := &bundlepb.Bundle{
		MediaType: attest.BundleMediaType,
		VerificationMaterial: &bundlepb.VerificationMaterial{
			Content:     &bundlepb.VerificationMaterial_Certificate{Certificate: &commonpb.X509Certificate{RawBytes: e.Certificate}},
			TlogEntries: []*rekorpb.TransparencyLogEntry{&entry},
			TimestampVerificationData: &bundlepb.TimestampVerificationData{
				Rfc3161Timestamps: []*commonpb.RFC3161SignedTimestamp{{SignedTimestamp: e.SignedTimestamp}},
			},
		},
		Content: &bundlepb.Bundle_DsseEnvelope{DsseEnvelope: env},
	}
	out, err := attest.MarshalBundle(b)
	return out, entry.GetLogIndex(), err
}

// Finders asks each of its finders in turn and returns everything they
// find (bundles on disk, then the log, say).
type Finders []Finder

// Find returns what every finder finds for the digest.
func (ff Finders) Find(ctx context.Context, sha256Hex string) ([]Candidate, error) {
	var out []Candidate
	for _, f := range ff {
		found, err := f.Find(ctx, sha256Hex)
		if err != nil {
			return nil, err
		}
		out = append(out, found...)
	}
	return out, nil
}

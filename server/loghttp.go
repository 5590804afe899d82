package server

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// Bounds of one GET /log/entries answer: at most maxEntriesPerPage
// entries, and no more than fit in maxPageBytes of stored entry data
// (store.Entry.Size; the answer is about 4/3 of it, base64), but always
// one. An envelope may be up to MaxEnvelopeSize, so a page by count alone
// could be gigabytes.
const (
	maxEntriesPerPage = 100
	maxPageBytes      = 4 << 20
)

// maxBuilders bounds the builder parameters of one GET /log/entries;
// maxScanPerPage the entries naming the digest that one examines when it
// names builders (other builders' included): a page may then come back
// short, or empty, with next where the examination stopped.
const (
	maxBuilders    = 32
	maxScanPerPage = 1000
)

// registerHTTP serves the log and trust endpoints (docs/log.md) on mux.
func (l *TransparencyLog) registerHTTP(mux *http.ServeMux, log *zap.Logger) {
	h := &logHTTP{l: l, log: log}
	mux.HandleFunc("GET /trust/trusted_root.json", h.trustedRoot)
	mux.HandleFunc("GET /trust/bundle.pem", h.bundlePEM)
	mux.HandleFunc("GET /log/checkpoint", h.checkpoint)
	mux.HandleFunc("GET /log/proof/consistency", h.consistency)
	mux.HandleFunc("GET /log/entries", h.entries)
}

type logHTTP struct {
	l   *TransparencyLog
	log *zap.Logger
}

// internal answers 500 and logs the cause once.
func (h *logHTTP) internal(w http.ResponseWriter, r *http.Request, err error) {
	h.log.Error("Log endpoint failed", zap.String("path", r.URL.Path), zap.Error(err))
	http.Error(w, "internal error (see server log)", http.StatusInternalServerError)
}

func (h *logHTTP) trustedRoot(w http.ResponseWriter, r *http.Request) {
	out, err := h.l.TrustedRootJSON(r.Context())
	if err != nil {
		h.internal(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(out) //nolint:errcheck // the client went away
}

func (h *logHTTP) bundlePEM(w http.ResponseWriter, r *http.Request) {
	cas, err := h.l.store.SigningCAs(r.Context())
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out, err := caBundlePEM(cas)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(out) //nolint:errcheck // the client went away
}

func (h *logHTTP) checkpoint(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(h.l.Checkpoint()) //nolint:errcheck // the client went away
}

// consistencyJSON answers GET /log/proof/consistency.
type consistencyJSON struct {
	From   uint64   `json:"from"`
	To     uint64   `json:"to"`
	Hashes [][]byte `json:"hashes"` // standard base64
}

func (h *logHTTP) consistency(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from, err := strconv.ParseUint(q.Get("from"), 10, 64)
	if err != nil {
		http.Error(w, "from: want a tree size", http.StatusBadRequest)
		return
	}
	to := h.l.currentHead().size
	if v := q.Get("to"); v != "" {
		if to, err = strconv.ParseUint(v, 10, 64); err != nil {
			http.Error(w, "to: want a tree size", http.StatusBadRequest)
			return
		}
	}
	if from > to || to > h.l.currentHead().size {
		http.Error(w, fmt.Sprintf("want 0 <= from <= to <= %d (the latest checkpoint)", h.l.currentHead().size), http.StatusBadRequest)
		return
	}
	hashes, err := h.l.ConsistencyProof(r.Context(), from, to)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if hashes == nil {
		hashes = [][]byte{}
	}
	writeJSON(w, consistencyJSON{From: from, To: to, Hashes: hashes})
}

// entriesJSON answers GET /log/entries.
type entriesJSON struct {
	Entries []entryJSON `json:"entries"`
	// Next, when present, is the start= of the next page.
	Next *uint64 `json:"next,omitempty"`
}

// entryJSON is one logged entry with what a client needs to rebuild its
// bundle.
type entryJSON struct {
	// TlogEntry is the bundle's TransparencyLogEntry, with an inclusion
	// proof against the latest checkpoint.
	TlogEntry json.RawMessage `json:"tlogEntry"`
	// DSSEEnvelope is the envelope as submitted (bundle JSON).
	DSSEEnvelope json.RawMessage `json:"dsseEnvelope"`
	// Certificate is the signing certificate, DER (standard base64).
	Certificate []byte `json:"certificate"`
	// SPIFFEID is the agent that submitted it.
	SPIFFEID string `json:"spiffeId"`
	// SignedTimestamp is the RFC 3161 timestamp of the envelope's
	// signature, DER TimeStampResp (standard base64).
	SignedTimestamp []byte `json:"signedTimestamp"`
}

func (h *logHTTP) entries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	digest, err := parseDigest(q.Get("digest"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var start uint64
	if v := q.Get("start"); v != "" {
		if start, err = strconv.ParseUint(v, 10, 63); err != nil {
			http.Error(w, "start: want a log index", http.StatusBadRequest)
			return
		}
	}
	builders, err := parseBuilders(q["builder"])
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	page, err := h.l.store.EntriesBySubjectDigest(r.Context(), store.SubjectQuery{
		Digest: digest, Start: start, Limit: maxEntriesPerPage, MaxBytes: maxPageBytes, Builders: builders, MaxScan: maxScanPerPage,
	})
	if err != nil {
		h.internal(w, r, err)
		return
	}
	found := page.Entries
	out := entriesJSON{Entries: make([]entryJSON, 0, len(found))}
	for _, e := range found {
		te, err := h.l.proveStored(r.Context(), e)
		if err != nil {
			h.internal(w, r, err)
			return
		}
		b, err := tlog.MarshalEntry(te)
		if err != nil {
			h.internal(w, r, err)
			return
		}
		out.Entries = append(out.Entries, entryJSON{TlogEntry: b, DSSEEnvelope: e.Envelope, Certificate: e.Certificate, SPIFFEID: e.SPIFFEID, SignedTimestamp: e.Timestamp})
	}
	// The page may have been cut by count or by bytes (which a page
	// cannot tell from the end of the list): a non-empty page always
	// says where the next starts; so does an empty one cut by the scan
	// bound; the last one is empty and says nothing.
	switch {
	case len(found) > 0:
		next := found[len(found)-1].Index + 1
		out.Next = &next
	case page.ScannedTo > 0:
		next := page.ScannedTo
		out.Next = &next
	}
	writeJSON(w, out)
}

// parseBuilders parses the builder parameters of GET /log/entries: each
// a SPIFFE ID, an entry's submitting agent or a path above it. A search
// for an artifact names the builders its verifier may accept, so that
// the entries of every other agent naming the same digest (any agent can
// attest a file of the same content) are neither read nor sent: they
// could otherwise outnumber what a client reads.
func parseBuilders(vals []string) ([]string, error) {
	if len(vals) > maxBuilders {
		return nil, fmt.Errorf("builder: at most %d", maxBuilders)
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		id, err := spiffeid.FromString(strings.TrimSuffix(v, "/"))
		if err != nil {
			return nil, fmt.Errorf("builder: %q: want a SPIFFE ID: %w", v, err)
		}
		out = append(out, id.String())
	}
	return out, nil
}

// parseDigest parses "sha256:HEX" into the raw digest.
func parseDigest(s string) ([]byte, error) {
	hexDigest, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return nil, errors.New("digest: want sha256:HEX")
	}
	d, err := hex.DecodeString(hexDigest)
	if err != nil || len(d) != 32 {
		return nil, errors.New("digest: want sha256: followed by 64 hex digits")
	}
	return d, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	enc := json.NewEncoder(w)
	// As stored: escaping <, > and & (encoding/json's default, applied to
	// the stored envelopes too) made an envelope of them six times its
	// size, and one such entry a page larger than a client reads, so that
	// a search failed before it could pass over the entry (a reviewer).
	enc.SetEscapeHTML(false)
	enc.Encode(v) //nolint:errcheck,errchkjson // the client went away
}

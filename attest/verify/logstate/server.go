package logstate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Server asks hallmark-server's log HTTP API (docs/log.md) for its latest
// checkpoint and for consistency proofs. Nothing it answers is trusted:
// checkpoints are checked against the log's key, proofs against signed
// roots.
type Server struct {
	// BaseURL is the server's health_address, as http://host:port.
	BaseURL string
	// Client makes the requests; http.DefaultClient when nil.
	Client *http.Client
}

// maxAnswer bounds an answer: a checkpoint is a few hundred bytes, a
// proof at most 64 hashes.
const maxAnswer = 64 << 10

// Checkpoint returns the log's latest signed checkpoint (GET
// /log/checkpoint), unverified.
func (s Server) Checkpoint(ctx context.Context) ([]byte, error) {
	return s.get(ctx, "/log/checkpoint")
}

// Consistency returns the proof that the log's tree of size to extends
// its tree of size from (GET /log/proof/consistency). The server has one
// log; origin is only checked by the caller, against the signed roots.
func (s Server) Consistency(ctx context.Context, _ string, from, to uint64) ([][]byte, error) {
	body, err := s.get(ctx, "/log/proof/consistency?from="+strconv.FormatUint(from, 10)+"&to="+strconv.FormatUint(to, 10))
	if err != nil {
		return nil, err
	}
	var p struct {
		From   uint64   `json:"from"`
		To     uint64   `json:"to"`
		Hashes [][]byte `json:"hashes"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("logstate: consistency proof from %s: %w", s.BaseURL, err)
	}
	if p.From != from || p.To != to {
		return nil, fmt.Errorf("logstate: %s answered a proof from %d to %d, asked from %d to %d", s.BaseURL, p.From, p.To, from, to)
	}
	return p.Hashes, nil
}

func (s Server) get(ctx context.Context, path string) ([]byte, error) {
	base, err := url.Parse(strings.TrimSuffix(s.BaseURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("logstate: server %q is not an http(s) URL", s.BaseURL)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base.String()+path, nil)
	if err != nil {
		return nil, fmt.Errorf("logstate: %w", err)
	}
	client := s.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("logstate: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("logstate: %s%s: %w", s.BaseURL, path, err)
	}
	if len(body) > maxAnswer {
		return nil, fmt.Errorf("logstate: %s%s: answer larger than %d bytes", s.BaseURL, path, maxAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("logstate: %s%s: %s: %s", s.BaseURL, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

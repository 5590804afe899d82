package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
	"github.com/hallmark-dev/hallmark/internal/wholefile"
)

// searchPage is GET /log/entries's answer (docs/log.md).
type searchPage struct {
	Entries []pipeline.SearchEntry `json:"entries"`
	Next    *int64                 `json:"next"`
}

func searchCmd() *cobra.Command {
	var (
		server, digest, outDir string
		builders               []string
	)
	cmd := &cobra.Command{
		Use:   "search --digest sha256:HEX [--server http://HOST:PORT] [--out-dir DIR] [--builder-id-prefix ID]...",
		Short: "Find logged attestations of an artifact and rebuild their bundles",
		Long: `Asks hallmark-server's log (GET /log/entries on its health_address) for
every entry whose statement names a subject with the digest, and writes each
as a complete Sigstore bundle (DSSE envelope, certificate, log entry) that
'hallmark verify' checks offline. Nothing fetched is trusted until verified.

With --builder-id-prefix, only the entries of those builders (agents, by
SPIFFE ID, or under one) are asked for, and only they are written: any agent
can attest a file of the artifact's content, and the others' entries are
then neither sent nor read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			hexDigest, ok := strings.CutPrefix(digest, "sha256:")
			if !ok || len(hexDigest) != 64 {
				fmt.Fprintln(cmd.ErrOrStderr(), "hallmark search: --digest must be sha256: followed by 64 hex digits")
				return &exitError{code: 2}
			}
			for i, b := range builders {
				id, err := spiffeid.FromString(strings.TrimSuffix(b, "/"))
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "hallmark search: --builder-id-prefix %q: want a SPIFFE ID: %v\n", b, err)
					return &exitError{code: 2}
				}
				builders[i] = id.String()
			}
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			found := 0
			for start := int64(0); ; {
				page, err := fetchPage(ctx, server, digest, builders, start)
				if err != nil {
					return err
				}
				for _, e := range page.Entries {
					// The server is not trusted to have left them out
					// (an older one ignores builder=).
					if !byBuilder(e.SPIFFEID, builders) {
						continue
					}
					b, index, err := pipeline.RebuildBundle(e)
					if err != nil {
						return fmt.Errorf("entry from the server: %w", err)
					}
					path := filepath.Join(outDir, fmt.Sprintf("%s.%d.hallmark.json", hexDigest[:12], index))
					if err := wholefile.Write(path, b); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s  log index %d  builder %s\n", path, index, e.SPIFFEID)
					found++
				}
				if page.Next == nil {
					break
				}
				start = *page.Next
			}
			if found == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "hallmark search: no logged attestation names "+digest)
				return &exitError{code: 1}
			}
			return nil
		},
	}
	def := os.Getenv("HALLMARK_SERVER_HEALTH_ADDR")
	if def != "" && !strings.Contains(def, "://") {
		def = "http://" + def
	}
	cmd.Flags().StringVar(&server, "server", def, "hallmark-server's HTTP address (env HALLMARK_SERVER_HEALTH_ADDR)")
	cmd.Flags().StringVar(&digest, "digest", "", "the artifact's digest, sha256:HEX")
	cmd.Flags().StringVar(&outDir, "out-dir", ".", "where to write the bundles")
	cmd.Flags().StringArrayVar(&builders, "builder-id-prefix", nil, "only attestations by this builder (agent SPIFFE ID) or one under it (repeatable)")
	return cmd
}

// byBuilder reports whether id is one of builders or under one, at a
// path segment (any, when there are none): GET /log/entries's builder=.
func byBuilder(id string, builders []string) bool {
	if len(builders) == 0 {
		return true
	}
	return slices.ContainsFunc(builders, func(b string) bool { return verify.UnderPrefix(id, b) })
}

func fetchPage(ctx context.Context, server, digest string, builders []string, start int64) (*searchPage, error) {
	if server == "" {
		return nil, errors.New("no server: set --server or HALLMARK_SERVER_HEALTH_ADDR")
	}
	u := fmt.Sprintf("%s/log/entries?digest=%s&start=%d", strings.TrimSuffix(server, "/"), url.QueryEscape(digest), start)
	for _, b := range builders {
		u += "&builder=" + url.QueryEscape(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("search %s: %w", server, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("search %s: %s: %s", server, resp.Status, strings.TrimSpace(string(body)))
	}
	var page searchPage
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("search answer: %w", err)
	}
	return &page, nil
}

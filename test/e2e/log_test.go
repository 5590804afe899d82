package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// The log's public side on the running server: an attested product is
// found by its digest with the entry its bundle carries; the checkpoint
// verifies with what the trusted root says; the tree the bundle was proved
// against is consistent with the latest; and `hallmark-server trust export`
// (offline, on the same files) writes what the server serves.
func TestLogSearchCheckpointAndExport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	product := "log e2e product\n"
	ws := workspace(t, map[string]string{"in": product})
	out := filepath.Join(ws, "out.hallmark.json")
	attestCmd := exec.Command(stack.Bins.CLI, "attest", "--socket", stack.Agent.Socket, "--step", "build", "--wait-log",
		"--product", "out", "--out", out, "--", "cp", "in", "out")
	attestCmd.Dir = ws
	output, err := attestCmd.CombinedOutput()
	require.NoError(t, err, "output: %s", output)
	bundleJSON, err := os.ReadFile(out)
	require.NoError(t, err)
	var b bundlepb.Bundle
	require.NoError(t, protojson.Unmarshal(bundleJSON, &b))
	require.Len(t, b.GetVerificationMaterial().GetTlogEntries(), 1)
	entry := b.GetVerificationMaterial().GetTlogEntries()[0]

	// The trusted root names the log; its baseUrl gives the origin.
	rootJSON, err := stack.Server.Get(ctx, "/trust/trusted_root.json")
	require.NoError(t, err)
	var tr trustrootpb.TrustedRoot
	require.NoError(t, protojson.Unmarshal(rootJSON, &tr))
	require.Len(t, tr.GetTlogs(), 1)
	origin, err := trust.CheckpointOrigin(tr.GetTlogs()[0].GetBaseUrl())
	require.NoError(t, err)
	pubAny, err := x509.ParsePKIXPublicKey(tr.GetTlogs()[0].GetPublicKey().GetRawBytes())
	require.NoError(t, err)
	pub, ok := pubAny.(ed25519.PublicKey)
	require.True(t, ok)
	_, err = verify.ParseTrustedRoot(rootJSON)
	require.NoError(t, err)

	// The latest checkpoint verifies and extends the bundle's tree.
	note, err := stack.Server.Get(ctx, "/log/checkpoint")
	require.NoError(t, err)
	head, err := tlog.OpenCheckpoint(note, origin, pub)
	require.NoError(t, err)
	proved := entry.GetInclusionProof()
	require.GreaterOrEqual(t, head.Size, uint64(proved.GetTreeSize()))
	consJSON, err := stack.Server.Get(ctx, fmt.Sprintf("/log/proof/consistency?from=%d&to=%d", proved.GetTreeSize(), head.Size))
	require.NoError(t, err)
	var cons struct {
		Hashes [][]byte `json:"hashes"`
	}
	require.NoError(t, json.Unmarshal(consJSON, &cons))
	require.NoError(t, tlog.VerifyConsistency(uint64(proved.GetTreeSize()), head.Size, cons.Hashes, proved.GetRootHash(), head.Root))

	// The product's digest finds the entry, with what rebuilds the bundle.
	sum := sha256.Sum256([]byte(product))
	found, err := stack.Server.Get(ctx, "/log/entries?digest=sha256:"+hex.EncodeToString(sum[:]))
	require.NoError(t, err)
	var page struct {
		Entries []struct {
			TlogEntry    json.RawMessage `json:"tlogEntry"`
			DSSEEnvelope json.RawMessage `json:"dsseEnvelope"`
			Certificate  []byte          `json:"certificate"`
		} `json:"entries"`
	}
	require.NoError(t, json.Unmarshal(found, &page))
	var match *rekorpb.TransparencyLogEntry
	for _, e := range page.Entries {
		var te rekorpb.TransparencyLogEntry
		require.NoError(t, protojson.Unmarshal(e.TlogEntry, &te))
		if te.GetLogIndex() == entry.GetLogIndex() {
			match = &te
			require.Equal(t, b.GetVerificationMaterial().GetCertificate().GetRawBytes(), e.Certificate)
		}
	}
	require.NotNil(t, match, "entry %d not found by its product's digest", entry.GetLogIndex())
	require.Equal(t, entry.GetCanonicalizedBody(), match.GetCanonicalizedBody())
	p := match.GetInclusionProof()
	require.NoError(t, tlog.VerifyInclusion(uint64(p.GetLogIndex()), uint64(p.GetTreeSize()), tlog.LeafHash(match.GetCanonicalizedBody()), p.GetHashes(), p.GetRootHash()))

	// Named builders: the agent's entries only, or, for another
	// builder, none (what `hallmark verify` sends for a policy's
	// builders; TestLogEntriesByBuilder shows another agent's flood).
	for builder, want := range map[string]bool{harness.AgentID.String(): true, "spiffe://" + harness.TrustDomain + "/hallmark/agent/elsewhere": false} {
		found, err := stack.Server.Get(ctx, "/log/entries?digest=sha256:"+hex.EncodeToString(sum[:])+"&builder="+url.QueryEscape(builder))
		require.NoError(t, err)
		var page struct {
			Entries []struct {
				SPIFFEID string `json:"spiffeId"`
			} `json:"entries"`
		}
		require.NoError(t, json.Unmarshal(found, &page))
		require.Equal(t, want, len(page.Entries) > 0, "builder %s", builder)
		for _, e := range page.Entries {
			require.Equal(t, harness.AgentID.String(), e.SPIFFEID)
		}
	}

	// trust export, offline, on the running server's files.
	exportPath := filepath.Join(t.TempDir(), "trusted_root.json")
	exportCmd := exec.Command(stack.Bins.Server, "trust", "export", "--config", stack.Server.ConfigPath, "--out", exportPath)
	output, err = exportCmd.CombinedOutput()
	require.NoError(t, err, "output: %s", output)
	exported, err := os.ReadFile(exportPath)
	require.NoError(t, err)
	// The server may record a CA between the two reads; read it again.
	served, err := stack.Server.Get(ctx, "/trust/trusted_root.json")
	require.NoError(t, err)
	var a, c trustrootpb.TrustedRoot
	require.NoError(t, protojson.Unmarshal(exported, &a))
	require.NoError(t, protojson.Unmarshal(served, &c))
	require.True(t, proto.Equal(&a, &c), "exported:\n%s\nserved:\n%s", exported, served)
}

package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/test/harness"
	"github.com/hallmark-dev/hallmark/test/interop/sigstorego"
)

// legacyFixture is a server data directory, bundles, artifacts, trusted
// root and checkpoint written by hallmark at commit 0965f2e, the last one
// that logged dsse entries named by the SHA-256 of the log key's PKIX DER
// (see testdata/log-dsse-v1/README.md).
const legacyFixture = "testdata/log-dsse-v1"

// The upgrade, end to end (docs/log.md, "Upgrading from dsse entries"):
// the current hallmark-server started on a data directory the previous
// release wrote continues the same log (same key, same origin) with
// hashedrekord entries. Every bundle the previous release wrote still
// verifies with `hallmark verify`, against the trusted root the upgraded
// server serves and against the one the old server served; the old
// checkpoint is consistent with the new tree; an old entry found again by
// its digest verifies too; and a new attestation verifies with
// `hallmark verify` and sigstore-go.
func TestUpgradeFromDSSELog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := "hallmark-server-upgraded"
	copyFixtureData(t, filepath.Join(legacyFixture, "data"), filepath.Join(stack.Dir, name, "data"))
	srv := startServer(t, name, harness.ServerOptions{Policy: testPolicy(stack.Dir)})
	ag := startAgent(t, "hallmark-agent-upgraded", srv, harness.ServerID)

	rootJSON, err := srv.Get(ctx, "/trust/trusted_root.json")
	require.NoError(t, err)
	ws := workspace(t, map[string]string{"src.c": "int main(void) { return 9; }"})
	rootFile := filepath.Join(ws, "trusted_root.json")
	require.NoError(t, os.WriteFile(rootFile, rootJSON, 0o644))
	oldRootFile, err := filepath.Abs(filepath.Join(legacyFixture, "trusted_root.json"))
	require.NoError(t, err)

	// The same log: the old trusted root's key and origin, now named by
	// its C2SP key ID.
	var oldRoot, newRoot trustrootpb.TrustedRoot
	oldRootJSON, err := os.ReadFile(oldRootFile)
	require.NoError(t, err)
	require.NoError(t, protojson.Unmarshal(oldRootJSON, &oldRoot))
	require.NoError(t, protojson.Unmarshal(rootJSON, &newRoot))
	require.Equal(t, oldRoot.GetTlogs()[0].GetPublicKey().GetRawBytes(), newRoot.GetTlogs()[0].GetPublicKey().GetRawBytes())
	require.Equal(t, oldRoot.GetTlogs()[0].GetBaseUrl(), newRoot.GetTlogs()[0].GetBaseUrl())
	origin, err := trust.CheckpointOrigin(newRoot.GetTlogs()[0].GetBaseUrl())
	require.NoError(t, err)
	pubAny, err := x509.ParsePKIXPublicKey(newRoot.GetTlogs()[0].GetPublicKey().GetRawBytes())
	require.NoError(t, err)
	pub := pubAny.(ed25519.PublicKey)
	require.Equal(t, tlog.KeyID(origin, pub), newRoot.GetTlogs()[0].GetLogId().GetKeyId())
	legacyID, err := tlog.LegacyLogID(pub)
	require.NoError(t, err)
	require.Equal(t, legacyID, oldRoot.GetTlogs()[0].GetLogId().GetKeyId(), "the fixture names its log the old way")

	// A new attestation through the upgraded server: a hashedrekord
	// entry that hallmark verify and sigstore-go accept.
	newBundle := filepath.Join(ws, "new.hallmark.json")
	cmd := exec.Command(stack.Bins.CLI, "attest", "--socket", ag.Socket, "--step", "build", "--wait-log",
		"--product", "app", "--out", newBundle, "--", "cp", "src.c", "app")
	cmd.Dir = ws
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	nb := readBundle(t, newBundle)
	require.Equal(t, tlog.EntryKind, nb.GetVerificationMaterial().GetTlogEntries()[0].GetKindVersion().GetKind())
	require.NoError(t, hallmarkVerify(t, filepath.Join(ws, "app"), newBundle, rootFile))
	newData, err := os.ReadFile(newBundle)
	require.NoError(t, err)
	app, err := os.ReadFile(filepath.Join(ws, "app"))
	require.NoError(t, err)
	appDigest := sha256.Sum256(app)
	_, err = sigstorego.Verify(newData, rootJSON, appDigest[:], harness.AgentID.String())
	require.NoError(t, err)

	// Every bundle the previous release wrote: a legacy dsse entry under
	// the legacy log ID, verifying against both trusted roots.
	bundles, err := filepath.Glob(filepath.Join(legacyFixture, "bundles", "*.hallmark.json"))
	require.NoError(t, err)
	require.Len(t, bundles, 3)
	for _, b := range bundles {
		artifact := filepath.Join(legacyFixture, "artifacts", strings.TrimSuffix(filepath.Base(b), ".hallmark.json"))
		old := readBundle(t, b)
		e := old.GetVerificationMaterial().GetTlogEntries()[0]
		require.Equal(t, tlog.LegacyEntryKind, e.GetKindVersion().GetKind())
		require.Equal(t, legacyID, e.GetLogId().GetKeyId())
		require.NoError(t, hallmarkVerify(t, artifact, b, rootFile), "%s against the upgraded server's trusted root", b)
		require.NoError(t, hallmarkVerify(t, artifact, b, oldRootFile), "%s against the old trusted root", b)
		require.Error(t, hallmarkVerify(t, rootFile, b, rootFile), "another artifact is refused")
	}

	// The tree the old release signed last is a prefix of the new one.
	oldNote, err := os.ReadFile(filepath.Join(legacyFixture, "checkpoint"))
	require.NoError(t, err)
	oldHead, err := tlog.OpenCheckpoint(oldNote, origin, pub)
	require.NoError(t, err)
	note, err := srv.Get(ctx, "/log/checkpoint")
	require.NoError(t, err)
	head, err := tlog.OpenCheckpoint(note, origin, pub)
	require.NoError(t, err)
	require.Greater(t, head.Size, oldHead.Size)
	consJSON, err := srv.Get(ctx, fmt.Sprintf("/log/proof/consistency?from=%d&to=%d", oldHead.Size, head.Size))
	require.NoError(t, err)
	var cons struct {
		Hashes [][]byte `json:"hashes"`
	}
	require.NoError(t, json.Unmarshal(consJSON, &cons))
	require.NoError(t, tlog.VerifyConsistency(oldHead.Size, head.Size, cons.Hashes, oldHead.Root, head.Root))

	// An old entry found again by its digest: served as a dsse entry under
	// the new log ID, with a proof against the new tree; the bundle
	// hallmark search rebuilds verifies.
	artifact := filepath.Join(legacyFixture, "artifacts", "app-a")
	data, err := os.ReadFile(artifact)
	require.NoError(t, err)
	d := sha256.Sum256(data)
	found := filepath.Join(ws, "found")
	cmd = exec.Command(stack.Bins.CLI, "search", "--server", "http://"+srv.HealthAddr, "--digest", fmt.Sprintf("sha256:%x", d), "--out-dir", found)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	rebuilt, err := filepath.Glob(filepath.Join(found, "*.json"))
	require.NoError(t, err)
	require.Len(t, rebuilt, 1, "%s", out)
	rb := readBundle(t, rebuilt[0])
	require.Equal(t, tlog.LegacyEntryKind, rb.GetVerificationMaterial().GetTlogEntries()[0].GetKindVersion().GetKind())
	require.Equal(t, tlog.KeyID(origin, pub), rb.GetVerificationMaterial().GetTlogEntries()[0].GetLogId().GetKeyId())
	require.NoError(t, hallmarkVerify(t, artifact, rebuilt[0], rootFile))
}

// copyFixtureData copies a committed data directory to dst with the
// permissions the server demands of its keys (git keeps none).
func copyFixtureData(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o600)
	}))
}

func readBundle(t *testing.T, path string) *bundlepb.Bundle {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var b bundlepb.Bundle
	require.NoError(t, protojson.Unmarshal(data, &b))
	require.Len(t, b.GetVerificationMaterial().GetTlogEntries(), 1)
	return &b
}

// hallmarkVerify runs `hallmark verify` with a policy naming the agent.
func hallmarkVerify(t *testing.T, artifact, bundle, root string) error {
	t.Helper()
	return hallmarkVerifyAs(t, artifact, bundle, root, harness.AgentID.String())
}

// hallmarkVerifyAs runs `hallmark verify` with a policy allowing the
// builder identity alone; the error is runVerifier's.
func hallmarkVerifyAs(t *testing.T, artifact, bundle, root, identity string) error {
	t.Helper()
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, fmt.Appendf(nil, `{"builder_id_prefixes":[%q]}`, identity), 0o644))
	return runVerifier(exec.Command(stack.Bins.CLI, "verify", artifact, "--bundle", bundle, "--trusted-root", root, "--policy", policy))
}

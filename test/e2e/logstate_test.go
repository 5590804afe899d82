package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bundlepb "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/stretchr/testify/require"
	"github.com/transparency-dev/merkle/testonly"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// Must show (an outside review's finding): whoever holds the log's key can
// sign a checkpoint of a forked log and hand a consumer a bundle on the
// fork. hallmark verify checks the one checkpoint a bundle carries, and
// accepts it (as cosign and sigstore-go do). With --log-state and the
// log's server, the consumer refuses it: the log's history does not
// extend the forked checkpoint. Offline, a state file that remembers the
// log at the fork's size refuses it too.
func TestLogStateRefusesAForkedCheckpoint(t *testing.T) {
	t.Parallel()
	ws := workspace(t, nil)
	// Two entries at least, so that a fork of the tree can differ.
	for _, name := range []string{"other", "app"} {
		cmd := exec.Command(stack.Bins.CLI, "attest", "--socket", stack.Agent.Socket, "--step", "build", "--product", name+".bin",
			"--wait-log", "--out", filepath.Join(ws, name+".hallmark.json"), "--", "sh", "-c", "echo genuine > "+name+".bin")
		cmd.Dir = ws
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	bundle := filepath.Join(ws, "app.hallmark.json")
	rootJSON, err := stack.Server.Get(context.Background(), "/trust/trusted_root.json")
	require.NoError(t, err)
	root := filepath.Join(ws, "trusted_root.json")
	require.NoError(t, os.WriteFile(root, rootJSON, 0o644))
	server := "http://" + stack.Server.HealthAddr

	// The fork: the same entry, at its index, in a tree whose every other
	// leaf is another, under a checkpoint signed with the log's own key.
	forked := forkBundle(t, bundle, filepath.Join(stack.Server.Dir, "data", "log", "key"))
	verify := func(b string, args ...string) (int, string) {
		t.Helper()
		c := exec.Command(stack.Bins.CLI, append([]string{"verify", filepath.Join(ws, "app.bin"), "--bundle", b, "--trusted-root", root,
			"--builder-id-prefix", harness.AgentID.String()}, args...)...)
		o, err := c.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(o)
		}
		require.NoError(t, err)
		return 0, string(o)
	}
	code, text := verify(forked)
	require.Equal(t, 0, code, "the fork is a bundle every check of one bundle passes:\n%s", text)

	state := filepath.Join(t.TempDir(), "log-state.json")
	code, text = verify(bundle, "--log-state", state, "--server", server)
	require.Equal(t, 0, code, text)
	require.Contains(t, text, "log state: checkpoint ")
	code, text = verify(forked, "--log-state", state, "--server", server)
	require.Equal(t, 1, code, text)
	require.Contains(t, text, "NOT VERIFIED: log consistency")
	code, text = verify(bundle, "--log-state", state, "--server", server)
	require.Equal(t, 0, code, "the genuine bundle still verifies:\n%s", text)

	offline := filepath.Join(t.TempDir(), "log-state.json")
	code, text = verify(bundle, "--log-state", offline)
	require.Equal(t, 0, code, "the first checkpoint of a log is remembered:\n%s", text)
	code, text = verify(forked, "--log-state", offline)
	require.Equal(t, 1, code, "offline, a fork of the remembered size:\n%s", text)
	require.Contains(t, text, "NOT VERIFIED: log consistency")
}

// forkBundle writes a copy of the bundle at path whose entry is proven
// included in a forked tree of the same size, under a checkpoint signed
// with the log key at keyPath, and returns the copy's path.
func forkBundle(t *testing.T, path, keyPath string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var b bundlepb.Bundle
	require.NoError(t, protojson.Unmarshal(data, &b))
	e := b.GetVerificationMaterial().GetTlogEntries()[0]
	p := e.GetInclusionProof()
	cp, err := tlog.ParseCheckpoint(strings.SplitN(p.GetCheckpoint().GetEnvelope(), "\n\n", 2)[0] + "\n")
	require.NoError(t, err)

	fork := testonly.New(tlog.Hasher)
	for i := range uint64(p.GetTreeSize()) {
		if i == uint64(p.GetLogIndex()) {
			fork.Append(tlog.LeafHash(e.GetCanonicalizedBody()))
			continue
		}
		fork.AppendData(fmt.Appendf(nil, "forked leaf %d", i))
	}
	hashes, err := fork.InclusionProof(uint64(p.GetLogIndex()), fork.Size())
	require.NoError(t, err)
	keyPEM, err := os.ReadFile(keyPath)
	require.NoError(t, err)
	block, _ := pem.Decode(keyPEM)
	require.NotNil(t, block)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	note, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: cp.Origin, Size: fork.Size(), Root: fork.Hash()}, key.(ed25519.PrivateKey))
	require.NoError(t, err)
	require.False(t, bytes.Equal(fork.Hash(), p.GetRootHash()), "a fork")
	p.RootHash, p.Hashes, p.Checkpoint.Envelope = fork.Hash(), hashes, string(note)

	out, err := protojson.Marshal(&b)
	require.NoError(t, err)
	forked := strings.TrimSuffix(path, ".json") + ".forked.json"
	require.NoError(t, os.WriteFile(forked, out, 0o644))
	return forked
}

package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	provv1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/internal/limits"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
	"github.com/hallmark-dev/hallmark/test/harness"
)

// builderID is the SPIFFE ID policy lets attest "build" and "test"; this
// test binary and the hallmark CLI hold it (registered in TestMain).
const builderID = "spiffe://example.org/ci/builder"

// maxFiles is the shared agent's max_files.
const maxFiles = 200

func testPolicy(dir string) string {
	rules := fmt.Sprintf(`
  rule "builders" {
    spiffe_ids      = [%q]
    steps           = ["build", "test"]
    workspace_roots = [%q]
  }`, builderID, filepath.Join(dir, "workspaces"))
	if stepUser.uid != 0 {
		rules += fmt.Sprintf(`
  rule "step-user" {
    selectors       = ["unix:uid:%d"]
    steps           = ["build"]
    workspace_roots = [%q]
  }`, stepUser.uid, filepath.Join(dir, "workspaces"))
	}
	return rules
}

// workspace makes a workspace under the policy's root with files.
func workspace(t *testing.T, files map[string]string) string {
	t.Helper()
	root := filepath.Join(stack.Dir, "workspaces")
	require.NoError(t, os.MkdirAll(root, 0o755))
	ws, err := os.MkdirTemp(root, "ws-")
	require.NoError(t, err)
	for name, content := range files {
		p := filepath.Join(ws, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	return ws
}

func localClient(t *testing.T, socket string) agentv1.WorkloadServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// As the hallmark CLI: an answer holds a bundle and its subjects.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4*limits.MaxBundleBytes)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewWorkloadServiceClient(conn)
}

// Must show: an allowed workload gets a bundle that independent code
// verifies, whose statement validates, whose predicate carries the step,
// and whose subjects are what sha256sum prints.
func TestAttestAllowedStep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	random := make([]byte, 1<<20)
	rand.Read(random)
	ws := workspace(t, map[string]string{
		"dist/app":        string(random),
		"dist/lib/x.so":   "shared object",
		"dist/README":     "readme",
		"src/main.c":      "int main() { return 0; }",
		"src/include/x.h": "#define X 1",
	})
	client := localClient(t, stack.Agent.Socket)
	resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{
		Step: "build", Workspace: ws, Products: []string{"dist"}, Materials: []string{"src"}, Command: []string{"make", "all"},
	})
	require.NoError(t, err)

	// The bundle, read as plain JSON: Sigstore bundle v0.3 with the leaf only.
	var bundle struct {
		MediaType            string `json:"mediaType"`
		VerificationMaterial struct {
			Certificate struct {
				RawBytes []byte `json:"rawBytes"`
			} `json:"certificate"`
			X509CertificateChain json.RawMessage `json:"x509CertificateChain"`
		} `json:"verificationMaterial"`
		DSSEEnvelope json.RawMessage `json:"dsseEnvelope"`
	}
	require.NoError(t, json.Unmarshal(resp.GetBundle(), &bundle))
	require.Equal(t, "application/vnd.dev.sigstore.bundle.v0.3+json", bundle.MediaType)
	require.Nil(t, bundle.VerificationMaterial.X509CertificateChain, "v0.3 carries the leaf only")
	leaf, err := x509.ParseCertificate(bundle.VerificationMaterial.Certificate.RawBytes)
	require.NoError(t, err)
	require.Equal(t, harness.AgentID.String(), leaf.URIs[0].String())
	ca := readCert(t, stack.LocalCAPath())
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}})
	require.NoError(t, err, "the signing certificate chains to the key manager's CA")

	// DSSE, verified by go-securesystemslib.
	var env dsse.Envelope
	require.NoError(t, json.Unmarshal(bundle.DSSEEnvelope, &env))
	require.Equal(t, "application/vnd.in-toto+json", env.PayloadType)
	verifier, err := dsse.NewEnvelopeVerifier(&ecdsaVerifier{pub: leaf.PublicKey.(*ecdsa.PublicKey)})
	require.NoError(t, err)
	_, err = verifier.Verify(ctx, &env)
	require.NoError(t, err, "DSSE signature")
	payload, err := env.DecodeB64Payload()
	require.NoError(t, err)

	// The statement and predicate, validated by in-toto's Go bindings.
	var st ita1.Statement
	require.NoError(t, protojson.Unmarshal(payload, &st))
	require.NoError(t, st.Validate())
	require.Equal(t, "https://slsa.dev/provenance/v1", st.GetPredicateType())
	predJSON, err := protojson.Marshal(st.GetPredicate())
	require.NoError(t, err)
	var prov provv1.Provenance
	require.NoError(t, protojson.Unmarshal(predJSON, &prov))
	require.NoError(t, prov.Validate())
	bd := prov.GetBuildDefinition()
	require.Equal(t, "https://hallmark.dev/buildtypes/step/v2", bd.GetBuildType())
	require.Equal(t, "build", bd.GetExternalParameters().GetFields()["step"].GetStringValue())
	require.Contains(t, string(predJSON), `"make"`)
	require.Contains(t, string(predJSON), builderID, "the caller's workload identity")
	require.Equal(t, harness.AgentID.String(), prov.GetRunDetails().GetBuilder().GetId())
	require.Equal(t, resp.GetInvocationId(), prov.GetRunDetails().GetMetadata().GetInvocationId())
	var materials []string
	for _, d := range bd.GetResolvedDependencies() {
		materials = append(materials, d.GetName()+" "+d.GetDigest()["sha256"])
	}
	require.ElementsMatch(t, sha256sum(t, ws, "src/main.c", "src/include/x.h"), materials)

	// Subjects: every product, digests as sha256sum prints them.
	var subjects []string
	for _, s := range st.GetSubject() {
		subjects = append(subjects, s.GetName()+" "+s.GetDigest()["sha256"])
	}
	require.ElementsMatch(t, sha256sum(t, ws, "dist/app", "dist/lib/x.so", "dist/README"), subjects)
}

// Must show: refusals state the reason and produce nothing.
func TestAttestRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ws := workspace(t, map[string]string{"out/bin": "binary", "in/src": "source"})
	require.NoError(t, os.Symlink("/etc", filepath.Join(ws, "etc-link")))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(ws, "out", "passwd")))
	many := workspace(t, nil)
	for i := range maxFiles + 1 {
		require.NoError(t, os.WriteFile(filepath.Join(many, fmt.Sprintf("f%04d", i)), []byte{byte(i)}, 0o644))
	}
	huge := make([]string, 0, 20000)
	for i := range cap(huge) {
		huge = append(huge, fmt.Sprintf("out/%0100d", i))
	}
	client := localClient(t, stack.Agent.Socket)
	cases := []struct {
		name     string
		req      *agentv1.AttestStepRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"step outside the caller's policy",
			&agentv1.AttestStepRequest{Step: "deploy", Workspace: ws, Products: []string{"out"}},
			codes.PermissionDenied, `rule "builders" allows steps build, test`},
		{"workspace outside the granted roots",
			&agentv1.AttestStepRequest{Step: "build", Workspace: "/etc", Products: []string{"passwd"}},
			codes.PermissionDenied, "workspace /etc is outside the workspace roots"},
		{"product escaping through a symlinked directory",
			&agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"etc-link/passwd"}},
			codes.PermissionDenied, "etc-link/passwd"},
		{"product directory holding a symlink that escapes",
			&agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"out"}},
			codes.PermissionDenied, "passwd"},
		{"product escaping through ..",
			&agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"../../../etc/passwd"}},
			codes.PermissionDenied, "../../../etc/passwd"},
		{"too many files",
			&agentv1.AttestStepRequest{Step: "build", Workspace: many, Products: []string{"."}},
			codes.InvalidArgument, "files"},
		{"oversized request",
			&agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: huge},
			codes.ResourceExhausted, "larger than max"},
		{"malformed step name",
			&agentv1.AttestStepRequest{Step: "../build", Workspace: ws, Products: []string{"out/bin"}},
			codes.InvalidArgument, "step"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.AttestStep(ctx, tc.req)
			require.Equal(t, tc.wantCode, status.Code(err), "error: %v", err)
			require.ErrorContains(t, err, tc.wantMsg)
			require.Nil(t, resp, "no bundle")
		})
	}
}

// Must show: an unregistered uid is refused, with the reason shown by the
// CLI.
func TestAttestUnregisteredUID(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Fatal("this test runs a caller as uid 65534 and needs root (CI runs as root)")
	}
	ws := workspace(t, map[string]string{"out": "x"})
	out := filepath.Join(t.TempDir(), "bundle.json")
	var cmd *exec.Cmd
	for _, cli := range [][]string{{stack.Bins.CLI, "attest"}, {stack.Bins.Attest}} {
		cmd = exec.Command(cli[0], append(cli[1:], "--socket", stack.Agent.Socket, "--step", "build",
			"--workspace", ws, "--product", "out", "--out", out)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		output, err := cmd.CombinedOutput()
		require.Error(t, err, "output: %s", output)
		require.Contains(t, string(output), "refused: no policy rule matches a caller with no SPIFFE ID (selectors unix:uid:65534", cli[0])
		require.NoFileExists(t, out)
	}

	who := exec.Command(stack.Bins.CLI, "whoami", "--socket", stack.Agent.Socket)
	who.SysProcAttr = cmd.SysProcAttr
	output, err := who.CombinedOutput()
	require.NoError(t, err, "output: %s", output)
	require.Contains(t, string(output), "allowed:     nothing")
}

// The CLI runs a command and attests its products; the bundle lands in
// --out. `hallmark attest` and the light hallmark-attest behave alike.
func TestAttestCLI(t *testing.T) {
	t.Parallel()
	for _, cli := range [][]string{{stack.Bins.CLI, "attest"}, {stack.Bins.Attest}} {
		t.Run(filepath.Base(cli[0]), func(t *testing.T) {
			attest := func(args ...string) *exec.Cmd {
				return exec.Command(cli[0], append(append(cli[1:], "--socket", stack.Agent.Socket), args...)...)
			}
			ws := workspace(t, map[string]string{"in.txt": "hello"})
			out := filepath.Join(ws, "build.hallmark.json")
			cmd := attest("--step", "build", "--material", "in.txt", "--product", "out.txt", "--out", out,
				"--", "sh", "-c", "tr a-z A-Z < in.txt > out.txt")
			cmd.Dir = ws
			output, err := cmd.CombinedOutput()
			require.NoError(t, err, "output: %s", output)
			require.FileExists(t, out)
			b, err := os.ReadFile(out)
			require.NoError(t, err)
			require.Contains(t, string(b), "dsseEnvelope")
			require.Contains(t, string(output), "attested step build (1 products")

			// A failing command is not attested, and its exit code is kept.
			cmd = attest("--step", "test", "--product", "out.txt", "--out", filepath.Join(ws, "t.json"), "--", "sh", "-c", "exit 7")
			cmd.Dir = ws
			output, err = cmd.CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee)
			require.Equal(t, 7, ee.ExitCode(), "output: %s", output)
			require.NoFileExists(t, filepath.Join(ws, "t.json"))

			// A usage error names the flag.
			output, err = attest("--product", "out.txt").CombinedOutput()
			require.ErrorAs(t, err, &ee)
			require.Equal(t, 2, ee.ExitCode())
			require.Contains(t, string(output), "--step is required")
		})
	}
}

// --- helpers ---

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// sha256sum runs the real sha256sum in dir and returns "NAME DIGEST" lines.
func sha256sum(t *testing.T, dir string, files ...string) []string {
	t.Helper()
	cmd := exec.Command("sha256sum", files...)
	cmd.Dir = dir
	out, err := cmd.Output()
	require.NoError(t, err)
	var lines []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		digest, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, line)
		lines = append(lines, name+" "+digest)
	}
	return lines
}

// ecdsaVerifier is a go-securesystemslib dsse.Verifier for ECDSA keys.
type ecdsaVerifier struct{ pub *ecdsa.PublicKey }

func (v *ecdsaVerifier) Verify(_ context.Context, data, sig []byte) error {
	digest := sha256.Sum256(data)
	if !ecdsa.VerifyASN1(v.pub, digest[:], sig) {
		return fmt.Errorf("ecdsa: bad signature")
	}
	return nil
}

func (v *ecdsaVerifier) KeyID() (string, error) { return "", nil }

func (v *ecdsaVerifier) Public() crypto.PublicKey { return v.pub }

// The server holds policy and pushes it to agents that have none of their
// own; the agent follows it, allowed and denied.
func TestAttestWithServerPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "hallmark-server-policy", harness.ServerOptions{Policy: fmt.Sprintf(`
  rule "releasers" {
    spiffe_ids      = [%q]
    steps           = ["release"]
    workspace_roots = [%q]
  }`, builderID, filepath.Join(stack.Dir, "workspaces"))})
	ag := startAgent(t, "hallmark-agent-policy", srv, harness.ServerID) // no policy block of its own
	waitFor(t, "the agent to take the server's policy", 30*time.Second, func() error {
		if st := agentStatus(t, ag); st.Policy.Source != "server" {
			return fmt.Errorf("policy source %q", st.Policy.Source)
		}
		return nil
	})
	require.Equal(t, []string{"releasers"}, agentStatus(t, ag).Policy.Rules)

	ws := workspace(t, map[string]string{"pkg.tar": "package"})
	client := localClient(t, ag.Socket)
	resp, err := client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "release", Workspace: ws, Products: []string{"pkg.tar"}})
	require.NoError(t, err, "the server's policy allows release")
	require.NotEmpty(t, resp.GetBundle())

	_, err = client.AttestStep(ctx, &agentv1.AttestStepRequest{Step: "build", Workspace: ws, Products: []string{"pkg.tar"}})
	require.Equal(t, codes.PermissionDenied, status.Code(err))
	require.ErrorContains(t, err, `rule "releasers" allows steps release`)
}

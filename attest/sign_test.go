package attest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	slsa1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hallmark-dev/hallmark/attest"
)

// ecdsaVerifier is a go-securesystemslib dsse.Verifier written from the DSSE
// and Sigstore conventions, not from package attest: ECDSA, ASN.1 DER, over
// SHA-256 of the PAE that the dsse package computes itself.
type ecdsaVerifier struct{ pub *ecdsa.PublicKey }

func (v ecdsaVerifier) Verify(_ context.Context, data, sig []byte) error {
	digest := sha256.Sum256(data)
	if !ecdsa.VerifyASN1(v.pub, digest[:], sig) {
		return errors.New("ecdsa: bad signature")
	}
	return nil
}
func (v ecdsaVerifier) KeyID() (string, error)   { return "", nil }
func (v ecdsaVerifier) Public() crypto.PublicKey { return v.pub }

// The JSON shapes below are written from the in-toto, SLSA and Sigstore
// specs and docs/buildtypes/step-v2.md; decoding with DisallowUnknownFields
// pins the exact set of fields.

type bundleJSON struct {
	MediaType            string `json:"mediaType"`
	VerificationMaterial struct {
		Certificate *struct {
			RawBytes []byte `json:"rawBytes"`
		} `json:"certificate"`
	} `json:"verificationMaterial"`
	DSSEEnvelope json.RawMessage `json:"dsseEnvelope"`
}

type descriptorJSON struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// dependencyJSON is a resolvedDependencies entry: a file (name, sha256)
// or a git source (name, uri, gitCommit, annotations).
type dependencyJSON struct {
	Name        string            `json:"name"`
	URI         string            `json:"uri"`
	Digest      map[string]string `json:"digest"`
	Annotations *struct {
		Clean     bool   `json:"clean"`
		Ref       string `json:"ref"`
		RemoteURL string `json:"remote_url"`
		Tree      string `json:"tree"`
	} `json:"annotations"`
}

type statementJSON struct {
	Type          string           `json:"_type"`
	Subject       []descriptorJSON `json:"subject"`
	PredicateType string           `json:"predicateType"`
	Predicate     json.RawMessage  `json:"predicate"`
}

type predicateJSON struct {
	BuildDefinition struct {
		BuildType          string `json:"buildType"`
		ExternalParameters struct {
			Step         string            `json:"step"`
			Command      []string          `json:"command"`
			CallerClaims map[string]string `json:"caller_claims"`
		} `json:"externalParameters"`
		InternalParameters struct {
			Workload struct {
				SPIFFEIDs []string `json:"spiffe_ids"`
				Selectors []string `json:"selectors"`
				PID       int32    `json:"pid"`
				UID       uint32   `json:"uid"`
				GID       uint32   `json:"gid"`
			} `json:"workload"`
			CallerCmdline []string `json:"caller_cmdline"`
			Workspace     string   `json:"workspace"`
		} `json:"internalParameters"`
		ResolvedDependencies []dependencyJSON `json:"resolvedDependencies"`
	} `json:"buildDefinition"`
	RunDetails struct {
		Builder struct {
			ID string `json:"id"`
		} `json:"builder"`
		Metadata struct {
			InvocationID string    `json:"invocationId"`
			StartedOn    time.Time `json:"startedOn"`
			FinishedOn   time.Time `json:"finishedOn"`
		} `json:"metadata"`
	} `json:"runDetails"`
}

func decodeStrict(t *testing.T, data []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(v))
}

func TestSignIndependentChecks(t *testing.T) {
	pki := newTestPKI(t)

	minimal := attest.Step{
		Name:      "package",
		Products:  []attest.Artifact{{Name: "out.bin", SHA256: sha256Hex("x")}},
		BuilderID: testAgentID,
	}
	manyProducts := testStep()
	for i := range 50 {
		name := "gen/file-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		manyProducts.Products = append(manyProducts.Products, attest.Artifact{Name: name, SHA256: sha256Hex(name)})
	}

	withSources := testStep()
	withSources.CallerClaims = map[string]string{"job": "build", "run_id": "42", "ref": "refs/heads/main"}
	withSources.Sources = []attest.GitSource{
		{Path: "vendor/lib", Commit: strings.Repeat("b", 40), Tree: strings.Repeat("c", 40), RemoteURL: "git@example.org:acme/lib.git"},
		{Path: ".", Commit: strings.Repeat("1", 40), Tree: strings.Repeat("2", 40), Clean: true,
			Ref: "refs/heads/main", RemoteURL: "https://git.example.org/acme/widget.git"},
	}

	for _, tc := range []struct {
		name string
		step attest.Step
	}{
		{"full step", testStep()},
		{"minimal step", minimal},
		{"many products", manyProducts},
		{"git sources and claims", withSources},
	} {
		t.Run(tc.name, func(t *testing.T) {
			step := tc.step
			bundleBytes, err := attest.Sign(step, pki.signer, pki.leaf)
			require.NoError(t, err)

			// (5) Bundle JSON: v0.3 media type, the leaf alone.
			var raw map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(bundleBytes, &raw))
			require.ElementsMatch(t, []string{"mediaType", "verificationMaterial", "dsseEnvelope"}, keys(raw))
			var vm map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(raw["verificationMaterial"], &vm))
			require.NotContains(t, vm, "x509CertificateChain")
			require.NotContains(t, vm, "publicKey")
			require.NotContains(t, vm, "tlogEntries", "no log entries until the log lands")
			var b bundleJSON
			decodeStrict(t, bundleBytes, &b)
			require.Equal(t, "application/vnd.dev.sigstore.bundle.v0.3+json", b.MediaType)
			require.NotNil(t, b.VerificationMaterial.Certificate)
			require.Equal(t, pki.leaf.Raw, b.VerificationMaterial.Certificate.RawBytes)

			// (1) DSSE signature verifies with go-securesystemslib. The
			// bundle's dsseEnvelope JSON is the DSSE envelope JSON format.
			var env dsse.Envelope
			decodeStrict(t, b.DSSEEnvelope, &env)
			require.Equal(t, "application/vnd.in-toto+json", env.PayloadType)
			require.Len(t, env.Signatures, 1)
			require.Empty(t, env.Signatures[0].KeyID)
			ev, err := dsse.NewEnvelopeVerifier(ecdsaVerifier{pub: &pki.signer.PublicKey})
			require.NoError(t, err)
			accepted, payload, err := ev.VerifyAndDecode(context.Background(), &env)
			require.NoError(t, err)
			require.Len(t, accepted, 1)

			// ... and a tampered payload does not.
			tampered := env
			tampered.Payload = base64.StdEncoding.EncodeToString(append(bytes.Clone(payload), ' '))
			_, err = ev.Verify(context.Background(), &tampered)
			require.Error(t, err)

			// (2) The statement and predicate pass in-toto's validation.
			var st ita1.Statement
			require.NoError(t, protojson.Unmarshal(payload, &st))
			require.NoError(t, st.Validate())
			require.Equal(t, "https://in-toto.io/Statement/v1", st.GetType())
			require.Equal(t, "https://slsa.dev/provenance/v1", st.GetPredicateType())
			predBytes, err := protojson.Marshal(st.GetPredicate())
			require.NoError(t, err)
			var prov slsa1.Provenance
			require.NoError(t, protojson.Unmarshal(predBytes, &prov))
			require.NoError(t, prov.Validate())

			// (4) Subjects are exactly the products, sorted by name.
			var sj statementJSON
			decodeStrict(t, payload, &sj)
			require.Equal(t, "https://in-toto.io/Statement/v1", sj.Type)
			require.Equal(t, wantDescriptors(step.Products), sj.Subject)

			// (3) The predicate carries exactly what the step had.
			var pj predicateJSON
			decodeStrict(t, sj.Predicate, &pj)
			bd := pj.BuildDefinition
			require.Equal(t, "https://hallmark.dev/buildtypes/step/v2", bd.BuildType)
			require.Equal(t, step.Name, bd.ExternalParameters.Step)
			require.Equal(t, orEmpty(step.Command), bd.ExternalParameters.Command)
			wantClaims := step.CallerClaims
			if wantClaims == nil {
				wantClaims = map[string]string{}
			}
			require.Equal(t, wantClaims, bd.ExternalParameters.CallerClaims)
			w := bd.InternalParameters.Workload
			require.Equal(t, orEmpty(step.Workload.SPIFFEIDs), w.SPIFFEIDs)
			require.Equal(t, orEmpty(step.Workload.Selectors), w.Selectors)
			require.Equal(t, step.Workload.PID, w.PID)
			require.Equal(t, step.Workload.UID, w.UID)
			require.Equal(t, step.Workload.GID, w.GID)
			require.Equal(t, orEmpty(step.CallerCmdline), bd.InternalParameters.CallerCmdline)
			require.Equal(t, step.Workspace, bd.InternalParameters.Workspace)
			require.Equal(t, wantDependencies(step), bd.ResolvedDependencies)
			rd := pj.RunDetails
			require.Equal(t, step.BuilderID, rd.Builder.ID)
			require.Equal(t, step.InvocationID, rd.Metadata.InvocationID)
			require.True(t, step.StartedOn.Equal(rd.Metadata.StartedOn), "startedOn %s != %s", rd.Metadata.StartedOn, step.StartedOn)
			require.True(t, step.FinishedOn.Equal(rd.Metadata.FinishedOn), "finishedOn %s != %s", rd.Metadata.FinishedOn, step.FinishedOn)

			// The library's own helpers agree.
			parsed, err := attest.ParseBundle(bundleBytes)
			require.NoError(t, err)
			got, err := attest.VerifyEnvelope(parsed.GetDsseEnvelope(), pki.leaf.PublicKey)
			require.NoError(t, err)
			require.Equal(t, payload, got)
		})
	}
}

// wantDependencies is what resolvedDependencies must hold for step, as
// docs/buildtypes/step-v2.md says: the materials sorted by name, then the
// git sources sorted by path, with a git+URL@REF uri when the remote URL
// is an absolute URL.
func wantDependencies(step attest.Step) []dependencyJSON {
	var out []dependencyJSON
	for _, d := range wantDescriptors(step.Materials) {
		out = append(out, dependencyJSON{Name: d.Name, Digest: d.Digest})
	}
	srcs := slices.Clone(step.Sources)
	slices.SortFunc(srcs, func(a, b attest.GitSource) int { return strings.Compare(a.Path, b.Path) })
	for _, g := range srcs {
		d := dependencyJSON{Name: g.Path, Digest: map[string]string{"gitCommit": g.Commit}}
		if strings.HasPrefix(g.RemoteURL, "https://") {
			d.URI = "git+" + g.RemoteURL + "@" + g.Ref
		}
		d.Annotations = &struct {
			Clean     bool   `json:"clean"`
			Ref       string `json:"ref"`
			RemoteURL string `json:"remote_url"`
			Tree      string `json:"tree"`
		}{g.Clean, g.Ref, g.RemoteURL, g.Tree}
		out = append(out, d)
	}
	return out
}

func TestSignDeterministicPayload(t *testing.T) {
	// The payload depends only on the step: input order of products and
	// materials does not matter.
	a := testStep()
	b := testStep()
	b.Products[0], b.Products[2] = b.Products[2], b.Products[0]
	b.Materials[0], b.Materials[1] = b.Materials[1], b.Materials[0]
	pa := marshalStep(t, a)
	pb := marshalStep(t, b)
	require.Equal(t, pa, pb)
	require.True(t, json.Valid(pa))
	require.NotContains(t, string(pa), "\n")
}

func TestSignErrors(t *testing.T) {
	pki := newTestPKI(t)
	other := newTestPKI(t)
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)

	noProducts := testStep()
	noProducts.Products = nil

	for _, tc := range []struct {
		name    string
		step    attest.Step
		signer  crypto.Signer
		leaf    bool
		wantErr string
	}{
		{"nil signer", testStep(), nil, true, "nil signer"},
		{"ed25519 signer", testStep(), edPriv, true, "want an ECDSA P-256 key"},
		{"rsa signer", testStep(), rsaKey, true, "want an ECDSA P-256 key"},
		{"p384 signer", testStep(), p384, true, "want P-256"},
		{"leaf for another key", testStep(), other.signer, true, "does not certify the signer's public key"},
		{"no leaf", testStep(), pki.signer, false, "no leaf certificate"},
		{"signer fails", testStep(), failingSigner{pki.signer}, true, "hsm unavailable"},
		{"signer returns raw r||s", testStep(), rawSigner{pki.signer}, true, "not ASN.1 DER"},
		{"bad step", noProducts, pki.signer, true, "no products"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf := pki.leaf
			if !tc.leaf {
				leaf = nil
			}
			out, err := attest.Sign(tc.step, tc.signer, leaf)
			require.ErrorContains(t, err, tc.wantErr)
			require.Nil(t, out)
		})
	}
}

func marshalStep(t *testing.T, s attest.Step) []byte {
	t.Helper()
	st, err := attest.NewStatement(s)
	require.NoError(t, err)
	b, err := attest.MarshalStatement(st)
	require.NoError(t, err)
	return b
}

func wantDescriptors(arts []attest.Artifact) []descriptorJSON {
	out := make([]descriptorJSON, len(arts))
	for i, a := range arts {
		out[i] = descriptorJSON{Name: a.Name, Digest: map[string]string{"sha256": a.SHA256}}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func orEmpty(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

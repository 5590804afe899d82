package pipeline

import (
	"errors"
	"fmt"
	"strings"

	ita1 "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
)

// Material is a file a step consumed, as its attestation records it.
type Material = verify.Subject

// GitSource is a git work tree a step's agent read (build type step/v2,
// docs/buildtypes/step-v2.md).
type GitSource struct {
	Path      string `json:"path"`
	Commit    string `json:"commit"`
	Tree      string `json:"tree"`
	Clean     bool   `json:"clean"`
	Ref       string `json:"ref"`
	RemoteURL string `json:"remoteUrl"`
}

// stepProvenance is what the chain walk reads from a statement beyond what
// verify.Result carries: the materials, the git sources and the caller's
// claims.
type stepProvenance struct {
	buildType string
	materials []Material
	sources   []GitSource
	claims    map[string]string
}

// readProvenance reads the statement of a bundle that verify.Verify has
// just accepted: the bytes are the ones whose signature, log entry and
// certificate were checked, so the statement is trusted, but its
// resolvedDependencies are read here for the first time and checked as
// strictly as the build type defines them.
func readProvenance(bundleJSON []byte) (stepProvenance, error) {
	b, err := attest.ParseBundle(bundleJSON)
	if err != nil {
		return stepProvenance{}, err
	}
	var st ita1.Statement
	if err := protojson.Unmarshal(b.GetDsseEnvelope().GetPayload(), &st); err != nil {
		return stepProvenance{}, fmt.Errorf("statement: %w", err)
	}
	bd := st.GetPredicate().GetFields()["buildDefinition"].GetStructValue()
	var p stepProvenance
	p.buildType = bd.GetFields()["buildType"].GetStringValue()
	v2 := p.buildType == attest.BuildType
	if !v2 && p.buildType != attest.BuildTypeV1 {
		return stepProvenance{}, fmt.Errorf("buildType %q is not step/v1 or step/v2", p.buildType)
	}
	if v2 {
		ext := bd.GetFields()["externalParameters"].GetStructValue()
		claims := ext.GetFields()["caller_claims"].GetStructValue()
		if claims == nil {
			return stepProvenance{}, errors.New("externalParameters.caller_claims is missing")
		}
		p.claims = map[string]string{}
		for k, v := range claims.GetFields() {
			s, ok := v.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return stepProvenance{}, fmt.Errorf("caller_claims.%s is not a string", k)
			}
			p.claims[k] = s.StringValue
		}
	}
	deps, ok := bd.GetFields()["resolvedDependencies"]
	if !ok {
		return p, nil
	}
	list := deps.GetListValue()
	if list == nil {
		return stepProvenance{}, errors.New("resolvedDependencies is not an array")
	}
	for i, v := range list.GetValues() {
		d := v.GetStructValue()
		if d == nil {
			return stepProvenance{}, fmt.Errorf("resolvedDependencies[%d] is not an object", i)
		}
		digest := d.GetFields()["digest"].GetStructValue().GetFields()
		name, ok := stringOf(d, "name")
		if !ok {
			return stepProvenance{}, fmt.Errorf("resolvedDependencies[%d] has no name", i)
		}
		switch {
		case len(digest) == 1 && digest["sha256"] != nil:
			sum := digest["sha256"].GetStringValue()
			if len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "" {
				return stepProvenance{}, fmt.Errorf("resolvedDependencies[%d] %q: sha256 is not 64 lowercase hex digits", i, name)
			}
			p.materials = append(p.materials, Material{Name: name, SHA256: sum})
		case v2 && len(digest) == 1 && digest[attest.DigestGitCommit] != nil:
			g, err := readGitSource(d, name, digest[attest.DigestGitCommit].GetStringValue())
			if err != nil {
				return stepProvenance{}, fmt.Errorf("resolvedDependencies[%d]: %w", i, err)
			}
			p.sources = append(p.sources, g)
		default:
			return stepProvenance{}, fmt.Errorf("resolvedDependencies[%d] %q: digest is neither a file's sha256 nor a git source's gitCommit", i, name)
		}
	}
	return p, nil
}

func readGitSource(d *structpb.Struct, name, commit string) (GitSource, error) {
	ann := d.GetFields()["annotations"].GetStructValue()
	if ann == nil {
		return GitSource{}, fmt.Errorf("git source %q has no annotations", name)
	}
	g := GitSource{Path: name, Commit: commit}
	clean, ok := ann.GetFields()["clean"].GetKind().(*structpb.Value_BoolValue)
	if !ok {
		return GitSource{}, fmt.Errorf("git source %q: annotations.clean is not a boolean", name)
	}
	g.Clean = clean.BoolValue
	for _, f := range []struct {
		key string
		dst *string
	}{{"tree", &g.Tree}, {"ref", &g.Ref}, {"remote_url", &g.RemoteURL}} {
		v, ok := stringOf(ann, f.key)
		if !ok {
			return GitSource{}, fmt.Errorf("git source %q: annotations.%s is not a string", name, f.key)
		}
		*f.dst = v
	}
	if checkCommit(g.Commit) != nil || checkCommit(g.Tree) != nil {
		return GitSource{}, fmt.Errorf("git source %q: commit and tree must be 40 lowercase hex digits", name)
	}
	return g, nil
}

func stringOf(s *structpb.Struct, key string) (string, bool) {
	v, ok := s.GetFields()[key].GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", false
	}
	return v.StringValue, true
}

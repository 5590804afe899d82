package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	slsa1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest/claims"
)

const (
	// BuildType is the SLSA buildType URI of a Hallmark-attested step. Its
	// parameters are documented in docs/buildtypes/step-v2.md.
	BuildType = "https://hallmark.dev/buildtypes/step/v2"
	// BuildTypeV1 is the build type of attestations made before git
	// sources and caller claims were recorded (docs/buildtypes/step-v1.md).
	// Verifiers still read it; nothing writes it.
	BuildTypeV1 = "https://hallmark.dev/buildtypes/step/v1"
	// PredicateType is the in-toto predicateType of SLSA Provenance v1.
	PredicateType = "https://slsa.dev/provenance/v1"
	// PayloadType is the DSSE payloadType of an in-toto statement.
	PayloadType = "application/vnd.in-toto+json"
)

// Artifact is a file measured by the agent.
type Artifact struct {
	// Name is the slash-separated path relative to the workspace
	// (as accepted by [io/fs.ValidPath], and not ".").
	Name string
	// SHA256 is the lowercase hex SHA-256 of the file's content.
	SHA256 string
}

// Workload is the caller as the agent's attestors saw it.
type Workload struct {
	// SPIFFEIDs are the caller's SPIFFE IDs from the spire attestor.
	SPIFFEIDs []string
	// Selectors are type:value selectors from the workload attestors.
	Selectors []string
	// PID, UID and GID are the caller's peer credentials (SO_PEERCRED).
	PID      int32
	UID, GID uint32
}

// GitSource is a git work tree the agent read itself: the commit checked
// out and whether the files on disk are exactly that commit's tree.
type GitSource struct {
	// Path is the work tree's directory relative to the workspace,
	// slash-separated; "." is the workspace itself.
	Path string
	// Commit is HEAD's commit ID and Tree its tree's ID, lowercase hex
	// (SHA-1: 40 digits).
	Commit, Tree string
	// Clean is true when the work tree holds exactly Tree: no tracked
	// file changed or missing and no other file (ignored ones included).
	Clean bool
	// Ref is HEAD's symbolic ref (refs/heads/main) or empty when HEAD is
	// detached.
	Ref string
	// RemoteURL is the configured remote's URL, credentials removed: the
	// repository's own say, recorded as evidence. Empty when none.
	RemoteURL string
}

// Limits on what a caller may claim (Step.CallerClaims).
const (
	MaxCallerClaims     = claims.MaxClaims
	MaxCallerClaimBytes = claims.MaxClaimBytes
)

// Step is everything the agent knows about one attested step.
//
// All strings must be valid UTF-8: the statement is JSON and cannot carry
// anything else faithfully.
type Step struct {
	// Name is the step name that policy authorized (required).
	Name string
	// Workspace is the directory that artifact names are relative to.
	Workspace string
	// Command is the command as the caller reported it (may be empty).
	Command []string
	// CallerCmdline is read by the agent from /proc/PID/cmdline.
	CallerCmdline []string
	// Products become the statement's subjects (at least one).
	Products []Artifact
	// Materials become the predicate's resolvedDependencies.
	Materials []Artifact
	// Sources are git work trees the agent read; they become
	// resolvedDependencies with a gitCommit digest, after the materials.
	Sources []GitSource
	// CallerClaims is CI context only the caller knows (job, run, ref),
	// recorded as the caller's claim: keys are 1-64 of [a-z0-9_]
	// starting with a letter, values at most MaxCallerClaimBytes.
	CallerClaims map[string]string
	// Workload is the caller's identity.
	Workload Workload
	// BuilderID is the agent's SPIFFE ID (an absolute URI, required).
	BuilderID string
	// InvocationID identifies this attestation request (optional).
	InvocationID string
	// StartedOn and FinishedOn bound the step; either may be zero (omitted).
	StartedOn, FinishedOn time.Time
}

// Keys of the buildType's parameters; docs/buildtypes/step-v2.md documents
// each one.
const (
	keyStep          = "step"
	keyCommand       = "command"
	keyWorkload      = "workload"
	keySPIFFEIDs     = "spiffe_ids"
	keySelectors     = "selectors"
	keyPID           = "pid"
	keyUID           = "uid"
	keyGID           = "gid"
	keyCallerCmdline = "caller_cmdline"
	keyWorkspace     = "workspace"
	keyCallerClaims  = "caller_claims"
	// annotations of a git source (docs/buildtypes/step-v2.md)
	keyClean     = "clean"
	keyRef       = "ref"
	keyRemoteURL = "remote_url"
	keyTree      = "tree"
	// DigestGitCommit is the in-toto digest algorithm of a git source.
	DigestGitCommit = string(ita1.AlgorithmGitCommit)
)

// NewStatement returns the in-toto Statement v1 for s: one subject per
// product (sorted by name) and an SLSA Provenance v1 predicate of build type
// [BuildType]. Both the predicate and the statement pass the in-toto
// library's Validate.
func NewStatement(s Step) (*ita1.Statement, error) {
	if err := checkStep(s); err != nil {
		return nil, err
	}
	subjects, err := descriptors("product", s.Products)
	if err != nil {
		return nil, err
	}
	if len(subjects) == 0 {
		return nil, errNoProducts
	}
	deps, err := descriptors("material", s.Materials)
	if err != nil {
		return nil, err
	}
	sources, err := sortedSources(s.Sources)
	if err != nil {
		return nil, err
	}
	for _, g := range sources {
		deps = append(deps, g.descriptor())
	}

	external, err := structpb.NewStruct(map[string]any{
		keyStep:         s.Name,
		keyCommand:      stringList(s.Command),
		keyCallerClaims: claimsMap(s.CallerClaims),
	})
	if err != nil {
		return nil, fmt.Errorf("attest: external parameters: %w", err)
	}
	internal, err := structpb.NewStruct(map[string]any{
		keyWorkload: map[string]any{
			keySPIFFEIDs: stringList(s.Workload.SPIFFEIDs),
			keySelectors: stringList(s.Workload.Selectors),
			keyPID:       s.Workload.PID,
			keyUID:       s.Workload.UID,
			keyGID:       s.Workload.GID,
		},
		keyCallerCmdline: stringList(s.CallerCmdline),
		keyWorkspace:     s.Workspace,
	})
	if err != nil {
		return nil, fmt.Errorf("attest: internal parameters: %w", err)
	}

	prov := &slsa1.Provenance{
		BuildDefinition: &slsa1.BuildDefinition{
			BuildType:            BuildType,
			ExternalParameters:   external,
			InternalParameters:   internal,
			ResolvedDependencies: deps,
		},
		RunDetails: &slsa1.RunDetails{
			Builder:  &slsa1.Builder{Id: s.BuilderID},
			Metadata: metadata(s),
		},
	}
	if err := prov.Validate(); err != nil {
		return nil, fmt.Errorf("attest: invalid provenance: %w", err)
	}
	predicate := provenanceStruct(prov)

	st := &ita1.Statement{
		Type:          ita1.StatementTypeUri,
		Subject:       subjects,
		PredicateType: PredicateType,
		Predicate:     predicate,
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("attest: invalid statement: %w", err)
	}
	return st, nil
}

// MarshalStatement returns the JSON encoding of st that is signed as the DSSE
// payload: protojson output with insignificant whitespace removed, so the
// bytes depend only on st (fields in schema order, object keys sorted).
func MarshalStatement(st *ita1.Statement) ([]byte, error) {
	if st == nil {
		return nil, errors.New("attest: nil statement")
	}
	b, err := marshalCompact(st)
	if err != nil {
		return nil, fmt.Errorf("attest: marshal statement: %w", err)
	}
	return b, nil
}

func checkStep(s Step) error {
	if s.Name == "" {
		return errors.New("attest: step name is empty")
	}
	if s.BuilderID == "" {
		return errors.New("attest: builder ID is empty")
	}
	if u, err := url.Parse(s.BuilderID); err != nil || !u.IsAbs() {
		return fmt.Errorf("attest: builder ID %q is not an absolute URI", s.BuilderID)
	}
	if !s.StartedOn.IsZero() && !s.FinishedOn.IsZero() && s.FinishedOn.Before(s.StartedOn) {
		return fmt.Errorf("attest: step finished (%s) before it started (%s)",
			s.FinishedOn.Format(time.RFC3339Nano), s.StartedOn.Format(time.RFC3339Nano))
	}
	// protojson refuses invalid UTF-8; say which field it was.
	fields := []struct {
		name string
		vals []string
	}{
		{"step name", []string{s.Name}},
		{"workspace", []string{s.Workspace}},
		{"builder ID", []string{s.BuilderID}},
		{"invocation ID", []string{s.InvocationID}},
		{"command", s.Command},
		{"caller cmdline", s.CallerCmdline},
		{"workload SPIFFE IDs", s.Workload.SPIFFEIDs},
		{"workload selectors", s.Workload.Selectors},
	}
	for _, f := range fields {
		for i, v := range f.vals {
			if !utf8.ValidString(v) {
				return fmt.Errorf("attest: %s[%d] is not valid UTF-8", f.name, i)
			}
		}
	}
	return CheckCallerClaims(s.CallerClaims)
}

// CheckCallerClaims bounds what a caller may have recorded as its claim
// (Step.CallerClaims).
func CheckCallerClaims(c map[string]string) error { return claims.Check(c) }

// ValidClaimKey reports whether k may name a caller claim.
func ValidClaimKey(k string) bool { return claims.ValidKey(k) }

func claimsMap(claims map[string]string) map[string]any {
	out := make(map[string]any, len(claims))
	for k, v := range claims {
		out[k] = v
	}
	return out
}

// sortedSources returns a copy of srcs sorted by path, refusing bad
// paths, bad IDs, credentials in a remote URL and duplicates.
func sortedSources(srcs []GitSource) ([]GitSource, error) {
	sorted := slices.Clone(srcs)
	slices.SortFunc(sorted, func(a, b GitSource) int { return strings.Compare(a.Path, b.Path) })
	for i, g := range sorted {
		if !utf8.ValidString(g.Path) || !fs.ValidPath(g.Path) {
			return nil, fmt.Errorf("attest: git source path %q is not a slash-separated relative path", g.Path)
		}
		if i > 0 && sorted[i-1].Path == g.Path {
			return nil, fmt.Errorf("attest: duplicate git source %q", g.Path)
		}
		if !isLowerHex(g.Commit, 40) || !isLowerHex(g.Tree, 40) {
			return nil, fmt.Errorf("attest: git source %q: commit and tree must be 40 lowercase hex digits", g.Path)
		}
		if g.Ref != "" && (!strings.HasPrefix(g.Ref, "refs/") || !utf8.ValidString(g.Ref)) {
			return nil, fmt.Errorf("attest: git source %q: ref %q does not start with refs/", g.Path, g.Ref)
		}
		if !utf8.ValidString(g.RemoteURL) {
			return nil, fmt.Errorf("attest: git source %q: remote URL is not valid UTF-8", g.Path)
		}
		if u, err := url.Parse(g.RemoteURL); err == nil && u.User != nil {
			if _, hasPassword := u.User.Password(); hasPassword {
				return nil, fmt.Errorf("attest: git source %q: remote URL carries a password", g.Path)
			}
		}
	}
	return sorted, nil
}

// URI is the source's SLSA-style locator, git+URL@REF, or empty when the
// remote URL is not an absolute URL.
func (g GitSource) URI() string {
	u, err := url.Parse(g.RemoteURL)
	if err != nil || !u.IsAbs() || u.Opaque != "" {
		return ""
	}
	uri := "git+" + g.RemoteURL
	if g.Ref != "" {
		uri += "@" + g.Ref
	}
	return uri
}

func (g GitSource) descriptor() *ita1.ResourceDescriptor {
	return &ita1.ResourceDescriptor{
		Name:   g.Path,
		Uri:    g.URI(),
		Digest: map[string]string{DigestGitCommit: g.Commit},
		Annotations: &structpb.Struct{Fields: map[string]*structpb.Value{
			keyClean:     structpb.NewBoolValue(g.Clean),
			keyRef:       structpb.NewStringValue(g.Ref),
			keyRemoteURL: structpb.NewStringValue(g.RemoteURL),
			keyTree:      structpb.NewStringValue(g.Tree),
		}},
	}
}

// errNoProducts means a step names no products.
var errNoProducts = errors.New("attest: step has no products: a statement needs at least one subject")

// descriptors turns artifacts into resource descriptors sorted by name,
// refusing bad names, bad digests and duplicates.
func descriptors(kind string, arts []Artifact) ([]*ita1.ResourceDescriptor, error) {
	sorted, err := sortedArtifacts(kind, arts)
	if err != nil {
		return nil, err
	}
	out := make([]*ita1.ResourceDescriptor, 0, len(sorted))
	for _, a := range sorted {
		out = append(out, &ita1.ResourceDescriptor{
			Name:   a.Name,
			Digest: map[string]string{string(ita1.AlgorithmSHA256): a.SHA256},
		})
	}
	return out, nil
}

// sortedArtifacts returns a copy of arts sorted by name, refusing bad
// names, bad digests and duplicates.
func sortedArtifacts(kind string, arts []Artifact) ([]Artifact, error) {
	sorted := slices.Clone(arts)
	slices.SortFunc(sorted, func(a, b Artifact) int { return strings.Compare(a.Name, b.Name) })
	for i, a := range sorted {
		if !utf8.ValidString(a.Name) || !fs.ValidPath(a.Name) || a.Name == "." {
			return nil, fmt.Errorf("attest: %s name %q is not a slash-separated relative path", kind, a.Name)
		}
		if i > 0 && sorted[i-1].Name == a.Name {
			return nil, fmt.Errorf("attest: duplicate %s %q", kind, a.Name)
		}
		if !isLowerHexSHA256(a.SHA256) {
			return nil, fmt.Errorf("attest: %s %q: sha256 %q is not 64 lowercase hex digits", kind, a.Name, a.SHA256)
		}
	}
	return sorted, nil
}

func isLowerHexSHA256(s string) bool { return isLowerHex(s, 64) }

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// stringList converts to the []any that structpb wants; nil becomes an
// empty list so every key is always present.
func stringList(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func metadata(s Step) *slsa1.BuildMetadata {
	m := &slsa1.BuildMetadata{InvocationId: s.InvocationID}
	if !s.StartedOn.IsZero() {
		m.StartedOn = timestamppb.New(s.StartedOn)
	}
	if !s.FinishedOn.IsZero() {
		m.FinishedOn = timestamppb.New(s.FinishedOn)
	}
	if m.InvocationId == "" && m.StartedOn == nil && m.FinishedOn == nil {
		return nil
	}
	return m
}

// provenanceStruct is the generic Struct that a Statement carries for
// prov: its canonical JSON mapping (as protojson writes it), built directly
// rather than through JSON. It covers the fields NewStatement sets.
func provenanceStruct(prov *slsa1.Provenance) *structpb.Struct {
	bd := prov.GetBuildDefinition()
	def := map[string]*structpb.Value{
		"buildType":          structpb.NewStringValue(bd.GetBuildType()),
		"externalParameters": structpb.NewStructValue(bd.GetExternalParameters()),
		"internalParameters": structpb.NewStructValue(bd.GetInternalParameters()),
	}
	if deps := bd.GetResolvedDependencies(); len(deps) > 0 {
		list := make([]*structpb.Value, len(deps))
		for i, d := range deps {
			list[i] = descriptorValue(d)
		}
		def["resolvedDependencies"] = structpb.NewListValue(&structpb.ListValue{Values: list})
	}
	rd := prov.GetRunDetails()
	run := map[string]*structpb.Value{
		"builder": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"id": structpb.NewStringValue(rd.GetBuilder().GetId()),
		}}),
	}
	if md := rd.GetMetadata(); md != nil {
		m := map[string]*structpb.Value{}
		if md.GetInvocationId() != "" {
			m["invocationId"] = structpb.NewStringValue(md.GetInvocationId())
		}
		if ts := md.GetStartedOn(); ts != nil {
			m["startedOn"] = structpb.NewStringValue(string(appendTimestamp(nil, ts.AsTime())))
		}
		if ts := md.GetFinishedOn(); ts != nil {
			m["finishedOn"] = structpb.NewStringValue(string(appendTimestamp(nil, ts.AsTime())))
		}
		run["metadata"] = structpb.NewStructValue(&structpb.Struct{Fields: m})
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		"buildDefinition": structpb.NewStructValue(&structpb.Struct{Fields: def}),
		"runDetails":      structpb.NewStructValue(&structpb.Struct{Fields: run}),
	}}
}

// descriptorValue is the JSON mapping of a resource descriptor (name,
// uri, digest, annotations) as a Struct value.
func descriptorValue(d *ita1.ResourceDescriptor) *structpb.Value {
	f := map[string]*structpb.Value{}
	if d.GetName() != "" {
		f["name"] = structpb.NewStringValue(d.GetName())
	}
	if d.GetUri() != "" {
		f["uri"] = structpb.NewStringValue(d.GetUri())
	}
	if a := d.GetAnnotations(); a != nil {
		f["annotations"] = structpb.NewStructValue(a)
	}
	if len(d.GetDigest()) > 0 {
		digest := make(map[string]*structpb.Value, len(d.GetDigest()))
		for alg, v := range d.GetDigest() {
			digest[alg] = structpb.NewStringValue(v)
		}
		f["digest"] = structpb.NewStructValue(&structpb.Struct{Fields: digest})
	}
	return structpb.NewStructValue(&structpb.Struct{Fields: f})
}

// marshalCompact is protojson with its deliberately unstable whitespace
// removed.
func marshalCompact(m proto.Message) ([]byte, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(b))
	if err := json.Compact(&buf, b); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

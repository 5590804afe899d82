package verify

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	ita1 "github.com/in-toto/attestation/go/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/hallmark-dev/hallmark/attest"
)

// Digest is an artifact to verify: its SHA-256 and, for messages, a name.
// Names are never compared with the statement's subject names.
type Digest struct {
	Name   string
	SHA256 [sha256.Size]byte
}

// DigestBytes is the Digest of content.
func DigestBytes(name string, content []byte) Digest {
	return Digest{Name: name, SHA256: sha256.Sum256(content)}
}

// DigestReader is the Digest of everything r yields.
func DigestReader(name string, r io.Reader) (Digest, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return Digest{}, fmt.Errorf("verify: hash %s: %w", name, err)
	}
	d := Digest{Name: name}
	h.Sum(d.SHA256[:0])
	return d, nil
}

// statement is a decoded, validated in-toto Statement v1: either pb (the
// general parser's message) or fast (taken by parseStatementFast from a
// statement the agent wrote; pb is then nil). Read it only through
// subjects and provenance, which check both the same way.
type statement struct {
	pb       *ita1.Statement
	fast     *fastPredicate
	subjects []Subject
}

// fastPredicate is what parseStatementFast read of the predicate.
type fastPredicate struct {
	predicateType, buildType string
	prov                     provenance
}

// parseStatement decodes the payload strictly (protojson: unknown fields
// and duplicate keys refused) and validates it as in-toto does, plus what
// a Hallmark statement always has: a sha256 digest on every subject.
// A statement that is byte for byte what the agent writes takes a faster
// path to the same answer (parseStatementFast); every other goes to
// protojson.
func parseStatement(payload []byte) (*statement, error) {
	if st, ok := parseStatementFast(payload); ok {
		return st, nil
	}
	return parseStatementProtojson(payload)
}

// parseStatementFast reads a statement that is byte for byte what the
// agent writes for some Step (attest.StepOfStatement re-encodes what it
// read and compares; its comment argues why protojson then reads the same
// statement, NewStatement(step)). It returns what parseStatementProtojson
// and provenance return for that statement: subjects are the products in
// order (lowercase hex already), and the predicate's step, workload and
// builder id are the Step's. FuzzStatementFastAgrees and
// FuzzStatementFastAgent test it against protojson.
func parseStatementFast(payload []byte) (*statement, bool) {
	s, ok := attest.StepOfStatement(payload)
	if !ok {
		return nil, false
	}
	st := &statement{subjects: make([]Subject, len(s.Products)), fast: &fastPredicate{
		// What statementJSON writes, so what the payload holds.
		predicateType: attest.PredicateType,
		buildType:     attest.BuildType,
		prov: provenance{
			builderID: s.BuilderID,
			step:      s.Name,
			workload: Workload{
				SPIFFEIDs: nonNil(s.Workload.SPIFFEIDs),
				Selectors: nonNil(s.Workload.Selectors),
				PID:       int64(s.Workload.PID),
				UID:       int64(s.Workload.UID),
				GID:       int64(s.Workload.GID),
			},
		},
	}}
	for i, p := range s.Products {
		st.subjects[i] = Subject{Name: p.Name, SHA256: p.SHA256}
	}
	return st, true
}

// nonNil is ss, or an empty list for nil, as stringsField returns it.
func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

// parseStatementProtojson is the general parser.
func parseStatementProtojson(payload []byte) (*statement, error) {
	var pb ita1.Statement
	if err := protojson.Unmarshal(payload, &pb); err != nil {
		return nil, fmt.Errorf("payload is not an in-toto statement: %w", err)
	}
	if pb.GetType() != ita1.StatementTypeUri {
		return nil, fmt.Errorf("statement _type is %q, want %q", pb.GetType(), ita1.StatementTypeUri)
	}
	if err := pb.Validate(); err != nil {
		return nil, fmt.Errorf("invalid statement: %w", err)
	}
	st := &statement{pb: &pb, subjects: make([]Subject, 0, len(pb.GetSubject()))}
	for i, s := range pb.GetSubject() {
		sum := s.GetDigest()[string(ita1.AlgorithmSHA256)]
		if b, err := hex.DecodeString(sum); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("subject[%d] %q has no sha256 digest of 64 hex digits", i, s.GetName())
		}
		st.subjects = append(st.subjects, Subject{Name: s.GetName(), SHA256: strings.ToLower(sum)})
	}
	return st, nil
}

// match returns, for each artifact, the first subject with its digest.
func (st *statement) match(artifacts []Digest) ([]Subject, error) {
	out := make([]Subject, 0, len(artifacts))
	for _, a := range artifacts {
		want := hex.EncodeToString(a.SHA256[:])
		i := slices.IndexFunc(st.subjects, func(s Subject) bool { return s.SHA256 == want })
		if i < 0 {
			name := a.Name
			if name == "" {
				name = "artifact"
			}
			return nil, fmt.Errorf("%s (sha256 %s) is not a subject of the statement (%d subjects)", name, want, len(st.subjects))
		}
		out = append(out, st.subjects[i])
	}
	return out, nil
}

// provenance is what a verifier reads from a step/v1 or step/v2 predicate.
type provenance struct {
	builderID string
	step      string
	workload  Workload
}

// knownBuildTypes are the SLSA buildTypes this package understands.
var knownBuildTypes = []string{attest.BuildType, attest.BuildTypeV1}

// provenance checks the predicate type and build type and reads the
// fields docs/buildtypes/step-v2.md (and step-v1.md) define. Keys it does not read are
// ignored, as the build type asks of verifiers. A statement read by the
// fast path takes the same checks (checkPredicateType, checkBuildType,
// checkStep) on what it read.
func (st *statement) provenance() (provenance, error) {
	if f := st.fast; f != nil {
		for _, err := range []error{checkPredicateType(f.predicateType), checkBuildType(f.buildType), checkStep(f.prov.step)} {
			if err != nil {
				return provenance{}, err
			}
		}
		return f.prov, nil
	}
	if err := checkPredicateType(st.pb.GetPredicateType()); err != nil {
		return provenance{}, err
	}
	pred := st.pb.GetPredicate()
	bd, err := structField(pred, "buildDefinition")
	if err != nil {
		return provenance{}, err
	}
	bt, err := stringField(bd, "buildDefinition.buildType")
	if err != nil {
		return provenance{}, err
	}
	if err := checkBuildType(bt); err != nil {
		return provenance{}, err
	}
	ext, err := structField(bd, "buildDefinition.externalParameters")
	if err != nil {
		return provenance{}, err
	}
	var p provenance
	if p.step, err = stringField(ext, "externalParameters.step"); err != nil {
		return provenance{}, err
	}
	if err := checkStep(p.step); err != nil {
		return provenance{}, err
	}
	internal, err := structField(bd, "buildDefinition.internalParameters")
	if err != nil {
		return provenance{}, err
	}
	wl, err := structField(internal, "internalParameters.workload")
	if err != nil {
		return provenance{}, err
	}
	if p.workload.SPIFFEIDs, err = stringsField(wl, "workload.spiffe_ids"); err != nil {
		return provenance{}, err
	}
	if p.workload.Selectors, err = stringsField(wl, "workload.selectors"); err != nil {
		return provenance{}, err
	}
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"workload.pid", &p.workload.PID}, {"workload.uid", &p.workload.UID}, {"workload.gid", &p.workload.GID}} {
		if *f.dst, err = intField(wl, f.name); err != nil {
			return provenance{}, err
		}
	}
	rd, err := structField(pred, "runDetails")
	if err != nil {
		return provenance{}, err
	}
	builder, err := structField(rd, "runDetails.builder")
	if err != nil {
		return provenance{}, err
	}
	if p.builderID, err = stringField(builder, "builder.id"); err != nil {
		return provenance{}, err
	}
	return p, nil
}

func checkPredicateType(pt string) error {
	if pt != attest.PredicateType {
		return fmt.Errorf("predicateType is %q, want %q", pt, attest.PredicateType)
	}
	return nil
}

func checkBuildType(bt string) error {
	if !slices.Contains(knownBuildTypes, bt) {
		return fmt.Errorf("buildType %q is not one this verifier knows (%s)", bt, strings.Join(knownBuildTypes, ", "))
	}
	return nil
}

func checkStep(step string) error {
	if step == "" {
		return errors.New("externalParameters.step is empty")
	}
	return nil
}

// checkBuilderIdentity checks that builderID is a SPIFFE ID and the signing
// certificate's only URI SAN (docs/buildtypes/step-v1.md, runDetails:
// "a verifier must check that the two agree").
func checkBuilderIdentity(builderID string, leaf *x509.Certificate) error {
	id, err := spiffeid.FromString(builderID)
	if err != nil {
		return fmt.Errorf("builder.id %q is not a SPIFFE ID: %w", builderID, err)
	}
	if len(leaf.URIs) != 1 {
		return fmt.Errorf("certificate has %d URI SANs, want exactly 1 (the agent's SPIFFE ID)", len(leaf.URIs))
	}
	certID, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return fmt.Errorf("certificate URI SAN %q is not a SPIFFE ID: %w", leaf.URIs[0], err)
	}
	if id != certID {
		return fmt.Errorf("builder.id %s is not the certificate's SPIFFE ID %s", id, certID)
	}
	return nil
}

func field(s *structpb.Struct, path string) (*structpb.Value, error) {
	key := path[strings.LastIndexByte(path, '.')+1:]
	v, ok := s.GetFields()[key]
	if !ok {
		return nil, fmt.Errorf("predicate has no %s", path)
	}
	return v, nil
}

func structField(s *structpb.Struct, path string) (*structpb.Struct, error) {
	v, err := field(s, path)
	if err != nil {
		return nil, err
	}
	out := v.GetStructValue()
	if out == nil {
		return nil, fmt.Errorf("predicate %s is not an object", path)
	}
	return out, nil
}

func stringField(s *structpb.Struct, path string) (string, error) {
	v, err := field(s, path)
	if err != nil {
		return "", err
	}
	out, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", fmt.Errorf("predicate %s is not a string", path)
	}
	return out.StringValue, nil
}

func stringsField(s *structpb.Struct, path string) ([]string, error) {
	v, err := field(s, path)
	if err != nil {
		return nil, err
	}
	list := v.GetListValue()
	if list == nil {
		return nil, fmt.Errorf("predicate %s is not an array", path)
	}
	out := make([]string, 0, len(list.GetValues()))
	for i, e := range list.GetValues() {
		str, ok := e.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, fmt.Errorf("predicate %s[%d] is not a string", path, i)
		}
		out = append(out, str.StringValue)
	}
	return out, nil
}

func intField(s *structpb.Struct, path string) (int64, error) {
	v, err := field(s, path)
	if err != nil {
		return 0, err
	}
	n, ok := v.GetKind().(*structpb.Value_NumberValue)
	if !ok || n.NumberValue != math.Trunc(n.NumberValue) || math.Abs(n.NumberValue) > 1<<53 {
		return 0, fmt.Errorf("predicate %s is not an integer", path)
	}
	return int64(n.NumberValue), nil
}

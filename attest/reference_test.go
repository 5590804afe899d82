package attest

import (
	"fmt"

	slsa1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// referenceStatement is how NewStatement built the statement before it
// built the predicate directly: the provenance message converted to a
// Struct through its protojson encoding. The fast paths must produce what
// it produces, byte for byte once marshaled.
func referenceStatement(s Step) (*ita1.Statement, error) {
	if err := checkStep(s); err != nil {
		return nil, err
	}
	subjects, err := descriptors("product", s.Products)
	if err != nil {
		return nil, err
	}
	if len(subjects) == 0 {
		return nil, fmt.Errorf("attest: step has no products")
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
		return nil, err
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
		return nil, err
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
	b, err := protojson.Marshal(prov)
	if err != nil {
		return nil, err
	}
	var predicate structpb.Struct
	if err := protojson.Unmarshal(b, &predicate); err != nil {
		return nil, err
	}
	st := &ita1.Statement{
		Type:          ita1.StatementTypeUri,
		Subject:       subjects,
		PredicateType: PredicateType,
		Predicate:     &predicate,
	}
	if err := st.Validate(); err != nil {
		return nil, err
	}
	return st, nil
}

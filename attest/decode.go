package attest

import (
	"bytes"
	"encoding/json"
	"time"
)

// This file is a PROTOTYPE (branch wt-stmtfast): the inverse of
// statementJSON, for verifiers that want to skip protojson's
// google.protobuf.Struct decoding on statements the agent wrote.

// StepOfStatement returns a Step whose statement is exactly payload:
// statementJSON(s) equals payload byte for byte. It says no (false) for
// anything else — statements of step/v1, other writers' whitespace or key
// order, escapes protojson would not write, numbers in another spelling,
// unknown or duplicate keys — and the caller then uses the general parser.
//
// Why a yes is as good as protojson's answer: statementJSON(s) is, by
// construction and by TestStatementJSONMatchesProtojson and
// FuzzStatementJSON, the bytes MarshalStatement(NewStatement(s)), and
// NewStatement(s) passes in-toto's Validate. protojson reads its own
// output back to an equal message, so protojson.Unmarshal(payload) is
// NewStatement(s): subjects are s.Products in order (statementJSON sorts
// them, and payload holds them in the order decoded here, so equality
// means they were sorted), the predicate's step is s.Name, its builder
// id s.BuilderID, its workload s.Workload. How the bytes were decoded
// does not matter: encoding/json is lax (case-insensitive keys, last
// duplicate wins, invalid UTF-8 replaced), but a laxly read Step
// re-encodes to different bytes and is refused.
func StepOfStatement(payload []byte) (Step, bool) {
	var st wireStatement
	if err := json.Unmarshal(payload, &st); err != nil {
		return Step{}, false
	}
	bd := &st.Predicate.BuildDefinition
	ext, in := &bd.ExternalParameters, &bd.InternalParameters
	s := Step{
		Name:          ext.Step,
		Workspace:     in.Workspace,
		Command:       ext.Command,
		CallerCmdline: in.CallerCmdline,
		CallerClaims:  ext.CallerClaims,
		Workload: Workload{
			SPIFFEIDs: in.Workload.SPIFFEIDs,
			Selectors: in.Workload.Selectors,
			PID:       in.Workload.PID,
			UID:       in.Workload.UID,
			GID:       in.Workload.GID,
		},
		BuilderID:    st.Predicate.RunDetails.Builder.ID,
		InvocationID: st.Predicate.RunDetails.Metadata.InvocationID,
		Products:     make([]Artifact, len(st.Subject)),
	}
	for i, p := range st.Subject {
		s.Products[i] = Artifact{Name: p.Name, SHA256: p.Digest.SHA256}
	}
	for _, d := range bd.ResolvedDependencies {
		if a := d.Annotations; a != nil {
			s.Sources = append(s.Sources, GitSource{
				Path: d.Name, Commit: d.Digest.GitCommit, Tree: a.Tree,
				Clean: a.Clean, Ref: a.Ref, RemoteURL: a.RemoteURL,
			})
			continue
		}
		s.Materials = append(s.Materials, Artifact{Name: d.Name, SHA256: d.Digest.SHA256})
	}
	var ok bool
	md := &st.Predicate.RunDetails.Metadata
	if s.StartedOn, ok = parseTimestamp(md.StartedOn); !ok {
		return Step{}, false
	}
	if s.FinishedOn, ok = parseTimestamp(md.FinishedOn); !ok {
		return Step{}, false
	}
	again, err := statementJSON(s)
	if err != nil || !bytes.Equal(again, payload) {
		return Step{}, false
	}
	return s, true
}

// parseTimestamp reads what appendTimestamp writes; "" is the zero time.
// Any other spelling parses to some time whose re-encoding differs.
func parseTimestamp(v string) (time.Time, bool) {
	if v == "" {
		return time.Time{}, true
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// wireStatement is the shape statementJSON writes, for encoding/json.
type wireStatement struct {
	Type    string `json:"_type"`
	Subject []struct {
		Name   string `json:"name"`
		Digest struct {
			SHA256 string `json:"sha256"`
		} `json:"digest"`
	} `json:"subject"`
	PredicateType string `json:"predicateType"`
	Predicate     struct {
		BuildDefinition struct {
			BuildType          string `json:"buildType"`
			ExternalParameters struct {
				CallerClaims map[string]string `json:"caller_claims"`
				Command      []string          `json:"command"`
				Step         string            `json:"step"`
			} `json:"externalParameters"`
			InternalParameters struct {
				CallerCmdline []string `json:"caller_cmdline"`
				Workload      struct {
					GID       uint32   `json:"gid"`
					PID       int32    `json:"pid"`
					Selectors []string `json:"selectors"`
					SPIFFEIDs []string `json:"spiffe_ids"`
					UID       uint32   `json:"uid"`
				} `json:"workload"`
				Workspace string `json:"workspace"`
			} `json:"internalParameters"`
			ResolvedDependencies []struct {
				Annotations *struct {
					Clean     bool   `json:"clean"`
					Ref       string `json:"ref"`
					RemoteURL string `json:"remote_url"`
					Tree      string `json:"tree"`
				} `json:"annotations"`
				Digest struct {
					SHA256    string `json:"sha256"`
					GitCommit string `json:"gitCommit"`
				} `json:"digest"`
				Name string `json:"name"`
				URI  string `json:"uri"`
			} `json:"resolvedDependencies"`
		} `json:"buildDefinition"`
		RunDetails struct {
			Builder struct {
				ID string `json:"id"`
			} `json:"builder"`
			Metadata struct {
				FinishedOn   string `json:"finishedOn"`
				InvocationID string `json:"invocationId"`
				StartedOn    string `json:"startedOn"`
			} `json:"metadata"`
		} `json:"runDetails"`
	} `json:"predicate"`
}

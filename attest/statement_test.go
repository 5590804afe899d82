package attest_test

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
)

func TestNewStatementErrors(t *testing.T) {
	good := sha256Hex("good")
	for _, tc := range []struct {
		name    string
		mutate  func(*attest.Step)
		wantErr string
	}{
		{"zero products", func(s *attest.Step) { s.Products = nil }, "no products"},
		{"empty products", func(s *attest.Step) { s.Products = []attest.Artifact{} }, "no products"},
		{"duplicate product names", func(s *attest.Step) {
			s.Products = append(s.Products, attest.Artifact{Name: "bin/widget", SHA256: good})
		}, `duplicate product "bin/widget"`},
		{"duplicate material names", func(s *attest.Step) {
			s.Materials = append(s.Materials, attest.Artifact{Name: "go.sum", SHA256: good})
		}, `duplicate material "go.sum"`},
		{"digest not hex", func(s *attest.Step) { s.Products[0].SHA256 = strings.Repeat("zz", 32) }, "not 64 lowercase hex"},
		{"digest uppercase hex", func(s *attest.Step) { s.Products[0].SHA256 = strings.ToUpper(good) }, "not 64 lowercase hex"},
		{"digest too short", func(s *attest.Step) { s.Products[0].SHA256 = good[:62] }, "not 64 lowercase hex"},
		{"digest too long", func(s *attest.Step) { s.Products[0].SHA256 = good + "00" }, "not 64 lowercase hex"},
		{"digest empty", func(s *attest.Step) { s.Products[0].SHA256 = "" }, "not 64 lowercase hex"},
		{"material digest bad", func(s *attest.Step) { s.Materials[0].SHA256 = "abc" }, "material"},
		{"empty step name", func(s *attest.Step) { s.Name = "" }, "step name is empty"},
		{"empty builder ID", func(s *attest.Step) { s.BuilderID = "" }, "builder ID is empty"},
		{"relative builder ID", func(s *attest.Step) { s.BuilderID = "agent-1" }, "not an absolute URI"},
		{"empty product name", func(s *attest.Step) { s.Products[0].Name = "" }, "not a slash-separated relative path"},
		{"absolute product name", func(s *attest.Step) { s.Products[0].Name = "/etc/passwd" }, "not a slash-separated relative path"},
		{"dot-dot product name", func(s *attest.Step) { s.Products[0].Name = "../escape" }, "not a slash-separated relative path"},
		{"dot product name", func(s *attest.Step) { s.Products[0].Name = "." }, "not a slash-separated relative path"},
		{"unclean product name", func(s *attest.Step) { s.Products[0].Name = "dist//a" }, "not a slash-separated relative path"},
		{"non-UTF-8 product name", func(s *attest.Step) { s.Products[0].Name = "dist/\xff" }, "not a slash-separated relative path"},
		{"non-UTF-8 cmdline", func(s *attest.Step) { s.CallerCmdline[1] = "\xc3\x28" }, "caller cmdline[1] is not valid UTF-8"},
		{"non-UTF-8 command", func(s *attest.Step) { s.Command[0] = "\xff" }, "command[0] is not valid UTF-8"},
		{"finished before started", func(s *attest.Step) { s.FinishedOn = s.StartedOn.Add(-time.Second) }, "finished"},
		{"bad claim key", func(s *attest.Step) { s.CallerClaims = map[string]string{"Job": "x"} }, "caller claim key"},
		{"long claim", func(s *attest.Step) { s.CallerClaims = map[string]string{"job": strings.Repeat("x", 1025)} }, "caller claim job"},
		{"too many claims", func(s *attest.Step) {
			s.CallerClaims = map[string]string{}
			for i := range 33 {
				s.CallerClaims[fmt.Sprintf("k%d", i)] = "v"
			}
		}, "33 caller claims"},
		{"git source bad commit", func(s *attest.Step) {
			s.Sources = []attest.GitSource{{Path: ".", Commit: "abc", Tree: strings.Repeat("a", 40)}}
		}, "40 lowercase hex"},
		{"git source bad path", func(s *attest.Step) {
			s.Sources = []attest.GitSource{{Path: "../x", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("a", 40)}}
		}, "not a slash-separated relative path"},
		{"git source duplicate", func(s *attest.Step) {
			g := attest.GitSource{Path: "src", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("a", 40)}
			s.Sources = []attest.GitSource{g, g}
		}, `duplicate git source "src"`},
		{"git source bad ref", func(s *attest.Step) {
			s.Sources = []attest.GitSource{{Path: ".", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("a", 40), Ref: "main"}}
		}, "does not start with refs/"},
		{"git source password", func(s *attest.Step) {
			s.Sources = []attest.GitSource{{Path: ".", Commit: strings.Repeat("a", 40), Tree: strings.Repeat("a", 40), RemoteURL: "https://u:secret@example.org/r.git"}}
		}, "carries a password"},
		{"timestamp out of range", func(s *attest.Step) {
			s.StartedOn = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
			s.FinishedOn = time.Time{}
		}, "startedOn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testStep()
			tc.mutate(&s)
			st, err := attest.NewStatement(s)
			require.ErrorContains(t, err, tc.wantErr)
			require.Nil(t, st)
		})
	}
}

func TestNewStatementShape(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*attest.Step)
		check  func(t *testing.T, pred map[string]any)
	}{
		{
			name:   "no metadata when nothing to say",
			mutate: func(s *attest.Step) { s.InvocationID, s.StartedOn, s.FinishedOn = "", time.Time{}, time.Time{} },
			check: func(t *testing.T, pred map[string]any) {
				require.NotContains(t, pred["runDetails"], "metadata")
			},
		},
		{
			name:   "only finishedOn",
			mutate: func(s *attest.Step) { s.InvocationID, s.StartedOn = "", time.Time{} },
			check: func(t *testing.T, pred map[string]any) {
				md := pred["runDetails"].(map[string]any)["metadata"].(map[string]any)
				require.Equal(t, map[string]any{"finishedOn": "2025-03-04T05:07:08Z"}, md)
			},
		},
		{
			name: "timestamps normalized to UTC",
			mutate: func(s *attest.Step) {
				zone := time.FixedZone("UTC+2", 2*60*60)
				s.StartedOn = time.Date(2025, 3, 4, 7, 6, 7, 0, zone)
				s.FinishedOn = time.Time{}
			},
			check: func(t *testing.T, pred map[string]any) {
				md := pred["runDetails"].(map[string]any)["metadata"].(map[string]any)
				require.Equal(t, "2025-03-04T05:06:07Z", md["startedOn"])
			},
		},
		{
			name:   "empty lists stay present",
			mutate: func(s *attest.Step) { s.Command, s.CallerCmdline, s.Workload = nil, nil, attest.Workload{} },
			check: func(t *testing.T, pred map[string]any) {
				bd := pred["buildDefinition"].(map[string]any)
				require.Equal(t, map[string]any{"step": "build", "command": []any{}, "caller_claims": map[string]any{}}, bd["externalParameters"])
				ip := bd["internalParameters"].(map[string]any)
				require.Equal(t, []any{}, ip["caller_cmdline"])
				require.Equal(t, map[string]any{
					"spiffe_ids": []any{}, "selectors": []any{},
					"pid": float64(0), "uid": float64(0), "gid": float64(0),
				}, ip["workload"])
			},
		},
		{
			name:   "no materials, no resolvedDependencies",
			mutate: func(s *attest.Step) { s.Materials = nil },
			check: func(t *testing.T, pred map[string]any) {
				require.NotContains(t, pred["buildDefinition"], "resolvedDependencies")
			},
		},
		{
			name: "largest uid and pid survive",
			mutate: func(s *attest.Step) {
				s.Workload.UID, s.Workload.GID, s.Workload.PID = 1<<32-1, 1<<32-2, 1<<31-1
			},
			check: func(t *testing.T, pred map[string]any) {
				w := pred["buildDefinition"].(map[string]any)["internalParameters"].(map[string]any)["workload"].(map[string]any)
				require.Equal(t, float64(1<<32-1), w["uid"])
				require.Equal(t, float64(1<<32-2), w["gid"])
				require.Equal(t, float64(1<<31-1), w["pid"])
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testStep()
			tc.mutate(&s)
			var doc struct {
				Predicate map[string]any `json:"predicate"`
			}
			require.NoError(t, json.Unmarshal(marshalStep(t, s), &doc))
			tc.check(t, doc.Predicate)
		})
	}
}

func TestNewStatementDoesNotReorderInput(t *testing.T) {
	s := testStep()
	before := append([]attest.Artifact(nil), s.Products...)
	_, err := attest.NewStatement(s)
	require.NoError(t, err)
	require.Equal(t, before, s.Products)
}

func TestMarshalStatementNil(t *testing.T) {
	_, err := attest.MarshalStatement(nil)
	require.ErrorContains(t, err, "nil statement")
}

// TestBuildTypeDocExample keeps the example in docs/buildtypes/step-v2.md
// equal to what NewStatement produces.
func TestBuildTypeDocExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/buildtypes/step-v2.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(doc), "## Example")
	require.True(t, ok, "no Example section")
	_, rest, ok = strings.Cut(rest, "```json\n")
	require.True(t, ok, "no json block")
	example, _, ok := strings.Cut(rest, "```")
	require.True(t, ok, "unterminated json block")

	s := testStep()
	s.Products = s.Products[:2]
	s.CallerClaims = map[string]string{"ci": "gitlab", "job": "build", "run_id": "7315", "ref": "refs/heads/main"}
	s.Sources = []attest.GitSource{{
		Path: ".", Commit: "9fceb02d0ae598e95dc970b74767f19372d61af8", Tree: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
		Clean: true, Ref: "refs/heads/main", RemoteURL: "https://git.example.org/acme/widget.git",
	}}
	var st struct {
		Predicate json.RawMessage `json:"predicate"`
	}
	require.NoError(t, json.Unmarshal(marshalStep(t, s), &st))
	require.JSONEq(t, example, string(st.Predicate))
}

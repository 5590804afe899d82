package attestcmd

import (
	"fmt"
	"strings"

	"github.com/hallmark-dev/hallmark/attest/claims"
)

// ciEnvironments map the CI context that only the caller knows to caller
// claims (docs/buildtypes/step-v2.md, externalParameters.caller_claims):
// the CI names the variable that tells it is running, then claim keys and
// the variables they come from.
var ciEnvironments = []struct {
	name, detect string
	claims       [][2]string
}{
	{"github", "GITHUB_ACTIONS", [][2]string{
		{"repository", "GITHUB_REPOSITORY"}, {"workflow", "GITHUB_WORKFLOW"}, {"job", "GITHUB_JOB"},
		{"run_id", "GITHUB_RUN_ID"}, {"run_attempt", "GITHUB_RUN_ATTEMPT"}, {"ref", "GITHUB_REF"}, {"sha", "GITHUB_SHA"},
	}},
	{"gitlab", "GITLAB_CI", [][2]string{
		{"repository", "CI_PROJECT_PATH"}, {"pipeline_id", "CI_PIPELINE_ID"}, {"job", "CI_JOB_NAME"},
		{"run_id", "CI_JOB_ID"}, {"ref", "CI_COMMIT_REF_NAME"}, {"sha", "CI_COMMIT_SHA"},
	}},
}

// callerClaims gathers the CI's context from the environment (lookup) and
// adds the --claim KEY=VALUE flags, which win.
func callerClaims(lookup func(string) (string, bool), flags []string) (map[string]string, error) {
	found := map[string]string{}
	for _, ci := range ciEnvironments {
		if v, ok := lookup(ci.detect); !ok || v == "" || v == "false" {
			continue
		}
		found["ci"] = ci.name
		for _, c := range ci.claims {
			if v, ok := lookup(c[1]); ok && v != "" {
				found[c[0]] = v
			}
		}
		break
	}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !claims.ValidKey(k) {
			return nil, fmt.Errorf("--claim %q: want KEY=VALUE, KEY 1-64 of a-z, 0-9 and _ starting with a letter", f)
		}
		found[k] = v
	}
	if err := claims.Check(found); err != nil {
		return nil, err
	}
	return found, nil
}

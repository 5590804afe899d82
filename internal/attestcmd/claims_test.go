package attestcmd

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCallerClaims(t *testing.T) {
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		flags   []string
		want    map[string]string
		wantErr string
	}{
		{"no CI", nil, nil, map[string]string{}, ""},
		{"GitHub Actions", map[string]string{"GITHUB_ACTIONS": "true", "GITHUB_JOB": "build", "GITHUB_RUN_ID": "42", "GITHUB_REF": "refs/heads/main", "GITHUB_REPOSITORY": "acme/widget"}, nil,
			map[string]string{"ci": "github", "job": "build", "run_id": "42", "ref": "refs/heads/main", "repository": "acme/widget"}, ""},
		{"GitLab CI and a flag that wins", map[string]string{"GITLAB_CI": "true", "CI_JOB_NAME": "build", "CI_JOB_ID": "7", "CI_COMMIT_REF_NAME": "main"}, []string{"job=override", "stage=two"},
			map[string]string{"ci": "gitlab", "job": "override", "run_id": "7", "ref": "main", "stage": "two"}, ""},
		{"not in CI", map[string]string{"GITHUB_ACTIONS": "false", "GITHUB_JOB": "x"}, nil, map[string]string{}, ""},
		{"flag without =", nil, []string{"job"}, nil, "want KEY=VALUE"},
		{"bad key", nil, []string{"Job=x"}, nil, "want KEY=VALUE"},
		{"value too long", nil, []string{"job=" + string(make([]byte, 1025))}, nil, "caller claim job"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := callerClaims(env(tc.env), tc.flags)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

package configdoc

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/stretchr/testify/require"
)

type testFile struct {
	Main    testMain     `hcl:"main,block"`
	Plugins []testPlugin `hcl:"plugin,block"`
	Rules   *testRules   `hcl:"rules,block"`
}

type testMain struct {
	Name  string `hcl:"name"`
	Limit int    `hcl:"limit,optional"`
}

type testPlugin struct {
	Name string   `hcl:"name,label"`
	Body hcl.Body `hcl:",remain"`
}

type testRules struct {
	Rules []struct {
		Name  string   `hcl:"name,label"`
		Steps []string `hcl:"steps"`
	} `hcl:"rule,block"`
}

func decodeInto(dst any) func(hcl.Body) error {
	return func(body hcl.Body) error {
		if diags := gohcl.DecodeBody(body, nil, dst); diags.HasErrors() {
			return diags
		}
		return nil
	}
}

// Must show: Record finds every attribute and block, nested ones too, but
// not what a plugin's own block holds; Documented reads only its section,
// with plugin labels in the keys and other labels not; Diff names both
// kinds of drift.
func TestRecordAndDocumented(t *testing.T) {
	decoded := Record("", decodeInto(&testFile{}))
	require.Equal(t, []string{"main", "main.limit", "main.name", "plugin", "rules", "rules.rule", "rules.rule.steps"}, decoded.Sorted())
	var own struct {
		Path string `hcl:"path,optional"`
	}
	decoded.Add(Record("plugin.disk", decodeInto(&own)))
	decoded["plugin.disk"] = true

	md := filepath.Join(t.TempDir(), "config.md")
	require.NoError(t, os.WriteFile(md, []byte("# Config\n\n## daemon\n\n```hcl\nmain {\n  name = \"x\"\n}\nplugin \"disk\" {\n  path = \"/p\"\n}\nrules {\n  rule \"a\" {\n    steps = [\"b\"]\n  }\n}\n```\n\n| key | notes |\n|---|---|\n| `name` | |\n| `colour` | |\n\n## other\n\n```hcl\nmain {\n  limit = 3\n}\n```\n"), 0o644))
	sec, err := Documented(md, "daemon", "plugin")
	require.NoError(t, err)
	require.Equal(t, []string{"main", "main.name", "plugin", "plugin.disk", "plugin.disk.path", "rules", "rules.rule", "rules.rule.steps"}, sec.Keys.Sorted())
	require.Equal(t, []string{"name", "colour"}, sec.TableKeys)
	require.Len(t, sec.Examples, 1)

	missing, unknown := Diff(decoded, sec.Keys)
	require.Equal(t, []string{"main.limit"}, missing, "documented only in another section")
	require.Empty(t, unknown)
	require.Equal(t, []string{"colour"}, UnknownTableKeys(decoded, sec.TableKeys))

	sec.Keys["main.colour"] = true
	_, unknown = Diff(decoded, sec.Keys)
	require.Equal(t, []string{"main.colour"}, unknown)

	_, err = Documented(md, "nowhere")
	require.ErrorContains(t, err, `no section "## nowhere"`)
}

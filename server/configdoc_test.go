package server

import (
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/hallmark-dev/hallmark/internal/configdoc"
)

// Must show: docs/configuration.md documents every key of
// hallmark-server's file, every key manager's and store's block included,
// and no key the server does not decode.
func TestConfigurationReference(t *testing.T) {
	decoded := configdoc.Record("", func(body hcl.Body) error {
		var f fileConfig
		if diags := gohcl.DecodeBody(body, nil, &f); diags.HasErrors() {
			return diags
		}
		return nil
	})
	noEnv := func(string) string { return "" }
	for name, decode := range keyManagers {
		key := "key_manager." + name
		decoded[key] = true
		decoded.Add(configdoc.Record(key, func(body hcl.Body) error {
			_, err := decode(body, "/nonexistent", noEnv)
			return err
		}))
	}
	for name, decode := range stores {
		key := "store." + name
		decoded[key] = true
		decoded.Add(configdoc.Record(key, func(body hcl.Body) error {
			_, err := decode(body, "/nonexistent")
			return err
		}))
	}
	doc, err := configdoc.Documented("../docs/configuration.md", "hallmark-server", "key_manager", "store")
	if err != nil {
		t.Fatal(err)
	}
	missing, unknown := configdoc.Diff(decoded, doc.Keys)
	if len(missing) > 0 {
		t.Errorf("docs/configuration.md (## hallmark-server) does not document, in an hcl example: %s", strings.Join(missing, ", "))
	}
	if len(unknown) > 0 {
		t.Errorf("docs/configuration.md (## hallmark-server) documents keys hallmark-server does not have: %s", strings.Join(unknown, ", "))
	}
	if bad := configdoc.UnknownTableKeys(decoded, doc.TableKeys); len(bad) > 0 {
		t.Errorf("docs/configuration.md (## hallmark-server) has table rows for keys hallmark-server does not have: %s", strings.Join(bad, ", "))
	}

	// Every example is a valid configuration, on its own or (a plugin's
	// block) beside the minimal server block.
	for _, ex := range doc.Examples {
		src := ex.Src
		if !hasServerBlock.Match(src) {
			src = append([]byte("server {\n  trust_domain = \"example.org\"\n}\n"), src...)
		}
		if _, err := ParseConfig(ex.Name, src, func(string) string { return "" }); err != nil {
			t.Errorf("the example at %s is not a valid configuration: %v", ex.Name, err)
		}
	}
}

var hasServerBlock = regexp.MustCompile(`(?m)^server \{`)

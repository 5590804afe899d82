package agent

import (
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/hallmark-dev/hallmark/internal/configdoc"
)

// Must show: docs/configuration.md documents every key of hallmark-agent's
// file, the workload attestors' blocks included, and no key the agent
// does not decode.
func TestConfigurationReference(t *testing.T) {
	decoded := configdoc.Record("", func(body hcl.Body) error {
		var f fileConfig
		if diags := gohcl.DecodeBody(body, nil, &f); diags.HasErrors() {
			return diags
		}
		return nil
	})
	for name, build := range workloadAttestors {
		key := "workload_attestor." + name
		decoded[key] = true
		decoded.Add(configdoc.Record(key, func(body hcl.Body) error {
			_, err := build(body, nil)
			return err
		}))
	}
	doc, err := configdoc.Documented("../docs/configuration.md", "hallmark-agent", "workload_attestor")
	if err != nil {
		t.Fatal(err)
	}
	missing, unknown := configdoc.Diff(decoded, doc.Keys)
	if len(missing) > 0 {
		t.Errorf("docs/configuration.md (## hallmark-agent) does not document, in an hcl example: %s", strings.Join(missing, ", "))
	}
	if len(unknown) > 0 {
		t.Errorf("docs/configuration.md (## hallmark-agent) documents keys hallmark-agent does not have: %s", strings.Join(unknown, ", "))
	}
	if bad := configdoc.UnknownTableKeys(decoded, doc.TableKeys); len(bad) > 0 {
		t.Errorf("docs/configuration.md (## hallmark-agent) has table rows for keys hallmark-agent does not have: %s", strings.Join(bad, ", "))
	}

	// Every example is a valid configuration, on its own or (a plugin's
	// block) beside the minimal agent block.
	for _, ex := range doc.Examples {
		src := ex.Src
		if !hasAgentBlock.Match(src) {
			src = append([]byte("agent {\n  server_address   = \"hallmark.internal:8443\"\n  server_spiffe_id = \"spiffe://example.org/hallmark/server\"\n}\n"), src...)
		}
		// The example's socket group need not exist on this machine.
		src = socketGroup.ReplaceAll(src, []byte(`socket_group = "0"`))
		if _, err := ParseConfig(ex.Name, src); err != nil {
			t.Errorf("the example at %s is not a valid configuration: %v", ex.Name, err)
		}
	}
}

var (
	hasAgentBlock = regexp.MustCompile(`(?m)^agent \{`)
	socketGroup   = regexp.MustCompile(`socket_group\s*=\s*"[^"]*"`)
)

// Package configdoc keeps docs/configuration.md and the configuration the
// daemons decode from drifting apart. Tests in the packages that decode a
// file (agent, server) record the keys their decoding asks for, by handing
// it a Body that writes down every schema it is asked to satisfy, and
// compare them with the keys the reference documents. Nothing in
// production uses this package.
package configdoc

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Keys is a set of configuration keys as dotted paths: "agent.max_files",
// "policy.rule.steps", "key_manager.vault.auth.role". A block is a key of
// its own ("policy", "policy.rule"); so is a plugin, by its label
// ("store.sqlite"), since its label selects what the block holds.
type Keys map[string]bool

// Sorted lists k in order.
func (k Keys) Sorted() []string { return slices.Sorted(maps.Keys(k)) }

// Add adds every key of o.
func (k Keys) Add(o Keys) {
	for key := range o {
		k[key] = true
	}
}

// Record runs decode on a Body that records, under prefix, every
// attribute and block that decoding asks for. It answers each request with
// no attributes and one block of every type, whose body records in turn,
// so that the schemas of nested blocks are asked for too. decode's error
// is ignored: no content satisfies every check that follows the decoding.
func Record(prefix string, decode func(hcl.Body) error) Keys {
	keys := Keys{}
	_ = decode(&recorder{prefix: prefix, keys: keys})
	return keys
}

// recorder is an hcl.Body that writes down the schemas asked of it.
type recorder struct {
	prefix string
	keys   Keys
}

func (r *recorder) Content(s *hcl.BodySchema) (*hcl.BodyContent, hcl.Diagnostics) {
	c, _, diags := r.PartialContent(s)
	return c, diags
}

func (r *recorder) PartialContent(s *hcl.BodySchema) (*hcl.BodyContent, hcl.Body, hcl.Diagnostics) {
	c := &hcl.BodyContent{Attributes: hcl.Attributes{}}
	for _, a := range s.Attributes {
		r.keys[join(r.prefix, a.Name)] = true
	}
	for _, b := range s.Blocks {
		key := join(r.prefix, b.Type)
		r.keys[key] = true
		c.Blocks = append(c.Blocks, &hcl.Block{
			Type:   b.Type,
			Labels: slices.Clone(b.LabelNames),
			Body:   &recorder{prefix: key, keys: r.keys},
		})
	}
	// What remains (a plugin's own block) is recorded by whoever decodes
	// it; here it records into a set nobody reads.
	return c, &recorder{prefix: r.prefix, keys: Keys{}}, nil
}

func (r *recorder) JustAttributes() (hcl.Attributes, hcl.Diagnostics) { return hcl.Attributes{}, nil }

func (r *recorder) MissingItemRange() hcl.Range { return hcl.Range{Filename: "configdoc"} }

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// Section is what one "## " section of a reference documents.
type Section struct {
	// Keys are the keys set in the section's ```hcl examples.
	Keys Keys
	// TableKeys are the first-column `names` of the section's tables.
	TableKeys []string
	// Examples are the ```hcl examples themselves.
	Examples []Example
}

// Example is one ```hcl example.
type Example struct {
	Name string // file:line
	Src  []byte
}

var tableKey = regexp.MustCompile("^\\|\\s*`([a-z0-9_]+)`\\s*\\|")

// Documented reads the "## heading" section (up to the next "## ") of the
// markdown file at path. Labels of the blocks named in plugins (such as
// store "sqlite") are part of their keys; other labels (rule "builders")
// are names, not keys.
func Documented(path, heading string, plugins ...string) (Section, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return Section{}, err
	}
	sec := Section{Keys: Keys{}}
	var (
		in, found, fenced bool
		block             bytes.Buffer
		startLine         int
	)
	sc := bufio.NewScanner(bytes.NewReader(src))
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		switch {
		case fenced && strings.HasPrefix(text, "```"):
			fenced = false
			ex := Example{Name: fmt.Sprintf("%s:%d", path, startLine), Src: bytes.Clone(block.Bytes())}
			if err := hclKeys(sec.Keys, ex.Src, ex.Name, plugins); err != nil {
				return Section{}, err
			}
			sec.Examples = append(sec.Examples, ex)
		case fenced:
			block.WriteString(text + "\n")
		case strings.HasPrefix(text, "## "):
			in = strings.TrimSpace(strings.TrimPrefix(text, "## ")) == heading
			found = found || in
		case !in:
		case strings.HasPrefix(text, "```hcl"):
			fenced, startLine = true, line+1
			block.Reset()
		default:
			if m := tableKey.FindStringSubmatch(text); m != nil {
				sec.TableKeys = append(sec.TableKeys, m[1])
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Section{}, err
	}
	if !found {
		return Section{}, fmt.Errorf("%s: no section %q", path, "## "+heading)
	}
	return sec, nil
}

// hclKeys adds the keys that the HCL in src sets.
func hclKeys(keys Keys, src []byte, filename string, plugins []string) error {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return diags
	}
	var walk func(prefix string, body *hclsyntax.Body)
	walk = func(prefix string, body *hclsyntax.Body) {
		for name := range body.Attributes {
			keys[join(prefix, name)] = true
		}
		for _, b := range body.Blocks {
			key := join(prefix, b.Type)
			keys[key] = true
			if prefix == "" && slices.Contains(plugins, b.Type) && len(b.Labels) == 1 {
				key = join(key, b.Labels[0])
				keys[key] = true
			}
			walk(key, b.Body)
		}
	}
	walk("", f.Body.(*hclsyntax.Body))
	return nil
}

// Diff compares the keys decoded with those documented: missing are
// decoded but not documented, unknown documented but never decoded.
func Diff(decoded, documented Keys) (missing, unknown []string) {
	for _, k := range decoded.Sorted() {
		if !documented[k] {
			missing = append(missing, k)
		}
	}
	for _, k := range documented.Sorted() {
		if !decoded[k] {
			unknown = append(unknown, k)
		}
	}
	return missing, unknown
}

// UnknownTableKeys are the table keys that name no key of decoded (by
// its last component).
func UnknownTableKeys(decoded Keys, table []string) []string {
	names := map[string]bool{}
	for k := range decoded {
		names[k[strings.LastIndexByte(k, '.')+1:]] = true
	}
	var out []string
	for _, t := range table {
		if !names[t] {
			out = append(out, t)
		}
	}
	return out
}

// Package config holds what hallmark-server's and hallmark-agent's
// configuration files share: strict HCL decoding (unknown keys are errors,
// reported with their position), duration settings and the zap logger.
package config

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// MaxFileSize bounds a configuration file.
const MaxFileSize = 1 << 20

// Decode parses HCL source named filename into dst, a struct with hcl tags.
// Unknown attributes and blocks are errors that name the file and line.
func Decode(filename string, src []byte, dst any) error {
	if len(src) > MaxFileSize {
		return fmt.Errorf("%s: larger than %d bytes", filename, MaxFileSize)
	}
	file, diags := hclparse.NewParser().ParseHCL(src, filename)
	if diags.HasErrors() {
		return diagError(diags)
	}
	if diags := gohcl.DecodeBody(file.Body, nil, dst); diags.HasErrors() {
		return diagError(diags)
	}
	return nil
}

// diagError is every error of diags, one per line, the unknown keys
// first: a misspelt required key is both unknown and missing, and only
// the first says "Did you mean". (hcl.Diagnostics' own Error gives the
// first and "and N other diagnostic(s)".)
func diagError(diags hcl.Diagnostics) error {
	var errs hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	sort.SliceStable(errs, func(i, j int) bool {
		return strings.HasPrefix(errs[i].Summary, "Unsupported") && !strings.HasPrefix(errs[j].Summary, "Unsupported")
	})
	lines := make([]string, len(errs))
	for i, d := range errs {
		lines[i] = d.Error()
	}
	return errors.New(strings.Join(lines, "\n"))
}

// Block is a labelled block whose body a plugin decodes, like
// key_manager "vault" { ... }; Range is where it begins, for errors.
type Block struct {
	Name  string    `hcl:"name,label"`
	Body  hcl.Body  `hcl:",remain"`
	Range hcl.Range `hcl:",def_range"`
}

// OneBlock returns the only block of a kind (e.g. "key_manager"), or an
// empty block named def when there is none; more than one is an error
// naming where each is.
func OneBlock(kind, def string, blocks []Block) (Block, error) {
	switch len(blocks) {
	case 0:
		return Block{Name: def, Body: hcl.EmptyBody()}, nil
	case 1:
		return blocks[0], nil
	}
	return Block{}, fmt.Errorf("%s: %s %q: only one %s block is allowed; the first is at line %d",
		blocks[1].Range, kind, blocks[1].Name, kind, blocks[0].Range.Start.Line)
}

// DistinctBlocks is an error naming where a block of kind (e.g.
// "workload_attestor") is given a second time with the same name.
func DistinctBlocks(kind string, blocks []Block) error {
	first := make(map[string]hcl.Range, len(blocks))
	for _, b := range blocks {
		if r, ok := first[b.Name]; ok {
			return fmt.Errorf("%s: %s %q is given twice (first at line %d): merge the two blocks", b.Range, kind, b.Name, r.Start.Line)
		}
		first[b.Name] = b.Range
	}
	return nil
}

// Positive is the setting named key, which must be at least 1 when it is
// set. Unset (nil) is 0, which the setting's user takes as its default. A 0
// written in the file is an error, not the default: it reads as "none" or
// "no limit", and means neither.
func Positive[T ~int | ~int64](key string, v *T) (T, error) {
	if v == nil {
		return 0, nil
	}
	if *v < 1 {
		return 0, fmt.Errorf("%s: %d must be at least 1 (leave it unset for the default)", key, *v)
	}
	return *v, nil
}

// Load reads and decodes the file at path into dst.
func Load(path string, dst any) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return Decode(path, src, dst)
}

// DecodeBlock decodes a plugin's own block body into dst, strictly.
func DecodeBlock(body hcl.Body, dst any) error {
	if diags := gohcl.DecodeBody(body, nil, dst); diags.HasErrors() {
		return diagError(diags)
	}
	return nil
}

// Duration parses the setting named key; empty means def.
func Duration(key, value string, def time.Duration) (time.Duration, error) {
	if value == "" {
		return def, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (like 90s, 5m, 1h)", key, value)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s: must be positive, got %s", key, value)
	}
	return d, nil
}

// DurationAtLeast is Duration for a setting that must not be shorter
// than least: one that sets how often something is redone, where a tiny
// value is a busy loop (policy_refresh = "1ns" kept the agent and the
// server at 60% of a core each), not a stricter setting.
func DurationAtLeast(key, value string, def, least time.Duration) (time.Duration, error) {
	d, err := Duration(key, value, def)
	if err == nil && d < least {
		return 0, fmt.Errorf("%s: %s is shorter than %s, the least it takes", key, value, least)
	}
	return d, err
}

// Log holds the logging settings both daemons take.
type Log struct {
	Level  string `hcl:"log_level,optional"`  // debug, info, warn, error; default info
	Format string `hcl:"log_format,optional"` // json or text; default json
}

// NewLogger builds the zap logger for l.
func (l Log) NewLogger() (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if l.Level != "" {
		if err := level.UnmarshalText([]byte(l.Level)); err != nil {
			return nil, fmt.Errorf("log_level: %q is not one of debug, info, warn, error", l.Level)
		}
	}
	var cfg zap.Config
	switch l.Format {
	case "", "json":
		cfg = zap.NewProductionConfig()
	case "text":
		cfg = zap.NewDevelopmentConfig()
		cfg.Development = false
	default:
		return nil, fmt.Errorf("log_format: %q is not json or text", l.Format)
	}
	cfg.Level = zap.NewAtomicLevelAt(level)
	cfg.Sampling = nil
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	return cfg.Build()
}

package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
)

type testFile struct {
	Name    string       `hcl:"name"`
	Size    int          `hcl:"size,optional"`
	Plugins []testPlugin `hcl:"plugin,block"`
	Inner   *testInner   `hcl:"inner,block"`
	Tags    []string     `hcl:"tags,optional"`
}

type testPlugin struct {
	Label string   `hcl:"label,label"`
	Body  hcl.Body `hcl:",remain"`
}

type testInner struct {
	Value string `hcl:"value,optional"`
}

func TestDecode(t *testing.T) {
	src := `
name = "x"
size = 3
tags = ["a", "b"]
inner {
  value = "v"
}
plugin "p" {
  anything = "goes to the plugin"
}
`
	var f testFile
	require.NoError(t, Decode("test.hcl", []byte(src), &f))
	require.Equal(t, "x", f.Name)
	require.Equal(t, 3, f.Size)
	require.Equal(t, []string{"a", "b"}, f.Tags)
	require.Equal(t, "v", f.Inner.Value)
	require.Len(t, f.Plugins, 1)
	require.Equal(t, "p", f.Plugins[0].Label)

	// The plugin decodes its own block, strictly too.
	var p struct {
		Anything string `hcl:"anything,optional"`
	}
	require.NoError(t, DecodeBlock(f.Plugins[0].Body, &p))
	require.Equal(t, "goes to the plugin", p.Anything)
	var strict struct {
		Other string `hcl:"other,optional"`
	}
	err := DecodeBlock(f.Plugins[0].Body, &strict)
	require.ErrorContains(t, err, `test.hcl:9,3-11: Unsupported argument; An argument named "anything" is not expected here.`)
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr []string
	}{
		{
			name:    "unknown attribute",
			src:     "name = \"x\"\nnmae = \"y\"\n",
			wantErr: []string{`test.hcl:2,1-5: Unsupported argument; An argument named "nmae" is not expected here.`},
		},
		{
			name:    "unknown attribute in a nested block",
			src:     "name = \"x\"\ninner {\n  valeu = \"v\"\n}\n",
			wantErr: []string{"test.hcl:3,3-8", `"valeu"`},
		},
		{
			name:    "unknown block",
			src:     "name = \"x\"\nextra {}\n",
			wantErr: []string{"test.hcl:2", `Blocks of type "extra" are not expected here.`},
		},
		{
			name:    "attribute used as a block",
			src:     "name {}\n",
			wantErr: []string{"test.hcl:1"},
		},
		{
			name:    "missing required attribute",
			src:     "size = 1\n",
			wantErr: []string{`The argument "name" is required`},
		},
		{
			name:    "wrong type",
			src:     "name = \"x\"\nsize = \"big\"\n",
			wantErr: []string{"test.hcl:2", "number"},
		},
		{
			name:    "duplicate attribute",
			src:     "name = \"x\"\nname = \"y\"\n",
			wantErr: []string{"test.hcl:2", "Attribute redefined"},
		},
		{
			name:    "block without its label",
			src:     "name = \"x\"\nplugin {}\n",
			wantErr: []string{"test.hcl:2", "label"},
		},
		{
			name:    "variables are not available",
			src:     "name = var.x\n",
			wantErr: []string{"test.hcl:1", "Variables not allowed"},
		},
		{
			name:    "syntax error",
			src:     "name = \"x\n",
			wantErr: []string{"test.hcl:1"},
		},
		{
			name:    "too large",
			src:     "name = \"x\"\n" + strings.Repeat("#", MaxFileSize),
			wantErr: []string{"test.hcl: larger than 1048576 bytes"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f testFile
			err := Decode("test.hcl", []byte(tt.src), &f)
			require.Error(t, err)
			for _, want := range tt.wantErr {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

func TestDecodeAtSizeLimit(t *testing.T) {
	prefix := "name = \"x\"\n"
	src := prefix + strings.Repeat("#", MaxFileSize-len(prefix))
	var f testFile
	require.NoError(t, Decode("test.hcl", []byte(src), &f))
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.hcl")
	require.NoError(t, os.WriteFile(path, []byte("name = \"x\"\nbogus = 1\n"), 0o600))
	var f testFile
	err := Load(path, &f)
	require.ErrorContains(t, err, path+":2")

	require.NoError(t, os.WriteFile(path, []byte("name = \"x\"\n"), 0o600))
	require.NoError(t, Load(path, &f))
	require.Equal(t, "x", f.Name)

	err = Load(filepath.Join(dir, "missing.hcl"), &f)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "read config: ")
}

func TestDuration(t *testing.T) {
	const def = 7 * time.Minute
	tests := []struct {
		value   string
		want    time.Duration
		wantErr string
	}{
		{value: "", want: def},
		{value: "90s", want: 90 * time.Second},
		{value: "5m", want: 5 * time.Minute},
		{value: "1h30m", want: 90 * time.Minute},
		{value: "1.5h", want: 90 * time.Minute},
		{value: "250ms", want: 250 * time.Millisecond},
		{value: "1ns", want: time.Nanosecond},
		{value: "0", wantErr: `ttl: must be positive, got 0`},
		{value: "0s", wantErr: `ttl: must be positive, got 0s`},
		{value: "-5m", wantErr: `ttl: must be positive, got -5m`},
		{value: "5", wantErr: `ttl: "5" is not a duration (like 90s, 5m, 1h)`},
		{value: "5 minutes", wantErr: `ttl: "5 minutes" is not a duration`},
		{value: "1d", wantErr: `ttl: "1d" is not a duration`},
		{value: " 5m", wantErr: `ttl: " 5m" is not a duration`},
		{value: "9999999999h", wantErr: `is not a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := Duration("ttl", tt.value, def)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Zero(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		name    string
		log     Log
		want    zapcore.Level
		wantErr string
	}{
		{name: "defaults", log: Log{}, want: zapcore.InfoLevel},
		{name: "debug json", log: Log{Level: "debug", Format: "json"}, want: zapcore.DebugLevel},
		{name: "warn text", log: Log{Level: "warn", Format: "text"}, want: zapcore.WarnLevel},
		{name: "error", log: Log{Level: "error"}, want: zapcore.ErrorLevel},
		{name: "upper case level", log: Log{Level: "INFO"}, want: zapcore.InfoLevel},
		{name: "unknown level", log: Log{Level: "verbose"}, wantErr: `log_level: "verbose" is not one of debug, info, warn, error`},
		{name: "unknown format", log: Log{Format: "yaml"}, wantErr: `log_format: "yaml" is not json or text`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, err := tt.log.NewLogger()
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				require.Nil(t, log)
				return
			}
			require.NoError(t, err)
			require.True(t, log.Core().Enabled(tt.want))
			require.False(t, log.Core().Enabled(tt.want-1))
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("name = \"x\"\nplugin \"p\" { a = 1 }\ninner { value = \"v\" }\n")
	f.Add("name = <<EOT\nx\nEOT\n")
	f.Add("name = \"${1 + 2}\"\n")
	f.Add("{")
	f.Fuzz(func(t *testing.T, src string) {
		var file testFile
		if err := Decode("fuzz.hcl", []byte(src), &file); err != nil {
			return
		}
		for _, p := range file.Plugins {
			var anything struct{}
			_ = DecodeBlock(p.Body, &anything)
		}
	})
}

func FuzzDuration(f *testing.F) {
	for _, s := range []string{"", "90s", "-1m", "1h30m", "5", "1e3s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Duration("k", s, time.Second)
		if err != nil {
			require.Zero(t, d)
			require.True(t, strings.HasPrefix(err.Error(), "k: "), "error %q names the key", err)
			return
		}
		require.Positive(t, d)
	})
}

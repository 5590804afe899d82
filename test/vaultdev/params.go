package vaultdev

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Request parameters arrive as JSON values of whatever type the client
// chose; Vault accepts strings for booleans, numbers and lists, and so do
// these helpers.

func str(body map[string]any, key string) string {
	switch v := body[key].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	}
	return ""
}

// strs reads a list given as a JSON array or a comma-separated string.
func strs(body map[string]any, key string) []string {
	var out []string
	switch v := body[key].(type) {
	case string:
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok && s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func boolean(body map[string]any, key string, def bool) (bool, error) {
	switch v := body[key].(type) {
	case nil:
		return def, nil
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("error converting input %s for field %q: %v", v, key, err)
		}
		return b, nil
	}
	return false, fmt.Errorf("error converting input %v for field %q", body[key], key)
}

// duration parses Vault's duration inputs: a number of seconds, a string of
// seconds, or a Go duration string ("5m", "1h30m").
func duration(body map[string]any, key string) (time.Duration, error) {
	switch v := body[key].(type) {
	case nil:
		return 0, nil
	case json.Number:
		n, err := v.Int64()
		if err != nil {
			return 0, fmt.Errorf("error converting input %v for field %q: %v", v, key, err)
		}
		return time.Duration(n) * time.Second, nil
	case string:
		if v == "" {
			return 0, nil
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Duration(n) * time.Second, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("error converting input %s for field %q: %v", v, key, err)
		}
		return d, nil
	}
	return 0, fmt.Errorf("error converting input %v for field %q", body[key], key)
}

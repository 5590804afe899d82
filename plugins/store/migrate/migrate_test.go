package migrate

import (
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	fsys := fstest.MapFS{
		"m/0002_more.sql": {Data: []byte("two")},
		"m/0001_init.sql": {Data: []byte("one")},
	}
	ms, err := Parse(fsys, "m")
	require.NoError(t, err)
	require.Equal(t, []Migration{{1, "0001_init", "one"}, {2, "0002_more", "two"}}, ms)

	for name, fsys := range map[string]fstest.MapFS{
		"gap":      {"m/0001_a.sql": {}, "m/0003_c.sql": {}},
		"repeat":   {"m/0001_a.sql": {}, "m/0001_b.sql": {}},
		"not one":  {"m/0002_a.sql": {}},
		"bad name": {"m/0001_a.sql": {}, "m/2_b.sql": {}},
		"empty":    {"m/README": {}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(fsys, "m")
			require.Error(t, err)
		})
	}
}

func TestPlan(t *testing.T) {
	known := []Migration{{1, "0001_a", ""}, {2, "0002_b", ""}}
	p, err := Plan(0, known)
	require.NoError(t, err)
	require.Equal(t, known, p)
	p, err = Plan(1, known)
	require.NoError(t, err)
	require.Equal(t, known[1:], p)
	p, err = Plan(2, known)
	require.NoError(t, err)
	require.Empty(t, p)
	_, err = Plan(3, known)
	require.ErrorContains(t, err, "newer than this binary knows")
}
